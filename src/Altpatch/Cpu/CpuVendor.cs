namespace Altpatch.Cpu;

/// <summary>The CPU vendors Linux 6.1 knows (one per <c>struct cpu_dev</c> in <c>arch/x86/kernel/cpu/</c>).</summary>
public enum CpuVendor
{
    /// <summary>A vendor string Linux does not know, or none given.</summary>
    Unknown,
    /// <summary><c>GenuineIntel</c>.</summary>
    Intel,
    /// <summary><c>AuthenticAMD</c>.</summary>
    Amd,
    /// <summary><c>HygonGenuine</c>.</summary>
    Hygon,
    /// <summary><c>CentaurHauls</c> (VIA/Centaur).</summary>
    Centaur,
    /// <summary><c>"  Shanghai  "</c>.</summary>
    Zhaoxin,
    /// <summary><c>CyrixInstead</c>.</summary>
    Cyrix,
    /// <summary><c>GenuineTMx86</c> or <c>TransmetaCPU</c>.</summary>
    Transmeta,
    /// <summary><c>Geode by NSC</c>.</summary>
    Nsc,
    /// <summary><c>UMC UMC UMC</c>.</summary>
    Umc,
    /// <summary><c>Vortex86 SoC</c>.</summary>
    Vortex,
}

/// <summary>Conversions between <see cref="CpuVendor"/> and the 12-byte CPUID vendor string.</summary>
public static class CpuVendors
{
    private static readonly (string Id, CpuVendor Vendor)[] Ids =
    [
        ("GenuineIntel", CpuVendor.Intel),
        ("AuthenticAMD", CpuVendor.Amd),
        ("HygonGenuine", CpuVendor.Hygon),
        ("CentaurHauls", CpuVendor.Centaur),
        ("  Shanghai  ", CpuVendor.Zhaoxin),
        ("CyrixInstead", CpuVendor.Cyrix),
        ("GenuineTMx86", CpuVendor.Transmeta),
        ("TransmetaCPU", CpuVendor.Transmeta),
        ("Geode by NSC", CpuVendor.Nsc),
        ("UMC UMC UMC", CpuVendor.Umc),
        ("Vortex86 SoC", CpuVendor.Vortex),
    ];

    /// <summary>
    /// The vendor of a CPUID vendor string (<c>vendor_id</c> in <c>/proc/cpuinfo</c>), matched exactly as
    /// Linux's <c>get_cpu_vendor()</c> does; surrounding whitespace is also tried trimmed, since
    /// <c>/proc/cpuinfo</c> text may lose the padding of <c>"  Shanghai  "</c>.
    /// </summary>
    /// <param name="vendorId">The vendor string, e.g. <c>GenuineIntel</c>.</param>
    /// <returns>The vendor, or <see cref="CpuVendor.Unknown"/>.</returns>
    public static CpuVendor FromVendorId(string? vendorId)
    {
        if (vendorId is null)
            return CpuVendor.Unknown;
        foreach (var (id, vendor) in Ids)
        {
            if (string.Equals(id, vendorId, StringComparison.Ordinal))
                return vendor;
        }
        var trimmed = vendorId.Trim();
        foreach (var (id, vendor) in Ids)
        {
            if (string.Equals(id.Trim(), trimmed, StringComparison.Ordinal))
                return vendor;
        }
        return CpuVendor.Unknown;
    }

    /// <summary>The canonical CPUID vendor string of a vendor, or null for <see cref="CpuVendor.Unknown"/>.</summary>
    /// <param name="vendor">The vendor.</param>
    public static string? VendorId(CpuVendor vendor)
    {
        foreach (var (id, v) in Ids)
        {
            if (v == vendor)
                return id;
        }
        return null;
    }

    /// <summary>Linux's <c>X86_VENDOR_*</c> number (<c>arch/x86/include/asm/processor.h</c>), 0xff for unknown.</summary>
    /// <param name="vendor">The vendor.</param>
    public static int LinuxVendorNumber(CpuVendor vendor) => vendor switch
    {
        CpuVendor.Intel => 0,
        CpuVendor.Cyrix => 1,
        CpuVendor.Amd => 2,
        CpuVendor.Umc => 3,
        CpuVendor.Centaur => 5,
        CpuVendor.Transmeta => 7,
        CpuVendor.Nsc => 8,
        CpuVendor.Hygon => 9,
        CpuVendor.Zhaoxin => 10,
        CpuVendor.Vortex => 11,
        _ => 0xff,
    };
}
