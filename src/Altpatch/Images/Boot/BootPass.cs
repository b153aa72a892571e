namespace Altpatch.Images.Boot;

/// <summary>The boot-time passes of <c>alternative_instructions()</c>, in the order a 6.1 kernel runs them.</summary>
public enum BootPass
{
    /// <summary><c>apply_paravirt()</c>: <c>.parainstructions</c>.</summary>
    Paravirt,
    /// <summary><c>apply_retpolines()</c>: <c>.retpoline_sites</c>.</summary>
    Retpolines,
    /// <summary><c>apply_returns()</c>: <c>.return_sites</c> (and static-call trampolines among them).</summary>
    Returns,
    /// <summary><c>apply_alternatives()</c>: <c>.altinstructions</c>.</summary>
    Alternatives,
    /// <summary><c>apply_ibt_endbr()</c>: <c>.ibt_endbr_seal</c> (CONFIG_X86_KERNEL_IBT), each sealed ENDBR poisoned.</summary>
    IbtEndbr,
    /// <summary><c>alternatives_smp_module_add()</c> → <c>alternatives_smp_unlock()</c>: <c>.smp_locks</c> on one CPU.</summary>
    SmpLocks,
}

/// <summary>Names of the passes.</summary>
public static class BootPasses
{
    /// <summary>Every pass, in the kernel's order.</summary>
    public static IReadOnlyList<BootPass> All { get; } = [BootPass.Paravirt, BootPass.Retpolines, BootPass.Returns, BootPass.Alternatives, BootPass.IbtEndbr, BootPass.SmpLocks];

    /// <summary>The kernel function that does the pass, e.g. <c>apply_paravirt</c>.</summary>
    public static string KernelFunction(this BootPass pass) => pass switch
    {
        BootPass.Paravirt => "apply_paravirt",
        BootPass.Retpolines => "apply_retpolines",
        BootPass.Returns => "apply_returns",
        BootPass.Alternatives => "apply_alternatives",
        BootPass.IbtEndbr => "apply_ibt_endbr",
        BootPass.SmpLocks => "alternatives_smp_unlock",
        _ => pass.ToString(),
    };

    /// <summary>Short lower-case name used in reports and the CLI: paravirt, retpolines, returns, alternatives, ibt-endbr, smp-locks.</summary>
    public static string ShortName(this BootPass pass) => pass switch
    {
        BootPass.Paravirt => "paravirt",
        BootPass.Retpolines => "retpolines",
        BootPass.Returns => "returns",
        BootPass.Alternatives => "alternatives",
        BootPass.IbtEndbr => "ibt-endbr",
        BootPass.SmpLocks => "smp-locks",
        _ => pass.ToString(),
    };
}
