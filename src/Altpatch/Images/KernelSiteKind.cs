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
    /// <summary><c>__mcount_loc</c>: the <c>call __fentry__</c> at each traced function, a NOP after <c>ftrace_init()</c>.</summary>
    Mcount,
    /// <summary><c>__jump_table</c>: jump labels (static branches), a <c>jmp</c> or a NOP as their static key says.</summary>
    JumpLabel,
    /// <summary><c>.static_call_sites</c>: inline static calls (x86-64), pointed at their key's function by <c>static_call_init()</c>.</summary>
    StaticCall,
    /// <summary>Static-call trampolines (<c>__SCT__*</c> in <c>.static_call.text</c>), rewritten by <c>static_call_update()</c>.</summary>
    StaticCallTrampoline,
    /// <summary>ftrace's own call sites in <c>ftrace_caller</c>/<c>ftrace_regs_caller</c> (<c>ftrace_call</c>, <c>ftrace_regs_call</c>:
    /// <c>ftrace_update_ftrace_func()</c>) and <c>ftrace_graph_call</c> (i386: <c>ftrace_enable_ftrace_graph_caller()</c>).</summary>
    FtraceCall,
    /// <summary>A <c>.call_sites</c> entry (6.2+, call depth tracking): a direct call, 5 bytes.</summary>
    CallSite,
    /// <summary>A <c>.ibt_endbr_seal</c> entry (CONFIG_X86_KERNEL_IBT): an ENDBR the kernel seals, 4 bytes.</summary>
    Endbr,
    /// <summary>A <c>runtime_ptr_*</c> (8-byte immediate) or <c>runtime_shift_*</c> (1 byte) entry (6.9+), in section order.</summary>
    RuntimeConst,
    /// <summary>The call depth accounting thunk's place in a function's padding (6.12, <c>retbleed=stuff</c>): NOPs, or the
    /// thunk that <c>callthunks_translate_call_dest()</c> writes when a static call is aimed at the function.</summary>
    CallThunk,
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
        KernelSiteKind.CallSite => "call",
        KernelSiteKind.Endbr => "endbr",
        KernelSiteKind.RuntimeConst => "runtime_const",
        KernelSiteKind.CallThunk => "callthunk",
        _ => kind.ToString(),
    };

    /// <summary>A retpoline thunk call or jump (<c>.retpoline_sites</c>).</summary>
    public static SiteKind Retpoline { get; } = new("retpoline");

    /// <summary>A return (<c>.return_sites</c>).</summary>
    public static SiteKind Return { get; } = new("return");
}
