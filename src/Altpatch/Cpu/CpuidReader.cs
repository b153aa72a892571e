using System.Runtime.Intrinsics.X86;
using System.Text;

namespace Altpatch.Cpu;

/// <summary>The four output registers of one <c>CPUID</c> execution.</summary>
/// <param name="Eax">EAX.</param>
/// <param name="Ebx">EBX.</param>
/// <param name="Ecx">ECX.</param>
/// <param name="Edx">EDX.</param>
public readonly record struct CpuidResult(uint Eax, uint Ebx, uint Ecx, uint Edx)
{
    /// <summary>The value of one register.</summary>
    /// <param name="register">Which register.</param>
    public uint this[CpuidRegister register] => register switch
    {
        CpuidRegister.Eax => Eax,
        CpuidRegister.Ebx => Ebx,
        CpuidRegister.Ecx => Ecx,
        _ => Edx,
    };
}

/// <summary>
/// Reads CPUID like Linux 6.1's <c>identify_cpu()</c> path (<c>get_cpu_vendor</c>, <c>cpu_detect</c>,
/// <c>get_cpu_cap</c>, <c>init_scattered_cpuid_features</c>, <c>get_model_name</c>, and the vendor code that
/// fills words 2 and 5), without the kernel's later fix-ups. The CPUID source is a function so a recorded
/// CPUID dump can stand in for the processor.
/// </summary>
internal static class CpuidReader
{
    /// <summary>The processor's own CPUID, via <see cref="X86Base.CpuId"/>.</summary>
    /// <exception cref="CpuFeatureException">The process is not running on an x86 processor.</exception>
    internal static CpuidResult Hardware(uint leaf, uint subleaf)
    {
        if (!X86Base.IsSupported)
            throw new CpuFeatureException("cannot detect CPU features: CPUID needs an x86 processor");
        var (a, b, c, d) = X86Base.CpuId(unchecked((int)leaf), unchecked((int)subleaf));
        return new CpuidResult(unchecked((uint)a), unchecked((uint)b), unchecked((uint)c), unchecked((uint)d));
    }

    internal static CpuFeatures Detect(Func<uint, uint, CpuidResult> cpuid)
    {
        var words = new uint[CpuFeatureTable.CapabilityWords];

        // cpu_detect(): vendor string, level, family/model/stepping.
        var l0 = cpuid(0, 0);
        uint maxLevel = l0.Eax;
        var vendorId = VendorString(l0);
        var vendor = CpuVendors.FromVendorId(vendorId);
        int family = 0, model = 0, stepping = 0;

        // get_cpu_cap().
        if (maxLevel >= 1)
        {
            var l1 = cpuid(1, 0);
            (family, model, stepping) = DecodeSignature(l1.Eax);
            words[4] = l1.Ecx;   // CPUID_1_ECX
            words[0] = l1.Edx;   // CPUID_1_EDX
        }
        if (maxLevel >= 6)
            words[14] = cpuid(6, 0).Eax;                     // CPUID_6_EAX
        if (maxLevel >= 7)
        {
            var l7 = cpuid(7, 0);
            words[9] = l7.Ebx;                                // CPUID_7_0_EBX
            words[16] = l7.Ecx;                               // CPUID_7_ECX
            words[18] = l7.Edx;                               // CPUID_7_EDX
            if (l7.Eax >= 1)
                words[12] = cpuid(7, 1).Eax;                  // CPUID_7_1_EAX
        }
        if (maxLevel >= 0xd)
            words[10] = cpuid(0xd, 1).Eax;                    // CPUID_D_1_EAX

        uint ext = cpuid(0x80000000, 0).Eax;
        if ((ext & 0xffff0000) != 0x80000000)
            ext = 0;
        if (ext >= 0x80000001)
        {
            var e1 = cpuid(0x80000001, 0);
            words[6] = e1.Ecx;                                // CPUID_8000_0001_ECX
            words[1] = e1.Edx;                                // CPUID_8000_0001_EDX
        }
        if (ext >= 0x80000007)
            words[17] = cpuid(0x80000007, 0).Ebx;            // CPUID_8000_0007_EBX
        if (ext >= 0x80000008)
            words[13] = cpuid(0x80000008, 0).Ebx;            // CPUID_8000_0008_EBX
        if (ext >= 0x8000000a)
            words[15] = cpuid(0x8000000a, 0).Edx;            // CPUID_8000_000A_EDX
        if (ext >= 0x8000001f)
            words[19] = cpuid(0x8000001f, 0).Eax;            // CPUID_8000_001F_EAX
        if (ext >= 0x80000021)
            words[20] = cpuid(0x80000021, 0).Eax;            // CPUID_8000_0021_EAX

        // early_init_transmeta(): word 2.
        if (vendor == CpuVendor.Transmeta)
        {
            uint t = cpuid(0x80860000, 0).Eax;
            if ((t & 0xffff0000) == 0x80860000 && t >= 0x80860001)
                words[2] = cpuid(0x80860001, 0).Edx;         // CPUID_8086_0001_EDX
        }

        // init_c3() / init_zhaoxin(): word 5 (the kernel first enables ACE/RNG through an MSR; we only read).
        if (vendor is CpuVendor.Centaur or CpuVendor.Zhaoxin && cpuid(0xC0000000, 0).Eax >= 0xC0000001)
            words[5] = cpuid(0xC0000001, 0).Edx;             // CPUID_C000_0001_EDX

        var bits = new ulong[CpuFeatureTable.BitmapLongs];
        for (int w = 0; w < words.Length; w++)
            bits[w >> 1] |= (ulong)words[w] << (32 * (w & 1));

        // init_scattered_cpuid_features(): the CPUID-sourced bits of the Linux-defined words.
        foreach (var e in CpuFeatureTable.Entries)
        {
            if (e.IsBug || CpuFeatureTable.Words[e.Number >> 5].Cpuid is not null)
                continue;
            foreach (var src in e.Sources)
            {
                uint max = cpuid(src.Leaf & 0xffff0000, 0).Eax;
                if (max < src.Leaf || max > (src.Leaf | 0xffff))
                    continue;
                if ((cpuid(src.Leaf, src.Subleaf)[src.Register] & (1u << src.Bit)) != 0)
                    CpuFeatureTable.SetBit(bits, e.Number);
            }
        }

        InitSpeculationControl(bits);

        // What every kernel sets once CPUID works.
        Set(bits, CpuFeature.Always);
        Set(bits, CpuFeature.Cpuid);

        for (int i = 0; i < bits.Length; i++)
            bits[i] &= CpuFeatureIndex.DefinedMask[i];

        string? modelName = ext >= 0x80000004 ? BrandString(cpuid) : null;
        return CpuFeatures.Create(bits, vendor, family, model, stepping, modelName);
    }

