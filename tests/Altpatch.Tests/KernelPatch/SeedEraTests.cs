using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;
using static Altpatch.Tests.KernelPatch.BootImageBuilder;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The 2.6.22 rules on a synthetic i386 image of that era (absolute-pointer <c>alt_instr</c> with a u8 cpuid and
/// absolute <c>.smp_locks</c>, the feature names in an <c>x86_cap_flags</c> array). No real 2.6.22 image is
/// available; these check the rules as the seed patch and the era's <c>alternative_instructions()</c> state them.
/// </summary>
public class SeedEraTests
{
    private static BootImageBuilder Builder()
    {
        var b = new BootImageBuilder(is64: false, format: AltInstrFormat.AbsoluteByteCpuid)
        {
            Banner = "Linux version 2.6.22 (test@altpatch) (gcc version 4.1.2) #1 SMP",
            // 2.6.22 i386 numbers: word 0 as today (fpu 0, vme 1, ..., sse2 26); a Linux-defined word 3 name at 3*32+6
            CapFlags = new() { [0] = "fpu", [1] = "vme", [2] = "de", [25] = "sse", [26] = "sse2", [3 * 32 + 6] = "rep_good" },
        };
        return b;
    }

    private static KernelCpuDescription Cpu(CpuVendor vendor, int family, int cpus, params string[] flags) => new()
    {
        Cpu = CpuFeatures.FromNames(flags, vendor, family, 1, 1),
        Cpus = cpus,
        Exact = true,
    };

    [Fact]
    public void Alternatives_copy_and_pad_with_the_eras_nop_table_without_fixups()
    {
        var b = Builder();
        ulong site = b.Text + 0x100, other = b.Text + 0x120;
        b.AddAlt(site, Hex("90 90 90 90 90"), Hex("0f ae e8"), 26);   // sse2
        b.AddAlt(other, Hex("31 c0 90 90 90"), Hex("0f ae f0"), 2);   // de: absent, and no optimize_nops in 2.6.22
        var img = b.Open();
        Assert.Equal(KernelBootRules.Linux2622, KernelBootPatcher.RulesFor(img));
        // Intel family 5: the generic table, whose 2-byte NOP is "mov %esi,%esi".
        var r = KernelBootPatcher.Patch(img, Cpu(CpuVendor.Intel, 5, 2, "fpu", "sse2"));
        Assert.Equal("Linux 2.6.22", r.Rules);
        Assert.Equal(Hex("0f ae e8 89 f6"), r.Patched.ReadBytes(site, 5).ToArray());
        Assert.Equal(Hex("31 c0 90 90 90"), r.Patched.ReadBytes(other, 5).ToArray());
        // Intel family 6: P6 NOPs.
        var p6 = KernelBootPatcher.Patch(img, Cpu(CpuVendor.Intel, 6, 2, "fpu", "sse2"));
        Assert.Equal(Hex("0f ae e8 66 90"), p6.Patched.ReadBytes(site, 5).ToArray());
        Assert.Same(NopTable.P6, NopTable.FindSeedEra(CpuVendor.Intel, 6, false));
    }

    [Fact]
    public void A_linux_defined_feature_is_found_by_its_name_in_the_image()
    {
        var b = Builder();
        ulong site = b.Text + 0x100;
        b.AddAlt(site, Hex("90 90 90"), Hex("f3 a4"), 3 * 32 + 6);   // rep_good at 2.6.22's number
        var r = KernelBootPatcher.Patch(b.Open(), Cpu(CpuVendor.Intel, 6, 2, "rep_good"));
        Assert.Equal(Hex("f3 a4 90"), r.Patched.ReadBytes(site, 3).ToArray());
    }

    [Fact]
    public void One_cpu_turns_lock_prefixes_into_nops()
    {
        var b = Builder();
        ulong l1 = b.Text + 0x200, l2 = b.InitText + 0x20;
        b.Put(l1, Hex("f0 0f c1 07"));
        b.Put(l2, Hex("f0 0f c1 07"));
        b.Locks.AddRange([l1, l2]);
        var up = KernelBootPatcher.Patch(b.Open(), Cpu(CpuVendor.Amd, 6, 1, "fpu"));
        Assert.Equal(0x90, up.Patched.ReadBytes(l1, 1)[0]);
        Assert.Equal(0xf0, up.Patched.ReadBytes(l2, 1)[0]);
        var smp = KernelBootPatcher.Patch(b.Open(), Cpu(CpuVendor.Amd, 6, 2, "fpu"));
        Assert.Equal(0xf0, smp.Patched.ReadBytes(l1, 1)[0]);
    }

    [Fact]
    public void Paravirt_uses_the_default_rule_with_the_clobber_check()
    {
        var b = Builder();
        b.PvOpsSlots[2] = b.ParavirtNop;
        b.AddPara(b.Text + 0x300, 1, clobbers: 0x7);   // CLBR_ANY: a call may clobber everything
        b.AddPara(b.Text + 0x310, 3, clobbers: 0x1);   // only %eax: the call would clobber too much
        b.AddPara(b.Text + 0x320, 2, clobbers: 0x7);   // paravirt_nop
        var img = b.Open();
        // AMD family 6 (K7): the K7 table's 1-byte NOP is 0x90, its 6-byte one "lea 0(%eax),%eax".
        var r = KernelBootPatcher.Patch(img, Cpu(CpuVendor.Amd, 6, 2, "fpu"));
        var call = r.Patched.ReadBytes(b.Text + 0x300, 6).ToArray();
        Assert.Equal(0xe8, call[0]);
        Assert.Equal(0x90, call[5]);
        Assert.Equal(img.ReadBytes(b.Text + 0x310, 6).ToArray(), r.Patched.ReadBytes(b.Text + 0x310, 6).ToArray());
        Assert.Equal(NopTable.K7[6].ToArray(), r.Patched.ReadBytes(b.Text + 0x320, 6).ToArray());
        // 2.6.22 runs apply_paravirt after the alternatives and the SMP switch.
        Assert.Equal([BootPass.Alternatives, BootPass.SmpLocks, BootPass.Paravirt], r.Passes.Select(p => p.Pass));
    }

    [Fact]
    public void Without_a_name_table_the_numbering_is_unknown_and_the_image_is_refused()
    {
        var b = Builder();
        b.CapFlags = null;
        b.AddAlt(b.Text + 0x100, Hex("90 90 90"), Hex("f3 a4"), 26);
        var e = Assert.Throws<KernelPatchException>(() => KernelBootPatcher.Patch(b.Open(), Cpu(CpuVendor.Intel, 6, 2, "sse2")));
        Assert.Contains("x86_cap_flags", e.Message, StringComparison.Ordinal);
        Assert.Contains("2.6.22", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_6_1_image_whose_names_sit_elsewhere_is_refused()
    {
        var names = CpuFeatureInfo.All.Where(f => !CpuFeatureInfo.IsBug(f) && CpuFeatureInfo.CpuInfoName(f) is not null)
            .ToDictionary(f => (int)f, f => CpuFeatureInfo.CpuInfoName(f)!);
        var good = new BootImageBuilder { CapFlags = names };
        var n = ImageFeatureNumbering.For(good.Open(), KernelBootRules.Linux61);
        Assert.True(n.IsLinux61);
        Assert.NotNull(n.CapFlagsAddress);
        Assert.Equal("sse2", n.NameOf((int)CpuFeature.Xmm2));

        var shifted = new Dictionary<int, string>(names);
        shifted.Remove((int)CpuFeature.Popcnt);
        shifted[(int)CpuFeature.Popcnt + 1] = "popcnt";
        var bad = new BootImageBuilder { CapFlags = shifted };
        var e = Assert.Throws<KernelPatchException>(() => ImageFeatureNumbering.For(bad.Open(), KernelBootRules.Linux61));
        Assert.Contains("popcnt", e.Message, StringComparison.Ordinal);
        Assert.Contains("not Linux 6.1.176's", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Other_kernel_versions_are_refused_clearly()
    {
        var b = new BootImageBuilder { Banner = "Linux version 6.6.0-synthetic (test@altpatch) (gcc) #1 SMP" };
        var e = Assert.Throws<KernelPatchException>(() => KernelBootPatcher.RulesFor(b.Open()));
        Assert.Contains("Linux 6.6.0-synthetic", e.Message, StringComparison.Ordinal);
        Assert.Contains("6.1", e.Message, StringComparison.Ordinal);
        Assert.Contains("Linux 6.12 (6.12.118), Linux 6.1 (6.1.176), Linux 2.6.22", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Kernel_sites_names_a_seed_era_images_features_by_its_own_numbering()
    {
        // 2.6.22 i386's 3*32+6 is rep_good; Linux 6.1.176's 3*32+6 is another feature (X86_FEATURE_P3, hidden).
        Assert.Equal("X86_FEATURE_P3", FeatureNumbering.Linux61.NameOf(3 * 32 + 6));
        var b = Builder();
        b.AddAlt(b.Text + 0x100, Hex("90 90 90"), Hex("f3 a4"), 3 * 32 + 6);   // rep_good
        b.AddAlt(b.Text + 0x120, Hex("90 90 90"), Hex("0f ae e8"), 26);       // sse2: the same number and name as 6.1
        b.AddAlt(b.Text + 0x140, Hex("90 90 90"), Hex("0f ae f0"), 3 * 32 + 1); // a bit the image names nothing
        var n = ImageFeatureNumbering.Read(b.Open());
        Assert.False(n.IsLinux61);
        Assert.Equal("rep_good", n.FeatureName(3 * 32 + 6));
        Assert.Equal("X86_FEATURE_XMM2", n.FeatureName(26));
        Assert.Null(n.FeatureName(3 * 32 + 1));

        string dir = Directory.CreateTempSubdirectory("altpatch-seed-sites").FullName;
        try
        {
            string img = Path.Combine(dir, "vmlinux-2.6.22");
            File.WriteAllBytes(img, b.Build());
            var (rc, output, err) = Cli.CliRunner.Run("kernel", "sites", img, "--kind", "alt", "--json");
            Assert.True(rc == 0, err);
            using var doc = System.Text.Json.JsonDocument.Parse(output);
            var features = doc.RootElement.GetProperty("sites").EnumerateArray().Select(e => e.GetProperty("feature").GetString()).ToList();
            Assert.Equal(["rep_good (3*32+6)", "X86_FEATURE_XMM2 (0*32+26)", "3*32+1"], features);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void A_6_x_image_whose_names_differ_keeps_6_1_names_only_where_they_agree()
    {
        var names = CpuFeatureInfo.All.Where(f => !CpuFeatureInfo.IsBug(f) && CpuFeatureInfo.CpuInfoName(f) is not null)
            .ToDictionary(f => (int)f, f => CpuFeatureInfo.CpuInfoName(f)!);
        names.Remove((int)CpuFeature.Popcnt);
        names[(int)CpuFeature.Popcnt + 1] = "popcnt";                        // moved, as a later kernel could
        var n = ImageFeatureNumbering.Read(new BootImageBuilder { CapFlags = names }.Open());
        Assert.False(n.IsLinux61);
        Assert.Equal("X86_FEATURE_XMM2", n.FeatureName((int)CpuFeature.Xmm2));   // same name, same number
        Assert.Equal("popcnt", n.FeatureName((int)CpuFeature.Popcnt + 1));        // the image's own name
        Assert.Null(n.FeatureName((int)CpuFeature.Popcnt));                      // 6.1's popcnt is not there
        Assert.Equal("X86_FEATURE_ALWAYS", n.FeatureName((int)CpuFeature.Always)); // hidden in both: 6.1's hidden bit
    }
}
