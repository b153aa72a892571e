using Altpatch.Sites;

namespace Altpatch.Images;

/// <summary>The kinds of patch site tables a kernel image carries.</summary>
public enum KernelSiteKind
{
    /// <summary><c>.altinstructions</c> (+ <c>.altinstr_replacement</c>): CPU-feature alternatives.</summary>
    Alternative,
    /// <summary><c>.parainstructions</c>: paravirt call sites.</summary>
    Paravirt,
    /// <summary><c>.smp_locks</c>: LOCK prefixes that a uniprocessor kernel turns into DS prefixes.</summary>
    SmpLock,
    /// <summary><c>.retpoline_sites</c>: calls and jumps to retpoline thunks (objtool, 5.16+).</summary>
    Retpoline,
    /// <summary><c>.return_sites</c>: jumps to the return thunk (objtool, 5.19+).</summary>
    Return,
}

/// <summary>
/// The kernel's site tables: their short names, and the <see cref="SiteKind"/>s of the tables only images have
/// (the others are <see cref="SiteKind.Alternative"/>, <see cref="SiteKind.Paravirt"/> and <see cref="SiteKind.Lock"/>),
/// which a boot-time pass names its sites with in messages and plans.
/// </summary>
public static class KernelSiteKinds
{
    /// <summary>Every kind, in the order of the image's tables.</summary>
    public static IReadOnlyList<KernelSiteKind> All { get; } =
        [KernelSiteKind.Alternative, KernelSiteKind.Paravirt, KernelSiteKind.SmpLock, KernelSiteKind.Retpoline, KernelSiteKind.Return];

    /// <summary>The short name reports and the CLI use: alt, para, lock, retpoline, return.</summary>
    public static string ShortName(this KernelSiteKind kind) => kind switch
    {
        KernelSiteKind.Alternative => "alt",
        KernelSiteKind.Paravirt => "para",
        KernelSiteKind.SmpLock => "lock",
        KernelSiteKind.Retpoline => "retpoline",
        KernelSiteKind.Return => "return",
        _ => kind.ToString(),
    };

    /// <summary>A retpoline thunk call or jump (<c>.retpoline_sites</c>).</summary>
    public static SiteKind Retpoline { get; } = new("retpoline");

    /// <summary>A return (<c>.return_sites</c>).</summary>
    public static SiteKind Return { get; } = new("return");
}