    /// <summary>
    /// The Linux-defined word-7 bits that <c>init_speculation_control()</c> (called from <c>get_cpu_cap()</c>)
    /// derives from CPUID bits: Intel <c>SPEC_CTRL</c>/<c>INTEL_STIBP</c>/<c>SPEC_CTRL_SSBD</c> and the AMD
    /// <c>0x80000008</c> EBX bits. They have no CPUID bit of their own, yet depend on nothing but CPUID.
    /// </summary>
    internal static readonly CpuFeature[] DerivedFromCpuid =
        [CpuFeature.Ibrs, CpuFeature.Ibpb, CpuFeature.Stibp, CpuFeature.Ssbd, CpuFeature.MsrSpecCtrl];

    /// <summary><c>init_speculation_control()</c> of Linux 6.1 <c>arch/x86/kernel/cpu/common.c</c>.</summary>
    internal static void InitSpeculationControl(ulong[] bits)
    {
        if (Has(bits, CpuFeature.SpecCtrl))
        {
            Set(bits, CpuFeature.Ibrs);
            Set(bits, CpuFeature.Ibpb);
            Set(bits, CpuFeature.MsrSpecCtrl);
        }
        if (Has(bits, CpuFeature.IntelStibp))
            Set(bits, CpuFeature.Stibp);
        if (Has(bits, CpuFeature.SpecCtrlSsbd) || Has(bits, CpuFeature.VirtSsbd))
            Set(bits, CpuFeature.Ssbd);
        if (Has(bits, CpuFeature.AmdIbrs))
        {
            Set(bits, CpuFeature.Ibrs);
            Set(bits, CpuFeature.MsrSpecCtrl);
        }
        if (Has(bits, CpuFeature.AmdIbpb))
            Set(bits, CpuFeature.Ibpb);
        if (Has(bits, CpuFeature.AmdStibp))
        {
            Set(bits, CpuFeature.Stibp);
            Set(bits, CpuFeature.MsrSpecCtrl);
        }
        if (Has(bits, CpuFeature.AmdSsbd))
        {
            Set(bits, CpuFeature.Ssbd);
            Set(bits, CpuFeature.MsrSpecCtrl);
            CpuFeatureTable.ClearBit(bits, (int)CpuFeature.VirtSsbd);
        }
    }

    /// <summary>Family, model and stepping from CPUID.1:EAX, as <c>arch/x86/lib/cpu.c</c> decodes them.</summary>
    internal static (int Family, int Model, int Stepping) DecodeSignature(uint sig)
    {
        uint family = (sig >> 8) & 0xf;
        if (family == 0xf)
            family += (sig >> 20) & 0xff;
        uint model = (sig >> 4) & 0xf;
        if (family >= 0x6)
            model += ((sig >> 16) & 0xf) << 4;
        return ((int)family, (int)model, (int)(sig & 0xf));
    }

    internal static string VendorString(CpuidResult l0)
    {
        Span<byte> b = stackalloc byte[12];
        BitConverter.TryWriteBytes(b, l0.Ebx);
        BitConverter.TryWriteBytes(b[4..], l0.Edx);
        BitConverter.TryWriteBytes(b[8..], l0.Ecx);
        return Encoding.ASCII.GetString(b).TrimEnd('\0');
    }

    /// <summary>The brand string of leaves 0x80000002..4, trimmed as <c>get_model_name()</c> trims it.</summary>
    internal static string? BrandString(Func<uint, uint, CpuidResult> cpuid)
    {
        Span<byte> b = stackalloc byte[48];
        for (uint i = 0; i < 3; i++)
        {
            var r = cpuid(0x80000002 + i, 0);
            var chunk = b.Slice((int)i * 16, 16);
            BitConverter.TryWriteBytes(chunk, r.Eax);
            BitConverter.TryWriteBytes(chunk[4..], r.Ebx);
            BitConverter.TryWriteBytes(chunk[8..], r.Ecx);
            BitConverter.TryWriteBytes(chunk[12..], r.Edx);
        }
        int end = b.IndexOf((byte)0);
        var s = Encoding.ASCII.GetString(end < 0 ? b : b[..end]).TrimStart(' ').TrimEnd();
        return s.Length == 0 ? null : s;
    }

    private static bool Has(ulong[] bits, CpuFeature f) => CpuFeatureTable.HasBit(bits, (int)f);

    private static void Set(ulong[] bits, CpuFeature f) => CpuFeatureTable.SetBit(bits, (int)f);
}
