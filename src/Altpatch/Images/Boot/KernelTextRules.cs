using System.Collections.Immutable;

namespace Altpatch.Images.Boot;

/// <summary>A <c>preempt=</c> mode of <c>CONFIG_PREEMPT_DYNAMIC</c> (<c>kernel/sched/core.c</c>).</summary>
public enum PreemptMode
{
    /// <summary><c>preempt=none</c> (<c>preempt_dynamic_none</c>, 0).</summary>
    None = 0,
    /// <summary><c>preempt=voluntary</c> (<c>preempt_dynamic_voluntary</c>, 1).</summary>
    Voluntary = 1,
    /// <summary><c>preempt=full</c> (<c>preempt_dynamic_full</c>, 2).</summary>
    Full = 2,
    /// <summary><c>preempt=lazy</c> (<c>preempt_dynamic_lazy</c>, 3): the lazy preemption patches of the 6.12 real-time
    /// tree (Debian's <c>-rt</c> flavour; upstream from 6.13).</summary>
    Lazy = 3,
    /// <summary><c>preempt=laziest</c> (<c>preempt_dynamic_laziest</c>, 4): the same patches.</summary>
    Laziest = 4,
}

/// <summary>One static call <c>sched_dynamic_update()</c> switches: <c>preempt_dynamic_enable(f)</c> is
/// <c>static_call_update(f, f##_dynamic_enabled)</c>, <c>preempt_dynamic_disable(f)</c> the same with <c>_disabled</c>.</summary>
/// <param name="Name">The static call (<c>__SCT__</c> + name is its trampoline).</param>
/// <param name="Enabled">The function of the enabled state.</param>
/// <param name="Disabled">The function of the disabled state; null for NULL (a NOP call, a RET trampoline).</param>
public readonly record struct PreemptDynamicCall(string Name, string Enabled, string? Disabled);

/// <summary>
/// The per-version facts of the boot-time text writers besides <c>alternative_instructions()</c>: the names and
/// values <c>sched_dynamic_update()</c> uses, the symbols the passes look up, and the order they run in. The passes
/// (<c>Linux61TextPasses</c>) take them from here, so a later kernel line is a new instance, not new code.
/// </summary>
public sealed record KernelTextRules
{
    /// <summary>Name for reports, e.g. "Linux 6.1".</summary>
    public required string Name { get; init; }

    /// <summary>Whether <c>jump_label_init()</c> writes the NOP of entries whose initial type is NOP
    /// (<c>arch_jump_label_transform_static()</c>); false on x86 since objtool NOPs them at build time.</summary>
    public bool JumpLabelInitWrites { get; init; }

    /// <summary>The calls of <c>sched_dynamic_update()</c>, in the order it updates them.</summary>
    public ImmutableArray<PreemptDynamicCall> PreemptCalls { get; init; } = [];

    /// <summary>Per mode, which of <see cref="PreemptCalls"/> end enabled (same order).</summary>
    public ImmutableDictionary<PreemptMode, ImmutableArray<bool>> PreemptModes { get; init; } = ImmutableDictionary<PreemptMode, ImmutableArray<bool>>.Empty;

    /// <summary>
    /// The static keys <c>__sched_dynamic_update()</c> switches besides the calls, when the build has them
    /// (<c>preempt_dynamic_key_enable(f)</c> is <c>static_key_enable(&amp;sk_dynamic_##f.key)</c>): the lazy preemption
    /// patches' <c>sk_dynamic_preempt_lazy</c> and <c>sk_dynamic_preempt_promote</c>. A build without them knows no
    /// <see cref="PreemptKeyModes"/>.
    /// </summary>
    public ImmutableArray<string> PreemptKeys { get; init; } = [];

    /// <summary>The modes that need <see cref="PreemptKeys"/>, with which of them end enabled (same order); every other
    /// mode leaves them disabled.</summary>
    public ImmutableDictionary<PreemptMode, ImmutableArray<bool>> PreemptKeyModes { get; init; } = ImmutableDictionary<PreemptMode, ImmutableArray<bool>>.Empty;

    /// <summary>The modes <c>sched_dynamic_mode()</c> refuses under <c>CONFIG_PREEMPT_RT</c> in a build with
    /// <see cref="PreemptKeys"/> (the lazy patches compile <c>none</c> and <c>voluntary</c> out there).</summary>
    public ImmutableArray<PreemptMode> PreemptNotRealTime { get; init; } = [];

