namespace Altpatch.Images;

/// <summary>Names of <see cref="KernelSiteKind"/> in reports and on the command line.</summary>
public static class KernelSiteKinds
{
    /// <summary>The short name of a table: alt, para, lock, retpoline, return, mcount, jump, static_call, sct, ftrace_call
    /// (the <c>--kind</c> values of <c>kernel sites</c>, and the names in reports).</summary>
    public static string ShortName(this KernelSiteKind kind) => kind switch
    {
        KernelSiteKind.Alternative => "alt",
        KernelSiteKind.Paravirt => "para",
        KernelSiteKind.SmpLock => "lock",
        KernelSiteKind.Retpoline => "retpoline",
        KernelSiteKind.Return => "return",
        KernelSiteKind.Mcount => "mcount",
        KernelSiteKind.JumpLabel => "jump",
        KernelSiteKind.StaticCall => "static_call",
        KernelSiteKind.StaticCallTrampoline => "sct",
        KernelSiteKind.FtraceCall => "ftrace_call",
        _ => kind.ToString(),
    };
}
