namespace Altpatch.Images.Boot;

/// <summary>
/// <c>spectre_v2=</c>: the Spectre v2 mitigation asked for on the kernel command line (6.1's
/// <c>spectre_v2_mitigation_cmd</c>; <c>nospectre_v2</c> and <c>mitigations=off</c> are <see cref="Off"/>).
/// </summary>
public enum SpectreV2Command
{
    /// <summary><c>auto</c>, the default: eIBRS when the CPU has it, IBRS on Intel with RETBleed, else retpolines.</summary>
    Auto,
    /// <summary><c>off</c> (<c>nospectre_v2</c>): no mitigation.</summary>
    Off,
    /// <summary><c>on</c>: as <see cref="Auto"/>, and user-space IBPB always on.</summary>
    On,
    /// <summary><c>retpoline</c>.</summary>
    Retpoline,
    /// <summary><c>retpoline,generic</c>.</summary>
    RetpolineGeneric,
    /// <summary><c>retpoline,lfence</c> (also <c>retpoline,amd</c>): LFENCE before indirect branches.</summary>
    RetpolineLfence,
    /// <summary><c>eibrs</c>.</summary>
    Eibrs,
    /// <summary><c>eibrs,retpoline</c>.</summary>
    EibrsRetpoline,
    /// <summary><c>eibrs,lfence</c>.</summary>
    EibrsLfence,
    /// <summary><c>ibrs</c>: IBRS on kernel entry.</summary>
    Ibrs,
}

/// <summary><c>spec_rstack_overflow=</c>: the SRSO mitigation asked for on the kernel command line (6.1's <c>srso_mitigation_cmd</c>).</summary>
public enum SrsoCommand
{
    /// <summary><c>safe-ret</c>, the default: the SRSO return thunks.</summary>
    SafeRet,
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>microcode</c>: the IBPB-extending microcode only.</summary>
    Microcode,
    /// <summary><c>ibpb</c>: IBPB on every kernel entry and VM exit (no return thunk).</summary>
    Ibpb,
    /// <summary><c>ibpb-vmexit</c>: IBPB on VM exit only.</summary>
    IbpbOnVmexit,
}

/// <summary>
/// The spellings of the mitigation options of the kernel command line, for messages and reports. The choices themselves
/// are read by <see cref="KernelCommandLine"/> (<c>spectre_v2=</c> is <see cref="KernelCommandLine.SpectreV2"/>, …) and
/// acted on by <see cref="KernelBootCpu.Derive"/> as 6.1.176's <c>cpu/bugs.c</c> does, including its fallbacks (a
/// <c>spectre_v2=</c> mode the CPU or the build cannot do falls back to <c>auto</c>, as the kernel logs).
/// </summary>
public static class KernelMitigationCommands
{
    /// <summary>The option as the kernel command line spells it, e.g. <c>eibrs,lfence</c>.</summary>
    public static string Name(SpectreV2Command command) => command switch
    {
        SpectreV2Command.Off => "off",
        SpectreV2Command.On => "on",
        SpectreV2Command.Retpoline => "retpoline",
        SpectreV2Command.RetpolineGeneric => "retpoline,generic",
        SpectreV2Command.RetpolineLfence => "retpoline,lfence",
        SpectreV2Command.Eibrs => "eibrs",
        SpectreV2Command.EibrsRetpoline => "eibrs,retpoline",
        SpectreV2Command.EibrsLfence => "eibrs,lfence",
        SpectreV2Command.Ibrs => "ibrs",
        _ => "auto",
    };

    /// <summary>The option as the kernel command line spells it, e.g. <c>ibpb-vmexit</c>.</summary>
    public static string Name(SrsoCommand command) => command switch
    {
        SrsoCommand.Off => "off",
        SrsoCommand.Microcode => "microcode",
        SrsoCommand.Ibpb => "ibpb",
        SrsoCommand.IbpbOnVmexit => "ibpb-vmexit",
        _ => "safe-ret",
    };
}