    /// <summary>The function <c>DEFINE_STATIC_CALL_RET0</c> keys start with and whose call form is <c>xor5rax</c>.</summary>
    public string Return0 { get; init; } = "__static_call_return0";

    /// <summary>Where a NULL conditional tail call goes without RETHUNK (<c>__static_call_return</c>).</summary>
    public string StaticCallReturn { get; init; } = "__static_call_return";

    /// <summary>The function that runs <c>preempt_dynamic_init()</c> (its constant argument to
    /// <c>sched_dynamic_update()</c> is the build's default mode) and that function.</summary>
    public (string Caller, string Update) PreemptDefault { get; init; } = ("sched_init", "sched_dynamic_update");

    /// <summary>Other functions whose call from <see cref="PreemptDefault"/>'s caller, with the mode as its argument, is the
    /// default mode's update: <c>__sched_dynamic_update</c> in 6.12, where <c>sched_dynamic_update()</c> (a mutex around it)
    /// is inlined into <c>sched_init()</c>.</summary>
    public ImmutableArray<string> PreemptUpdateInlined { get; init; } = [];

    /// <summary>The ftrace callers an mcount site may call at run time.</summary>
    public ImmutableArray<string> FtraceCallers { get; init; } = [];

    /// <summary>Linux 6.1.176 (x86).</summary>
    public static KernelTextRules Linux61 { get; } = new()
    {
        Name = "Linux 6.1",
        JumpLabelInitWrites = false,
        PreemptCalls =
        [
            new("cond_resched", "__cond_resched", "__static_call_return0"),
            new("might_resched", "__cond_resched", "__static_call_return0"),
            new("preempt_schedule", "preempt_schedule_thunk", null),
            new("preempt_schedule_notrace", "preempt_schedule_notrace_thunk", null),
            new("irqentry_exit_cond_resched", "raw_irqentry_exit_cond_resched", null),
        ],
        PreemptModes = new Dictionary<PreemptMode, ImmutableArray<bool>>
        {
            [PreemptMode.None] = [true, false, false, false, false],
            [PreemptMode.Voluntary] = [true, true, false, false, false],
            [PreemptMode.Full] = [false, false, true, true, true],
        }.ToImmutableDictionary(),
        FtraceCallers = ["ftrace_caller", "ftrace_regs_caller"],
    };

    /// <summary>Linux 6.12 (6.12.118): the same PREEMPT_DYNAMIC static calls and modes as 6.1 (<c>__sched_dynamic_update()</c>),
    /// the same ftrace callers; <c>jump_label_init()</c> still writes nothing on x86. Debian's build inlines
    /// <c>sched_dynamic_update()</c> into <c>sched_init()</c>, which then calls <c>__sched_dynamic_update(1)</c>.</summary>
    /// <remarks>Debian's <c>-rt</c> flavour carries the real-time tree's lazy preemption patches ("sched: Add Lazy
    /// preemption model", "sched: Add laziest preempt model"): modes <c>lazy</c> (3) and <c>laziest</c> (4) switch the calls
    /// as <c>full</c> does, then <c>sk_dynamic_preempt_lazy</c> on (both) and <c>sk_dynamic_preempt_promote</c> on (lazy
    /// only); with <c>PREEMPT_RT</c>, <c>none</c> and <c>voluntary</c> are unknown modes. Read from the
    /// 6.12.118+deb12-rt-amd64 build's <c>__sched_dynamic_update</c> and <c>sched_dynamic_mode</c>.</remarks>
    public static KernelTextRules Linux612 { get; } = Linux61 with
    {
        Name = "Linux 6.12",
        PreemptUpdateInlined = ["__sched_dynamic_update"],
        PreemptModes = Linux61.PreemptModes
            .Add(PreemptMode.Lazy, Linux61.PreemptModes[PreemptMode.Full])
            .Add(PreemptMode.Laziest, Linux61.PreemptModes[PreemptMode.Full]),
        PreemptKeys = ["sk_dynamic_preempt_lazy", "sk_dynamic_preempt_promote"],
        PreemptKeyModes = new Dictionary<PreemptMode, ImmutableArray<bool>>
        {
            [PreemptMode.Lazy] = [true, true],
            [PreemptMode.Laziest] = [true, false],
        }.ToImmutableDictionary(),
        PreemptNotRealTime = [PreemptMode.None, PreemptMode.Voluntary],
    };
}
