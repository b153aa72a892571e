using System.Text;
using Altpatch.Cpu;

namespace Altpatch.Tests.Cpu;

/// <summary><see cref="CpuFeatures.FromCpuid"/> on made-up CPUID answers: the rules of Linux 6.1's boot-time reading.</summary>
public sealed class CpuidReaderTests
{
    /// <summary>A fake processor: leaf/subleaf -> registers; unknown leaves answer zeros, as reserved leaves do.</summary>
    private sealed class FakeCpu
    {
        private readonly Dictionary<(uint, uint), CpuidResult> leaves = [];

        public FakeCpu(string vendor, uint maxLeaf, uint maxExtLeaf)
        {
            var b = Encoding.ASCII.GetBytes(vendor.PadRight(12, '\0'));
            this[0] = new CpuidResult(maxLeaf, BitConverter.ToUInt32(b, 0), BitConverter.ToUInt32(b, 8), BitConverter.ToUInt32(b, 4));
            this[0x80000000] = new CpuidResult(maxExtLeaf, 0, 0, 0);
        }

        public CpuidResult this[uint leaf, uint subleaf = 0]
        {
            get => leaves.TryGetValue((leaf, subleaf), out var r) ? r : default;
            set => leaves[(leaf, subleaf)] = value;
        }

        public List<(uint Leaf, uint Subleaf)> Asked { get; } = [];

        public CpuidResult Query(uint leaf, uint subleaf)
        {
            Asked.Add((leaf, subleaf));
            return this[leaf, subleaf];
        }

        public void Brand(string s)
        {
            var b = Encoding.ASCII.GetBytes(s.PadRight(48, '\0'));
            for (uint i = 0; i < 3; i++)
            {
                int o = (int)i * 16;
                this[0x80000002 + i] = new CpuidResult(BitConverter.ToUInt32(b, o), BitConverter.ToUInt32(b, o + 4), BitConverter.ToUInt32(b, o + 8), BitConverter.ToUInt32(b, o + 12));
            }
        }
    }

    [Theory]
    [InlineData(0x000806F8u, 6, 0x8F, 8)]     // Sapphire Rapids: family 6 adds the extended model
    [InlineData(0x000C06F2u, 6, 0xCF, 2)]     // Emerald Rapids
    [InlineData(0x00A20F12u, 0x19, 0x21, 2)]  // Zen 3: family 0xf + extended family 0xa
    [InlineData(0x00000F29u, 0xF, 0x2, 9)]    // Pentium 4: family 0xf, no extended family
    [InlineData(0x00050543u, 5, 4, 3)]       // family 5: the extended model is not added
    public void Signature_is_decoded_as_linux_does(uint eax, int family, int model, int stepping)
    {
        var cpu = new FakeCpu("GenuineIntel", 1, 0);
        cpu[1] = new CpuidResult(eax, 0, 0, 0);
        var f = CpuFeatures.FromCpuid(cpu.Query);
        Assert.Equal((family, model, stepping), (f.Family, f.Model, f.Stepping));
    }

    [Theory]
    [InlineData("GenuineIntel", CpuVendor.Intel)]
    [InlineData("AuthenticAMD", CpuVendor.Amd)]
    [InlineData("HygonGenuine", CpuVendor.Hygon)]
    [InlineData("CentaurHauls", CpuVendor.Centaur)]
    [InlineData("  Shanghai  ", CpuVendor.Zhaoxin)]
    [InlineData("GenuineTMx86", CpuVendor.Transmeta)]
    [InlineData("TransmetaCPU", CpuVendor.Transmeta)]
    [InlineData("CyrixInstead", CpuVendor.Cyrix)]
    [InlineData("Geode by NSC", CpuVendor.Nsc)]
    [InlineData("UMC UMC UMC ", CpuVendor.Umc)]
    [InlineData("Vortex86 SoC", CpuVendor.Vortex)]
    [InlineData("KVMKVMKVM", CpuVendor.Unknown)]
    public void Vendor_string_is_matched_as_get_cpu_vendor_does(string id, CpuVendor vendor) =>
        Assert.Equal(vendor, CpuFeatures.FromCpuid(new FakeCpu(id, 0, 0).Query).Vendor);

