namespace Altpatch.Images.Boot;

/// <summary>The boot-time text passes, in the order a 6.1 kernel runs them: the writers of <c>setup_arch()</c> and
/// <c>start_kernel()</c> (jump labels, static calls, ftrace, the preempt mode), then those of <c>alternative_instructions()</c>.</summary>
public enum BootPass
{
    /// <summary><c>jump_label_init()</c>: <c>__jump_table</c> (writes nothing on x86: objtool NOPed the labels at build time).</summary>
    JumpLabels,
    /// <summary><c>static_call_init()</c>: <c>.static_call_sites</c>, each pointed at its key's initial function.</summary>
    StaticCalls,
    /// <summary><c>ftrace_init()</c>: <c>__mcount_loc</c>, each <c>call __fentry__</c> to a NOP.</summary>
    Ftrace,
    /// <summary><c>sched_dynamic_update()</c> (<c>preempt=</c>, or <c>preempt_dynamic_init()</c>): the PREEMPT_DYNAMIC static calls.</summary>
    PreemptDynamic,
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
    /// <summary><c>runtime_const_init()</c> (6.9+): the <c>runtime_ptr_*</c> / <c>runtime_shift_*</c> immediates
    /// (<c>USER_PTR_MAX</c>; the dentry hash is allocated at boot).</summary>
    RuntimeConst,
    /// <summary><c>callthunks_patch_builtin_calls()</c> (6.2+, <c>X86_FEATURE_CALL_DEPTH</c>): the accounting thunks in the
    /// padding before functions, and every <c>.call_sites</c> call redirected to its callee's thunk.</summary>
    CallThunks,
    /// <summary>The static calls and keys the boot code sets (6.12: <c>apic_setup_apic_calls()</c>,
    /// <c>select_idle_routine()</c>, <c>security_init()</c>'s LSM hooks), each by <c>static_call_update()</c> /
    /// <c>static_branch_enable()</c>; then <c>static_call_init()</c> again (<c>static_call_force_reinit()</c>): NULL tail
    /// calls to the return thunk and, with call depth tracking, every static call to its callee's accounting thunk.</summary>
    BootCalls,
}

/// <summary>Names of the passes.</summary>
public static class BootPasses
{
    /// <summary>Every pass, in the kernel's order.</summary>
    public static IReadOnlyList<BootPass> All { get; } = [BootPass.JumpLabels, BootPass.StaticCalls, BootPass.Ftrace, BootPass.PreemptDynamic, BootPass.Paravirt, BootPass.Retpolines, BootPass.Returns, BootPass.Alternatives, BootPass.CallThunks, BootPass.IbtEndbr, BootPass.SmpLocks, BootPass.RuntimeConst, BootPass.BootCalls];

    /// <summary>The kernel function that does the pass, e.g. <c>apply_paravirt</c>.</summary>
    public static string KernelFunction(this BootPass pass) => pass switch
    {
        BootPass.JumpLabels => "jump_label_init",
        BootPass.StaticCalls => "static_call_init",
        BootPass.Ftrace => "ftrace_init",
        BootPass.PreemptDynamic => "sched_dynamic_update",
        BootPass.Paravirt => "apply_paravirt",
        BootPass.Retpolines => "apply_retpolines",
        BootPass.Returns => "apply_returns",
        BootPass.Alternatives => "apply_alternatives",
        BootPass.IbtEndbr => "apply_ibt_endbr",
        BootPass.SmpLocks => "alternatives_smp_unlock",
        BootPass.RuntimeConst => "runtime_const_init",
        BootPass.CallThunks => "callthunks_patch_builtin_calls",
        BootPass.BootCalls => "static_call_update",
        _ => pass.ToString(),
    };

    /// <summary>Short lower-case name used in reports and the CLI: jump-labels, static-calls, ftrace, preempt, paravirt,
    /// retpolines, returns, alternatives, call-thunks, ibt-endbr, smp-locks, runtime-const, boot-calls.</summary>
    public static string ShortName(this BootPass pass) => pass switch
    {
        BootPass.JumpLabels => "jump-labels",
        BootPass.StaticCalls => "static-calls",
        BootPass.Ftrace => "ftrace",
        BootPass.PreemptDynamic => "preempt",
        BootPass.Paravirt => "paravirt",
        BootPass.Retpolines => "retpolines",
        BootPass.Returns => "returns",
        BootPass.Alternatives => "alternatives",
        BootPass.IbtEndbr => "ibt-endbr",
        BootPass.SmpLocks => "smp-locks",
        BootPass.RuntimeConst => "runtime-const",
        BootPass.CallThunks => "call-thunks",
        BootPass.BootCalls => "boot-calls",
        _ => pass.ToString(),
    };
}
