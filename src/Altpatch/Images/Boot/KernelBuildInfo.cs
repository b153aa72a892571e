using Altpatch.Cpu;

namespace Altpatch.Images.Boot;

/// <summary>
/// The build options (<c>CONFIG_*</c>) the 6.1 mitigation rules depend on. A stripped image has no <c>.config</c>
/// (unless built with <c>CONFIG_IKCONFIG</c>), so they are inferred from what the image contains — the tables and
/// thunks each option produces — and otherwise take the defaults of the Debian 6.1 configs (documented in
/// <c>docs/kernel-patching.md</c>).
/// </summary>
public sealed record KernelBuildInfo
{
    /// <summary>CONFIG_X86_64.</summary>
    public bool X86_64 { get; init; }

    /// <summary>CONFIG_RETPOLINE: the image has retpoline thunks (alternatives on X86_FEATURE_RETPOLINE or <c>.retpoline_sites</c>).</summary>
    public bool Retpoline { get; init; } = true;

    /// <summary>CONFIG_RETHUNK: the image has <c>.return_sites</c>.</summary>
    public bool Rethunk { get; init; }

    /// <summary>CONFIG_CPU_UNRET_ENTRY: <c>retbleed_return_thunk</c> found (x86-64).</summary>
    public bool CpuUnretEntry { get; init; }

    /// <summary>CONFIG_CPU_IBPB_ENTRY: alternatives on X86_FEATURE_ENTRY_IBPB exist (x86-64).</summary>
    public bool CpuIbpbEntry { get; init; }

    /// <summary>CONFIG_CPU_IBRS_ENTRY: x86-64 and alternatives on X86_FEATURE_KERNEL_IBRS exist.</summary>
    public bool CpuIbrsEntry { get; init; }

    /// <summary>CONFIG_CPU_SRSO: <c>srso_return_thunk</c> found.</summary>
    public bool CpuSrso { get; init; }

    /// <summary>CONFIG_MITIGATION_ITS: the ITS thunk array and <c>its_return_thunk</c> found.</summary>
    public bool MitigationIts { get; init; }

    /// <summary>CONFIG_MITIGATION_CALL_DEPTH_TRACKING (6.2+): <c>call_depth_return_thunk</c> found.</summary>
    public bool CallDepthTracking { get; init; }

    /// <summary>CONFIG_MITIGATION_SPECTRE_BHI (Debian default: y).</summary>
    public bool MitigationSpectreBhi { get; init; } = true;

    /// <summary>CONFIG_MITIGATION_RFDS (Debian default: y).</summary>
    public bool MitigationRfds { get; init; } = true;

    /// <summary>CONFIG_MITIGATION_TSA (Debian default: y).</summary>
    public bool MitigationTsa { get; init; } = true;

    /// <summary>CONFIG_MITIGATION_VMSCAPE (Debian default: y).</summary>
    public bool MitigationVmscape { get; init; } = true;

    /// <summary>CONFIG_GDS_FORCE_MITIGATION (Debian default: n).</summary>
    public bool GdsForceMitigation { get; init; }

    /// <summary>CONFIG_PAGE_TABLE_ISOLATION: taken as set on x86-64 and on i386 with PAE (Debian defaults).</summary>
    public bool PageTableIsolation { get; init; }

    /// <summary>More than two page-table levels: x86-64, or i386 with CONFIG_X86_PAE.</summary>
    public bool PgtableLevelsAbove2 { get; init; }

    /// <summary>CONFIG_X86_PAE on i386. A stripped image does not record it; it is taken from the release name of the
    /// distributions' PAE flavours (Debian <c>686-pae</c>, Ubuntu <c>generic-pae</c>): "pae" in the release.</summary>
    public bool Pae { get; init; }

    /// <summary>Infers the options from an image.</summary>
    /// <exception cref="ImageFormatException">The image's tables are malformed (<see cref="KernelImage.Tables"/>).</exception>
    public static KernelBuildInfo Infer(KernelImage image, KernelThunks thunks)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(thunks);
        var t = image.Tables;
        bool is64 = image.Bitness == 64;
        bool Uses(CpuFeature f) => t.Alternatives.Any(a => a.Cpuid == (ushort)f);
        bool pae = !is64 && (image.Version?.Release.Contains("pae", StringComparison.OrdinalIgnoreCase) ?? false);
        return new KernelBuildInfo
        {
            X86_64 = is64,
            Retpoline = !t.Retpolines.IsEmpty || Uses(CpuFeature.Retpoline),
            Rethunk = !t.Returns.IsEmpty,
            CpuUnretEntry = is64 && thunks.RetbleedReturnThunk is not null,
            CpuIbpbEntry = is64 && Uses(CpuFeature.EntryIbpb),
            CpuIbrsEntry = is64 && Uses(CpuFeature.KernelIbrs),
            CpuSrso = thunks.SrsoReturnThunk is not null,
            MitigationIts = thunks.ItsReturnThunk is not null,
            CallDepthTracking = thunks.CallDepthReturnThunk is not null,
            PageTableIsolation = is64 || pae,
            PgtableLevelsAbove2 = is64 || pae,
            Pae = pae,
        };
    }
}