    [Fact]
    public void Words_are_copied_from_their_leaves()
    {
        var cpu = new FakeCpu("GenuineIntel", 0xd, 0x80000008);
        cpu[1] = new CpuidResult(0x000806F8, 0, 1u << 23 | 1u << 20, 1u << 0 | 1u << 26);   // popcnt sse4_2 | fpu sse2
        cpu[7] = new CpuidResult(1, 1u << 5, 1u << 22, 1u << 4);                             // avx2, rdpid, fsrm
        cpu[7, 1] = new CpuidResult(1u << 5, 0, 0, 0);                                       // avx512_bf16
        cpu[0xd, 1] = new CpuidResult(1u << 0, 0, 0, 0);                                     // xsaveopt
        cpu[0x80000001] = new CpuidResult(0, 0, 1u << 0, 1u << 29);                          // lahf_lm, lm
        cpu[0x80000008] = new CpuidResult(0, 1u << 9, 0, 0);                                 // wbnoinvd
        cpu[6] = new CpuidResult(1u << 2, 0, 0, 0);                                          // arat (leaf 6 is within max 0xd)
        var f = CpuFeatures.FromCpuid(cpu.Query);
        Assert.Equal(
            new[] { CpuFeature.Fpu, CpuFeature.Xmm2, CpuFeature.Lm, CpuFeature.Always, CpuFeature.Cpuid, CpuFeature.Xmm4_2, CpuFeature.Popcnt,
                    CpuFeature.LahfLm, CpuFeature.Avx2, CpuFeature.Xsaveopt, CpuFeature.Avx512Bf16, CpuFeature.Wbnoinvd, CpuFeature.Arat,
                    CpuFeature.Rdpid, CpuFeature.Fsrm }.Order(),
            f.Features);
    }

    [Fact]
    public void Leaves_above_the_maximum_are_not_read()
    {
        var cpu = new FakeCpu("GenuineIntel", 1, 0x80000001);
        cpu[1] = new CpuidResult(0x000806F8, 0, 0, 1);
        cpu[7] = new CpuidResult(0, 1u << 5, 0, 0);               // beyond max level 1: ignored
        cpu[0x80000007] = new CpuidResult(0, 1, 0, 0);            // beyond max extended level: ignored
        cpu.Brand("ignored: extended level below 0x80000004");
        var f = CpuFeatures.FromCpuid(cpu.Query);
        Assert.False(f.Has(CpuFeature.Avx2));
        Assert.False(f.Has(CpuFeature.OverflowRecov));
        Assert.Null(f.ModelName);
        Assert.DoesNotContain((7u, 0u), cpu.Asked);
    }

    [Fact]
    public void Leaf_7_subleaf_1_is_read_only_when_leaf_7_says_it_exists()
    {
        var cpu = new FakeCpu("GenuineIntel", 7, 0);
        cpu[7] = new CpuidResult(0, 0, 0, 0);
        cpu[7, 1] = new CpuidResult(1u << 4, 0, 0, 0);
        Assert.False(CpuFeatures.FromCpuid(cpu.Query).Has(CpuFeature.AvxVnni));
        cpu[7] = new CpuidResult(1, 0, 0, 0);
        Assert.True(CpuFeatures.FromCpuid(cpu.Query).Has(CpuFeature.AvxVnni));
    }

    [Fact]
    public void Extended_level_must_be_in_the_0x8000xxxx_range()
    {
        var cpu = new FakeCpu("GenuineIntel", 0, 0x12345678);
        cpu[0x80000001] = new CpuidResult(0, 0, 0, 1u << 29);
        Assert.False(CpuFeatures.FromCpuid(cpu.Query).Has(CpuFeature.Lm));
    }

    [Fact]
    public void Scattered_bits_are_read_when_their_leaf_range_is_valid()
    {
        var cpu = new FakeCpu("AuthenticAMD", 0x10, 0x80000022);
        cpu[0x10] = new CpuidResult(0, 1u << 3, 0, 0);            // MBA (Intel entry)
        cpu[0x80000022] = new CpuidResult(1u << 0, 0, 0, 0);      // PERFMON_V2
        cpu[0x80000007] = new CpuidResult(0, 0, 0, 1u << 9);      // CPB (EDX), not a word source
        cpu[0xf, 1] = new CpuidResult(0, 0, 0, 1u << 0);          // CQM_OCCUP_LLC, but 0xf <= 0x10: valid
        var f = CpuFeatures.FromCpuid(cpu.Query);
        Assert.True(f.Has(CpuFeature.Mba));
        Assert.True(f.Has(CpuFeature.PerfmonV2));
        Assert.True(f.Has(CpuFeature.Cpb));
        Assert.True(f.Has(CpuFeature.CqmOccupLlc));

        var low = new FakeCpu("AuthenticAMD", 0x6, 0x80000008);
        low[0x10] = new CpuidResult(0, 1u << 3, 0, 0);
        low[0x80000022] = new CpuidResult(1, 0, 0, 0);
        low[0x80000008] = new CpuidResult(0, 1u << 6, 0, 0);      // MBA (AMD entry)
        var g = CpuFeatures.FromCpuid(low.Query);
        Assert.False(g.Has(CpuFeature.PerfmonV2));
        Assert.True(g.Has(CpuFeature.Mba));
    }

    [Fact]
    public void Speculation_control_bits_are_derived_as_init_speculation_control_does()
    {
        var intel = new FakeCpu("GenuineIntel", 7, 0);
        intel[7] = new CpuidResult(0, 0, 0, 1u << 26 | 1u << 27 | 1u << 31);  // SPEC_CTRL, INTEL_STIBP, SPEC_CTRL_SSBD
        var f = CpuFeatures.FromCpuid(intel.Query);
        Assert.True(f.Has(CpuFeature.Ibrs) && f.Has(CpuFeature.Ibpb) && f.Has(CpuFeature.Stibp) && f.Has(CpuFeature.Ssbd) && f.Has(CpuFeature.MsrSpecCtrl));

        var amd = new FakeCpu("AuthenticAMD", 1, 0x80000008);
        amd[0x80000008] = new CpuidResult(0, 1u << 12 | 1u << 24 | 1u << 25, 0, 0);  // AMD_IBPB, AMD_SSBD, VIRT_SSBD
        var g = CpuFeatures.FromCpuid(amd.Query);
        Assert.True(g.Has(CpuFeature.Ibpb));
        Assert.False(g.Has(CpuFeature.Ibrs));
        Assert.True(g.Has(CpuFeature.Ssbd) && g.Has(CpuFeature.MsrSpecCtrl));
        Assert.False(g.Has(CpuFeature.VirtSsbd));                // cleared when AMD_SSBD is there

        var virt = new FakeCpu("AuthenticAMD", 1, 0x80000008);
        virt[0x80000008] = new CpuidResult(0, 1u << 25, 0, 0);    // VIRT_SSBD alone
        var h = CpuFeatures.FromCpuid(virt.Query);
        Assert.True(h.Has(CpuFeature.VirtSsbd) && h.Has(CpuFeature.Ssbd));
        Assert.False(h.Has(CpuFeature.MsrSpecCtrl));
    }

    [Fact]
    public void Transmeta_word_2_and_Centaur_word_5_are_read_only_for_their_vendors()
    {
        foreach (var (vendor, expect) in new[] { ("GenuineTMx86", true), ("GenuineIntel", false) })
        {
            var cpu = new FakeCpu(vendor, 1, 0);
            cpu[0x80860000] = new CpuidResult(0x80860001, 0, 0, 0);
            cpu[0x80860001] = new CpuidResult(0, 0, 0, 1u << 1);
            Assert.Equal(expect, CpuFeatures.FromCpuid(cpu.Query).Has(CpuFeature.Longrun));
        }
        foreach (var (vendor, expect) in new[] { ("CentaurHauls", true), ("  Shanghai  ", true), ("AuthenticAMD", false) })
        {
            var cpu = new FakeCpu(vendor, 1, 0);
            cpu[0xC0000000] = new CpuidResult(0xC0000001, 0, 0, 0);
            cpu[0xC0000001] = new CpuidResult(0, 0, 0, 1u << 2 | 1u << 3);
            var f = CpuFeatures.FromCpuid(cpu.Query);
            Assert.Equal(expect, f.Has(CpuFeature.Xstore));
            Assert.Equal(expect, f.Has(CpuFeature.XstoreEn));
        }
    }

    [Fact]
    public void Unnamed_bits_are_dropped()
    {
        var cpu = new FakeCpu("GenuineIntel", 1, 0);
        cpu[1] = new CpuidResult(0, 0, 1u << 16, 1u << 10 | 1u << 20);   // ECX[16], EDX[10], EDX[20] have no 6.1 name
        var f = CpuFeatures.FromCpuid(cpu.Query);
        Assert.Equal([CpuFeature.Always, CpuFeature.Cpuid], f.Features);
        Assert.Equal(0u, f.Word(0));
    }

    [Fact]
    public void Brand_string_is_trimmed_as_get_model_name_does()
    {
        var cpu = new FakeCpu("GenuineIntel", 1, 0x80000004);
        cpu.Brand("       Intel(R) Core(TM) i7 CPU  \t ");
        Assert.Equal("Intel(R) Core(TM) i7 CPU", CpuFeatures.FromCpuid(cpu.Query).ModelName);
        cpu.Brand("");
        Assert.Null(CpuFeatures.FromCpuid(cpu.Query).ModelName);
    }
}
