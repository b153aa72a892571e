using System.Collections.Immutable;
using System.Globalization;

namespace Altpatch.Images.Boot;

/// <summary><c>mitigations=</c> (kernel/cpu.c <c>mitigations_parse_cmdline()</c>).</summary>
public enum MitigationsMode
{
    /// <summary><c>off</c>: <c>cpu_mitigations_off()</c>.</summary>
    Off,
    /// <summary><c>auto</c> (the default with CONFIG_CPU_MITIGATIONS).</summary>
    Auto,
    /// <summary><c>auto,nosmt</c>: <c>cpu_mitigations_auto_nosmt()</c>.</summary>
    AutoNosmt,
}

/// <summary><c>spectre_v2_user=</c> (<c>v2_user_options[]</c>).</summary>
public enum SpectreV2UserCommand
{
    /// <summary><c>off</c>.</summary>
    None,
    /// <summary><c>auto</c>, absent or unknown.</summary>
    Auto,
    /// <summary><c>on</c>.</summary>
    Force,
    /// <summary><c>prctl</c>.</summary>
    Prctl,
    /// <summary><c>prctl,ibpb</c>.</summary>
    PrctlIbpb,
    /// <summary><c>seccomp</c>.</summary>
    Seccomp,
    /// <summary><c>seccomp,ibpb</c>.</summary>
    SeccompIbpb,
}

/// <summary><c>retbleed=</c> (<c>retbleed_parse_cmdline()</c>).</summary>
public enum RetbleedCommand
{
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>auto</c> (the default).</summary>
    Auto,
    /// <summary><c>unret</c>.</summary>
    Unret,
    /// <summary><c>ibpb</c>.</summary>
    Ibpb,
    /// <summary><c>stuff</c> (6.2+, read by the 6.12 rules only): call depth tracking (RSB stuffing), with
    /// <c>spectre_v2=retpoline</c>.</summary>
    Stuff,
}

/// <summary><c>spectre_bhi=</c> (<c>spectre_bhi_parse_cmdline()</c>).</summary>
public enum BhiCommand
{
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>on</c> (the default with CONFIG_MITIGATION_SPECTRE_BHI).</summary>
    On,
    /// <summary><c>vmexit</c> (read by the 6.12 rules only): the BHB is cleared on VM exit only.</summary>
    VmexitOnly,
}

/// <summary><c>spec_store_bypass_disable=</c> / <c>nospec_store_bypass_disable</c> (<c>ssb_parse_cmdline()</c>).</summary>
public enum SsbCommand
{
    /// <summary><c>off</c>, <c>nospec_store_bypass_disable</c>, <c>mitigations=off</c>.</summary>
    None,
    /// <summary><c>auto</c>, absent or unknown.</summary>
    Auto,
    /// <summary><c>on</c>.</summary>
    On,
    /// <summary><c>prctl</c>.</summary>
    Prctl,
    /// <summary><c>seccomp</c>.</summary>
    Seccomp,
}

/// <summary>The <c>off</c>/<c>full</c>/<c>full,nosmt</c> options of <c>mds=</c>, <c>tsx_async_abort=</c>, <c>mmio_stale_data=</c>.</summary>
public enum VerwCommand
{
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>full</c> (the default).</summary>
    Full,
    /// <summary><c>full,nosmt</c>.</summary>
    FullNosmt,
}

/// <summary><c>l1tf=</c> (<c>l1tf_cmdline()</c>).</summary>
public enum L1tfCommand
{
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>flush,nowarn</c>.</summary>
    FlushNowarn,
    /// <summary><c>flush</c> (the default).</summary>
    Flush,
    /// <summary><c>flush,nosmt</c>.</summary>
    FlushNosmt,
    /// <summary><c>full</c>.</summary>
    Full,
    /// <summary><c>full,force</c>.</summary>
    FullForce,
}

/// <summary><c>indirect_target_selection=</c> (<c>its_parse_cmdline()</c>).</summary>
public enum ItsCommand
{
    /// <summary><c>off</c>.</summary>
    Off,
    /// <summary><c>on</c> (the default).</summary>
    On,
    /// <summary><c>force</c>: on, and the ITS bug forced.</summary>
    Force,
    /// <summary><c>vmexit</c>.</summary>
    Vmexit,
    /// <summary><c>stuff</c> (read by the 6.12 rules only): retpolines with call depth tracking.</summary>
    Stuff,
}

/// <summary><c>tsa=</c> (<c>tsa_parse_cmdline()</c>).</summary>
public enum TsaCommand
{
    /// <summary><c>off</c>.</summary>
    None,
    /// <summary><c>on</c> (the default).</summary>
    Full,
    /// <summary><c>user</c>.</summary>
    UserKernel,
    /// <summary><c>vm</c>.</summary>
    Vm,
}

/// <summary><c>vmscape=</c> (<c>vmscape_parse_cmdline()</c>).</summary>
public enum VmscapeCommand
{
    /// <summary><c>off</c>.</summary>
    None,
    /// <summary>The default (auto).</summary>
    Auto,
    /// <summary><c>ibpb</c>.</summary>
    IbpbExitToUser,
    /// <summary><c>force</c>: auto, and the VMSCAPE bug forced.</summary>
    Force,
}

/// <summary><c>pti=</c> / <c>nopti</c> (<c>pti_check_boottime_disable()</c>).</summary>
public enum PtiCommand
{
    /// <summary><c>pti=auto</c> or nothing: on with <c>cpu_meltdown</c>.</summary>
    Auto,
    /// <summary><c>pti=on</c>.</summary>
    On,
    /// <summary><c>pti=off</c>, <c>nopti</c>, <c>mitigations=off</c>.</summary>
    Off,
}

/// <summary><c>tsx=</c> (<c>tsx_init()</c>; only acted on with <c>MSR_TSX_CTRL</c>).</summary>
public enum TsxCommand
{
    /// <summary>Not given: the build's <c>CONFIG_X86_INTEL_TSX_MODE_*</c>.</summary>
    Default,
    /// <summary><c>on</c>.</summary>
    On,
    /// <summary><c>off</c>, or an invalid value ("defaulting to off").</summary>
    Off,
    /// <summary><c>auto</c>.</summary>
    Auto,
}

/// <summary>
/// A kernel command line read the way one kernel line reads it (<see cref="Rules"/>: Linux 6.1.176 by default, or
/// 6.12.118, <see cref="Parse(string, KernelBootRules)"/>), for every option that changes the text the kernel patches at
/// boot. Each line's derivation re-reads the text with its own rules (<see cref="For"/>), so one command line given for
/// an image is read as that image's kernel reads it. Three mechanisms, as in the kernel:
/// <list type="bullet">
/// <item><c>early_param()</c> handlers, run by <c>parse_early_param()</c> for each <c>name[=value]</c> before <c>--</c>
/// (names compared with <c>-</c> = <c>_</c>, <c>parameq()</c>; quotes as <c>next_arg()</c> strips them); each occurrence
/// runs the handler, so the last one it accepts wins.</item>
/// <item><c>__setup()</c> handlers, run for the arguments before <c>--</c> that no early handler took: the first
/// handler whose string is a prefix of <c>name=value</c> (<c>obsolete_checksetup()</c>).</item>
/// <item><c>cmdline_find_option()</c>/<c>cmdline_find_option_bool()</c> (arch/x86/lib/cmdline.c) on the whole
/// <c>boot_command_line</c>: exact bytes, no quotes, the value of the <b>last</b> <c>name=</c>, truncated to the
/// caller's buffer; a boolean option is a whole word.</item>
/// </list>
/// Options the kernel does not know are ignored, as it ignores them (<see cref="Unknown"/> lists them).
/// What 6.12.118 reads differently from 6.1.176: <c>retbleed=stuff</c> and <c>retbleed=force</c>,
/// <c>indirect_target_selection=stuff</c>, <c>spectre_bhi=vmexit</c>, and <c>pti=</c>/<c>nopti</c> as early parameters
/// (the last of them wins, with <c>-</c>/<c>_</c> and quotes as <c>parse_early_param()</c> reads them; 6.1 looks for
/// <c>pti=</c> first, then <c>nopti</c>, in the raw text); 6.1 ignores the values it does not know.
/// </summary>
public sealed class KernelCommandLine
{
    /// <summary>x86's <c>COMMAND_LINE_SIZE</c>: <c>boot_command_line</c> holds at most 2047 characters.</summary>
    public const int CommandLineSize = 2048;

    /// <summary>The empty command line (every default).</summary>
    public static KernelCommandLine Empty { get; } = Parse("");

    private KernelCommandLine(string text, KernelBootRules rules)
    {
        Text = text;
        Rules = rules;
    }

    /// <summary>The kernel line whose rules read this command line (<see cref="KernelBootRules.Linux61"/> for
    /// <see cref="Parse(string)"/>; 2.6.22 images are read with 6.1's rules).</summary>
    public KernelBootRules Rules { get; }

    /// <summary>The command line as the kernel holds it (<c>boot_command_line</c>, truncated to 2047 characters).</summary>
    public string Text { get; }

    /// <summary>The arguments before <c>--</c>, as <c>next_arg()</c> splits them (quotes removed).</summary>
    public ImmutableArray<(string Name, string? Value)> Arguments { get; private init; } = [];

    /// <summary>Arguments none of the options below reads (the kernel passes most of them to init or ignores them).</summary>
    public ImmutableArray<string> Unknown { get; private init; } = [];

    // ---- kernel/cpu.c, arch/x86/kernel/cpu/bugs.c, arch/x86/mm/pti.c, arch/x86/kernel/cpu/tsx.c

    /// <summary><c>mitigations=</c> (default auto).</summary>
    public MitigationsMode Mitigations { get; private init; } = MitigationsMode.Auto;

    /// <summary><c>nospectre_v1</c>.</summary>
    public bool NoSpectreV1 { get; private init; }

    /// <summary><c>spectre_v2=</c>, <c>nospectre_v2</c> (and <c>mitigations=off</c>): what <c>spectre_v2_parse_cmdline()</c>
    /// reads before it checks the CPU and the build.</summary>
    public SpectreV2Command SpectreV2 { get; private init; } = SpectreV2Command.Auto;

    /// <summary><c>spectre_v2_user=</c> (read only when <see cref="SpectreV2"/> is neither Off nor On).</summary>
    public SpectreV2UserCommand SpectreV2User { get; private init; } = SpectreV2UserCommand.Auto;

    /// <summary><c>spectre_bhi=</c>: null for the build's default (on with CONFIG_MITIGATION_SPECTRE_BHI).</summary>
    public BhiCommand? SpectreBhi { get; private init; }

    /// <summary><c>retbleed=</c>.</summary>
    public RetbleedCommand Retbleed { get; private init; } = RetbleedCommand.Auto;

    /// <summary><c>retbleed=…,nosmt</c>.</summary>
    public bool RetbleedNosmt { get; private init; }

    /// <summary><c>retbleed=…,force</c> (6.12 rules): <c>setup_force_cpu_bug(X86_BUG_RETBLEED)</c>.</summary>
    public bool RetbleedForce { get; private init; }

    /// <summary><c>spec_rstack_overflow=</c>.</summary>
    public SrsoCommand Srso { get; private init; } = SrsoCommand.SafeRet;

    /// <summary><c>spec_store_bypass_disable=</c>, <c>nospec_store_bypass_disable</c>.</summary>
    public SsbCommand Ssb { get; private init; } = SsbCommand.Auto;

    /// <summary><c>l1tf=</c>.</summary>
    public L1tfCommand L1tf { get; private init; } = L1tfCommand.Flush;

    /// <summary><c>l1d_flush=on</c>.</summary>
    public bool L1dFlush { get; private init; }

    /// <summary><c>mds=</c>.</summary>
    public VerwCommand Mds { get; private init; } = VerwCommand.Full;

    /// <summary><c>tsx_async_abort=</c>.</summary>
    public VerwCommand Taa { get; private init; } = VerwCommand.Full;

    /// <summary><c>mmio_stale_data=</c>.</summary>
    public VerwCommand Mmio { get; private init; } = VerwCommand.Full;

    /// <summary><c>reg_file_data_sampling=</c>: false for off, true for on, null for the build's default (on with
    /// CONFIG_MITIGATION_RFDS).</summary>
    public bool? Rfds { get; private init; }

    /// <summary><c>srbds=off</c>.</summary>
    public bool SrbdsOff { get; private init; }

    /// <summary><c>gather_data_sampling=</c>: false for off, true for force, null for the default.</summary>
    public bool? Gds { get; private init; }

    /// <summary><c>indirect_target_selection=</c>.</summary>
    public ItsCommand Its { get; private init; } = ItsCommand.On;

    /// <summary><c>tsa=</c>: null for the build's default (on with CONFIG_MITIGATION_TSA).</summary>
    public TsaCommand? Tsa { get; private init; }

    /// <summary><c>vmscape=</c>: null for the build's default (auto with CONFIG_MITIGATION_VMSCAPE).</summary>
    public VmscapeCommand? Vmscape { get; private init; }

    /// <summary><c>pti=</c>, <c>nopti</c>, <c>mitigations=off</c>.</summary>
    public PtiCommand Pti { get; private init; } = PtiCommand.Auto;

    /// <summary><c>tsx=</c>.</summary>
    public TsxCommand Tsx { get; private init; } = TsxCommand.Default;

    /// <summary><c>nosmt</c> (<c>cpu_smt_disable(false)</c>) or <c>nosmt=force</c>: null when absent.</summary>
    public bool? NoSmtForce { get; private init; }

    // ---- CPU features cleared (arch/x86/kernel/cpu/common.c)

    /// <summary>Features the command line clears, as names the kernel uses: <c>clearcpuid=</c> names (cpuinfo names; its
    /// numbers are <see cref="ClearCpuIdNumbers"/>) and the <c>no…</c> options as their feature's cpuinfo name
    /// (<c>noxsave</c> → xsave, <c>noxsaveopt</c> → xsaveopt, <c>noxsaves</c> → xsaves, <c>nopcid</c> → pcid, <c>noinvpcid</c> →
    /// invpcid, <c>nofsgsbase</c> → fsgsbase). i386's <c>no387</c> and <c>nofxsr</c> are <see cref="No387"/> and <see cref="NoFxsr"/>.</summary>
    public ImmutableArray<string> ClearedFeatures { get; private init; } = [];

    /// <summary><c>no387</c> (i386 only, and only with CONFIG_MATH_EMULATION: clears FPU).</summary>
    public bool No387 { get; private init; }

    /// <summary><c>nofxsr</c> (i386 only: clears FXSR).</summary>
    public bool NoFxsr { get; private init; }

    /// <summary>The numbers of <c>clearcpuid=</c> (bits below NCAPINTS*32 are cleared; others ignored).</summary>
    public ImmutableArray<int> ClearCpuIdNumbers { get; private init; } = [];

    /// <summary><c>nopku</c>: OSPKE not set (PKU stays).</summary>
    public bool NoPku { get; private init; }

    // ---- SMP (init/main.c, kernel/smp.c, arch/x86/kernel/smpboot.c, arch/x86/kernel/alternative.c)

    /// <summary><c>noreplace-smp</c>: no switch to UP lock prefixes.</summary>
    public bool NoReplaceSmp { get; private init; }

    /// <summary><c>setup_max_cpus</c> from <c>nosmp</c> (0) or <c>maxcpus=</c>; null when neither (NR_CPUS).</summary>
    public int? MaxCpus { get; private init; }

    /// <summary><c>nr_cpus=</c> (a positive value).</summary>
    public int? NrCpus { get; private init; }

    /// <summary><c>possible_cpus=</c>.</summary>
    public int? PossibleCpus { get; private init; }

    // ---- PREEMPT_DYNAMIC, ftrace

    /// <summary><c>preempt=</c>: the last mode named (an unknown name is ignored, "Dynamic Preempt: unsupported mode");
    /// null when none. Which modes a build accepts depends on it (<c>lazy</c> and <c>laziest</c> only with the lazy
    /// preemption patches, <c>none</c> and <c>voluntary</c> not with <c>PREEMPT_RT</c> then): the pass takes the last
    /// of <see cref="PreemptRequests"/> that the image's <c>sched_dynamic_mode()</c> accepts.</summary>
    public PreemptMode? Preempt { get; private init; }

    /// <summary>Every <c>preempt=</c> with a mode name, in order (<c>setup_preempt_mode()</c> runs for each).</summary>
    public ImmutableArray<PreemptMode> PreemptRequests { get; private init; } = [];

    /// <summary><c>ftrace=</c>: the boot tracer's name, or null.</summary>
    public string? Ftrace { get; private init; }

    /// <summary><c>ftrace_filter=</c>, <c>ftrace_notrace=</c>, <c>ftrace_graph_filter=</c>, <c>ftrace_graph_notrace=</c> given
    /// (name=value each; they select the functions a boot tracer traces).</summary>
    public ImmutableArray<string> FtraceFilters { get; private init; } = [];

    // ------------------------------------------------------------------ parsing

    /// <summary>Reads a command line as Linux 6.1 reads it (e.g. the text of <c>/proc/cmdline</c>; a trailing newline is
    /// ignored). A line's derivation re-reads it with its own rules (<see cref="For"/>).</summary>
    /// <param name="text">The command line.</param>
    public static KernelCommandLine Parse(string text) => Parse(text, KernelBootRules.Linux61);

    /// <summary>Reads a command line as the kernel line <paramref name="rules"/> reads it (2.6.22: as 6.1).</summary>
    /// <param name="text">The command line (a trailing newline is ignored).</param>
    /// <param name="rules">The kernel line.</param>
    public static KernelCommandLine Parse(string text, KernelBootRules rules)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = text.TrimEnd('\n', '\r');
        if (text.Length > CommandLineSize - 1)
            text = text[..(CommandLineSize - 1)];
        var args = NextArgs(text);
        var p = new Builder(text, args, rules == KernelBootRules.Linux612 ? KernelBootRules.Linux612 : KernelBootRules.Linux61);
        return p.Build();
    }

    /// <summary>This command line as the kernel line <paramref name="rules"/> reads it: itself when it was read with
    /// those rules, else its <see cref="Text"/> read again.</summary>
    /// <param name="rules">The kernel line.</param>
    public KernelCommandLine For(KernelBootRules rules)
    {
        var r = rules == KernelBootRules.Linux612 ? KernelBootRules.Linux612 : KernelBootRules.Linux61;
        return r == Rules ? this : Parse(Text, r);
    }

    /// <summary><c>next_arg()</c> over the whole text; stops at <c>--</c> as <c>parse_args()</c> does.</summary>
    private static ImmutableArray<(string Name, string? Value)> NextArgs(string s)
    {
        var list = ImmutableArray.CreateBuilder<(string, string?)>();
        int pos = 0;
        while (true)
        {
            while (pos < s.Length && char.IsWhiteSpace(s[pos]))
                pos++;                                          // skip_spaces
            if (pos >= s.Length)
                break;
            bool quoted = false, inQuote = false;
            if (s[pos] == '"')
            {
                pos++;
                inQuote = quoted = true;
            }
            int start = pos, i = 0, equals = 0;
            for (; pos + i < s.Length; i++)
            {
                char c = s[pos + i];
                if (char.IsWhiteSpace(c) && !inQuote)
                    break;
                if (equals == 0 && c == '=')
                    equals = i;
                if (c == '"')
                    inQuote = !inQuote;
            }
            string word = s.Substring(start, i);
            string name;
            string? value = null;
            if (equals == 0)
                name = word;
            else
            {
                name = word[..equals];
                value = word[(equals + 1)..];
                if (value.StartsWith('"'))
                {
                    value = value[1..];
                    if (value.EndsWith('"'))
                        value = value[..^1];
                }
            }
            if (quoted && i > 0 && word.EndsWith('"'))
            {
                if (value is null)
                    name = name[..^1];
                else if (value.EndsWith('"'))
                    value = value[..^1];
            }
            pos += i;
            if (value is null && name == "--")
                break;
            list.Add((name, value));
        }
        return list.ToImmutable();
    }

    /// <summary><c>parameq()</c>/<c>parameqn()</c>: <c>-</c> and <c>_</c> are the same.</summary>
    private static bool ParamEq(string a, string b, int n)
    {
        if (a.Length < n || b.Length < n)
            return false;
        for (int i = 0; i < n; i++)
        {
            char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
            if (x != y)
                return false;
        }
        return true;
    }

    /// <summary>x86 <c>cmdline_find_option_bool()</c>: whether <paramref name="option"/> is a whole word of <paramref name="text"/>.</summary>
    public static bool FindOptionBool(string text, string option)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(option);
        foreach (var word in text.Split(IsSpaceChars, StringSplitOptions.RemoveEmptyEntries))
        {
            if (word == option)
                return true;
        }
        return false;
    }

    /// <summary>x86 <c>cmdline_find_option()</c>: the value of the last word <c><paramref name="option"/>=value</c> of
    /// <paramref name="text"/>, at most <paramref name="bufferSize"/> − 1 characters (the kernel's buffer); null when
    /// there is none. The returned length is the full value's (as the kernel's return value).</summary>
    public static (string Value, int Length)? FindOption(string text, string option, int bufferSize)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(option);
        (string, int)? found = null;
        foreach (var word in text.Split(IsSpaceChars, StringSplitOptions.RemoveEmptyEntries))
        {
            if (word.Length > option.Length && word[option.Length] == '=' && word.StartsWith(option, StringComparison.Ordinal))
            {
                string v = word[(option.Length + 1)..];
                found = (v.Length < bufferSize ? v : v[..(bufferSize - 1)], v.Length);
            }
        }
        return found;
    }

    /// <summary><c>myisspace()</c>: every character up to and including the space.</summary>
    private static readonly char[] IsSpaceChars = [.. Enumerable.Range(1, 32).Select(c => (char)c)];

    /// <summary><c>match_option()</c>: the argument (its full length as cmdline_find_option() returned it) is exactly <paramref name="option"/>.</summary>
    private static bool MatchOption((string Value, int Length) arg, string option) =>
        arg.Length == option.Length && arg.Value.StartsWith(option, StringComparison.Ordinal);

    private sealed class Builder(string text, ImmutableArray<(string Name, string? Value)> args, KernelBootRules rules)
    {
        /// <summary>Whether the 6.12 rules read the command line.</summary>
        private readonly bool l612 = rules == KernelBootRules.Linux612;

        private readonly HashSet<int> used = [];

        /// <summary>The values of every occurrence of an early param, in order (<c>do_early_param()</c>).</summary>
        private List<string?> Early(string name)
        {
            var list = new List<string?>();
            for (int i = 0; i < args.Length; i++)
            {
                if (ParamEq(args[i].Name, name, Math.Max(args[i].Name.Length, name.Length)) && args[i].Name.Length == name.Length)
                {
                    list.Add(args[i].Value);
                    used.Add(i);
                }
            }
            return list;
        }

        /// <summary>The arguments a <c>__setup(str)</c> handler gets (<c>line + strlen(str)</c>), in order.</summary>
        private List<string> Setup(string str)
        {
            var list = new List<string>();
            for (int i = 0; i < args.Length; i++)
            {
                string line = args[i].Value is null ? args[i].Name : args[i].Name + "=" + args[i].Value;
                if (ParamEq(line, str, str.Length))
                {
                    list.Add(line[str.Length..]);
                    used.Add(i);
                }
            }
            return list;
        }

        private void Mark(string name)
        {
            for (int i = 0; i < args.Length; i++)
            {
                if (args[i].Name == name)
                    used.Add(i);
            }
        }

        /// <summary>Runs a handler over each occurrence: the last value it maps to something wins.</summary>
        private static T Fold<T>(IEnumerable<string?> values, T initial, Func<string?, T?> map) where T : struct
        {
            T r = initial;
            foreach (var v in values)
            {
                if (map(v) is { } x)
                    r = x;
            }
            return r;
        }

        private static T? FoldNullable<T>(IEnumerable<string?> values, Func<string?, T?> map) where T : struct
        {
            T? r = null;
            foreach (var v in values)
            {
                if (map(v) is { } x)
                    r = x;
            }
            return r;
        }

        private static VerwCommand? Verw(string? v) => v switch
        {
            "off" => VerwCommand.Off,
            "full" => VerwCommand.Full,
            "full,nosmt" => VerwCommand.FullNosmt,
            _ => null,
        };

        private (string Value, int Length)? Find(string option, int size)
        {
            Mark(option);
            return FindOption(text, option, size);
        }

        private bool FindBool(string option)
        {
            Mark(option);
            return FindOptionBool(text, option);
        }

        public KernelCommandLine Build()
        {
            var mitigations = Fold(Early("mitigations"), MitigationsMode.Auto, v => v switch
            {
                "off" => MitigationsMode.Off,
                "auto" => MitigationsMode.Auto,
                "auto,nosmt" => MitigationsMode.AutoNosmt,
                _ => (MitigationsMode?)null,                   // "Unsupported mitigations=…"
            });
            bool off = mitigations == MitigationsMode.Off;

            // spectre_v2_parse_cmdline(): char arg[20]
            var v2 = SpectreV2Command.Auto;
            if (FindBool("nospectre_v2") | off)
                v2 = SpectreV2Command.Off;
            else if (Find("spectre_v2", 20) is { } a)
            {
                (string Option, SpectreV2Command Cmd)[] table =
                [
                    ("off", SpectreV2Command.Off), ("on", SpectreV2Command.On), ("retpoline", SpectreV2Command.Retpoline),
                    ("retpoline,amd", SpectreV2Command.RetpolineLfence), ("retpoline,lfence", SpectreV2Command.RetpolineLfence),
                    ("retpoline,generic", SpectreV2Command.RetpolineGeneric), ("eibrs", SpectreV2Command.Eibrs),
                    ("eibrs,lfence", SpectreV2Command.EibrsLfence), ("eibrs,retpoline", SpectreV2Command.EibrsRetpoline),
                    ("auto", SpectreV2Command.Auto), ("ibrs", SpectreV2Command.Ibrs),
                ];
                v2 = table.FirstOrDefault(t => MatchOption(a, t.Option)) is { Option: not null } hit ? hit.Cmd : SpectreV2Command.Auto;
            }
            var v2user = SpectreV2UserCommand.Auto;
            if (Find("spectre_v2_user", 20) is { } u)
            {
                (string Option, SpectreV2UserCommand Cmd)[] table =
                [
                    ("auto", SpectreV2UserCommand.Auto), ("off", SpectreV2UserCommand.None), ("on", SpectreV2UserCommand.Force),
                    ("prctl", SpectreV2UserCommand.Prctl), ("prctl,ibpb", SpectreV2UserCommand.PrctlIbpb),
                    ("seccomp", SpectreV2UserCommand.Seccomp), ("seccomp,ibpb", SpectreV2UserCommand.SeccompIbpb),
                ];
                v2user = table.FirstOrDefault(t => MatchOption(u, t.Option)) is { Option: not null } hit ? hit.Cmd : SpectreV2UserCommand.Auto;
            }

            var ssb = SsbCommand.Auto;
            if (FindBool("nospec_store_bypass_disable") | off)
                ssb = SsbCommand.None;
            else if (Find("spec_store_bypass_disable", 20) is { } s)
            {
                (string Option, SsbCommand Cmd)[] table =
                [
                    ("auto", SsbCommand.Auto), ("on", SsbCommand.On), ("off", SsbCommand.None),
                    ("prctl", SsbCommand.Prctl), ("seccomp", SsbCommand.Seccomp),
                ];
                ssb = table.FirstOrDefault(t => MatchOption(s, t.Option)) is { Option: not null } hit ? hit.Cmd : SsbCommand.Auto;
            }

            var pti = l612 ? Pti612(off) : Pti61(off);

            // tsx_init(): char arg[5]
            var tsx = TsxCommand.Default;
            if (Find("tsx", 5) is { } t)
                tsx = t.Value switch { "on" => TsxCommand.On, "off" => TsxCommand.Off, "auto" => TsxCommand.Auto, _ => TsxCommand.Off };

            // retbleed=a,b,c: each comma part
            bool retbleedNosmt = false, retbleedForce = false;
            var retbleed = RetbleedCommand.Auto;
            foreach (var v in Early("retbleed"))
            {
                if (v is null)
                    continue;
                foreach (var part in v.Split(','))
                {
                    switch (part)
                    {
                        case "off": retbleed = RetbleedCommand.Off; break;
                        case "auto": retbleed = RetbleedCommand.Auto; break;
                        case "unret": retbleed = RetbleedCommand.Unret; break;
                        case "ibpb": retbleed = RetbleedCommand.Ibpb; break;
                        case "stuff" when l612: retbleed = RetbleedCommand.Stuff; break;
                        case "nosmt": retbleedNosmt = true; break;
                        case "force" when l612: retbleedForce = true; break;
                    }
                }
            }

            // clearcpuid= (char arg[128]) and the no… options (cpu_parse_early_param(), early params, __setup)
            var cleared = ImmutableArray.CreateBuilder<string>();
            var numbers = ImmutableArray.CreateBuilder<int>();
            if (FindBool("noxsave")) cleared.Add("xsave");
            if (FindBool("noxsaveopt")) cleared.Add("xsaveopt");
            if (FindBool("noxsaves")) cleared.Add("xsaves");
            bool no387 = FindBool("no387");                  // i386 with CONFIG_MATH_EMULATION only
            bool nofxsr = FindBool("nofxsr");                // i386 only
            if (Find("clearcpuid", 128) is { Length: > 0 } cc)
            {
                foreach (var opt in cc.Value.Split(','))
                {
                    if (uint.TryParse(opt, NumberStyles.None, CultureInfo.InvariantCulture, out uint bit))
                        numbers.Add((int)Math.Min(bit, int.MaxValue));
                    else if (opt.Length > 0)
                        cleared.Add(opt);
                }
            }
            Setup("clearcpuid=");
            if (Early("nopcid").Any(v => v is null)) cleared.Add("pcid");           // "nopcid doesn't accept parameters"
            if (Early("noinvpcid").Any(v => v is null)) cleared.Add("invpcid");
            if (Setup("nofsgsbase").Any(rest => rest.Length == 0)) cleared.Add("fsgsbase");   // "Require an exact match"
            bool nopku = Setup("nopku").Count > 0;

            int? maxCpus = null;
            foreach (var (name, value) in args)
            {
                if (ParamEq(name, "nosmp", 5) && name.Length == 5)
                    maxCpus = 0;
                else if (ParamEq(name, "maxcpus", 7) && name.Length == 7)
                    maxCpus = GetOption(value) ?? maxCpus;       // get_option(): leaves it when no number
            }
            Early("nosmp");
            Early("maxcpus");
            int? nrCpus = FoldNullable<int>(Early("nr_cpus"), v => GetOption(v) is > 0 and var n ? n : null);
            int? possible = FoldNullable<int>(Early("possible_cpus"), v => GetOption(v));

            var preemptRequests = Setup("preempt=").Select(v => v switch
            {
                "none" => PreemptMode.None,
                "voluntary" => PreemptMode.Voluntary,
                "full" => PreemptMode.Full,
                "lazy" when l612 => PreemptMode.Lazy,
                "laziest" when l612 => PreemptMode.Laziest,
                _ => (PreemptMode?)null,
            }).OfType<PreemptMode>().ToImmutableArray();
            PreemptMode? preempt = preemptRequests.IsEmpty ? null : preemptRequests[^1];
            string? ftrace = null;
            foreach (var v in Setup("ftrace="))
                ftrace = v.Length > 0 ? v : ftrace;
            var filters = ImmutableArray.CreateBuilder<string>();
            foreach (var f in new[] { "ftrace_filter=", "ftrace_notrace=", "ftrace_graph_filter=", "ftrace_graph_notrace=" })
            {
                foreach (var v in Setup(f))
                    filters.Add(f + v);
            }

            var result = new KernelCommandLine(text, rules)
            {
                Arguments = args,
                Mitigations = mitigations,
                NoSpectreV1 = Early("nospectre_v1").Count > 0,
                SpectreV2 = v2,
                SpectreV2User = v2user,
                SpectreBhi = FoldNullable(Early("spectre_bhi"), v => v switch
                {
                    "off" => BhiCommand.Off,
                    "on" => BhiCommand.On,
                    "vmexit" when l612 => BhiCommand.VmexitOnly,
                    _ => (BhiCommand?)null,
                }),
                Retbleed = retbleed,
                RetbleedNosmt = retbleedNosmt,
                RetbleedForce = retbleedForce,
                Srso = Fold(Early("spec_rstack_overflow"), SrsoCommand.SafeRet, v => v switch
                {
                    "off" => SrsoCommand.Off,
                    "microcode" => SrsoCommand.Microcode,
                    "safe-ret" => SrsoCommand.SafeRet,
                    "ibpb" => SrsoCommand.Ibpb,
                    "ibpb-vmexit" => SrsoCommand.IbpbOnVmexit,
                    _ => (SrsoCommand?)null,
                }),
                Ssb = ssb,
                L1tf = Fold(Early("l1tf"), L1tfCommand.Flush, v => v switch
                {
                    "off" => L1tfCommand.Off,
                    "flush,nowarn" => L1tfCommand.FlushNowarn,
                    "flush" => L1tfCommand.Flush,
                    "flush,nosmt" => L1tfCommand.FlushNosmt,
                    "full" => L1tfCommand.Full,
                    "full,force" => L1tfCommand.FullForce,
                    _ => (L1tfCommand?)null,
                }),
                L1dFlush = Fold(Early("l1d_flush"), false, v => v == "on" ? true : (bool?)null),
                Mds = Fold(Early("mds"), VerwCommand.Full, Verw),
                Taa = Fold(Early("tsx_async_abort"), VerwCommand.Full, Verw),
                Mmio = Fold(Early("mmio_stale_data"), VerwCommand.Full, Verw),
                Rfds = FoldNullable(Early("reg_file_data_sampling"), v => v switch { "off" => false, "on" => true, _ => (bool?)null }),
                SrbdsOff = Fold(Early("srbds"), false, v => v is null ? null : v == "off"),
                Gds = FoldNullable(Early("gather_data_sampling"), v => v switch { "off" => false, "force" => true, _ => (bool?)null }),
                Its = Fold(Early("indirect_target_selection"), ItsCommand.On, v => v switch
                {
                    "off" => ItsCommand.Off,
                    "on" => ItsCommand.On,
                    "force" => ItsCommand.Force,
                    "vmexit" => ItsCommand.Vmexit,
                    "stuff" when l612 => ItsCommand.Stuff,
                    _ => (ItsCommand?)null,
                }),
                Tsa = FoldNullable(Early("tsa"), v => v switch
                {
                    "off" => TsaCommand.None,
                    "on" => TsaCommand.Full,
                    "user" => TsaCommand.UserKernel,
                    "vm" => TsaCommand.Vm,
                    _ => (TsaCommand?)null,
                }),
                Vmscape = FoldNullable(Early("vmscape"), v => v switch
                {
                    "off" => VmscapeCommand.None,
                    "ibpb" => VmscapeCommand.IbpbExitToUser,
                    "force" => VmscapeCommand.Force,
                    _ => (VmscapeCommand?)null,
                }),
                Pti = pti,
                Tsx = tsx,
                NoSmtForce = FoldNullable<bool>(Early("nosmt"), v => v == "force"),
                ClearedFeatures = cleared.ToImmutable(),
                No387 = no387,
                NoFxsr = nofxsr,
                ClearCpuIdNumbers = numbers.ToImmutable(),
                NoPku = nopku,
                NoReplaceSmp = Setup("noreplace-smp").Count > 0,
                MaxCpus = maxCpus,
                NrCpus = nrCpus,
                PossibleCpus = possible,
                Preempt = preempt,
                PreemptRequests = preemptRequests,
                Ftrace = ftrace,
                FtraceFilters = filters.ToImmutable(),
                Unknown = UnknownArguments(),   // last: every reader above has marked what it read
            };
            return result;
        }

        /// <summary>6.1's <c>pti_check_boottime_disable()</c>: <c>cmdline_find_option("pti")</c> into <c>char arg[5]</c>
        /// first (the last <c>pti=</c> of the raw text), then <c>nopti</c> as a whole word or <c>mitigations=off</c>.</summary>
        private PtiCommand Pti61(bool off)
        {
            var p = Find("pti", 5);
            if (p is { Length: 3, Value: "off" })
                return PtiCommand.Off;
            if (p is { Length: 2, Value: "on" })
                return PtiCommand.On;
            if (p is { Length: 4, Value: "auto" })
                return PtiCommand.Auto;
            return FindBool("nopti") | off ? PtiCommand.Off : PtiCommand.Auto;
        }

        /// <summary>6.12's <c>early_param("pti")</c> and <c>early_param("nopti")</c>: each occurrence runs its handler in
        /// order (<c>pti=</c> with a value other than off/on/auto is refused and changes nothing; <c>nopti</c> with or without
        /// a value is FORCE_OFF), then <c>pti_check_boottime_disable()</c> turns <c>mitigations=off</c> into FORCE_OFF.</summary>
        private PtiCommand Pti612(bool off)
        {
            var mode = PtiCommand.Auto;
            for (int i = 0; i < args.Length; i++)
            {
                var (name, value) = args[i];
                if (IsEarly(name, "pti"))
                {
                    used.Add(i);
                    mode = value switch { "off" => PtiCommand.Off, "on" => PtiCommand.On, "auto" => PtiCommand.Auto, _ => mode };
                }
                else if (IsEarly(name, "nopti"))
                {
                    used.Add(i);
                    mode = PtiCommand.Off;
                }
            }
            return off ? PtiCommand.Off : mode;
        }

        private static bool IsEarly(string name, string param) => name.Length == param.Length && ParamEq(name, param, param.Length);

        /// <summary><c>get_option()</c>: a leading (signed, base-detecting) integer, or null.</summary>
        private static int? GetOption(string? v)
        {
            if (string.IsNullOrEmpty(v))
                return null;
            int i = 0;
            bool neg = false;
            if (v[0] == '-')
            {
                neg = true;
                i = 1;
            }
            long n = 0;
            int digits = 0;
            int radix = 10;
            if (i + 1 < v.Length && v[i] == '0' && (v[i + 1] == 'x' || v[i + 1] == 'X'))
            {
                radix = 16;
                i += 2;
            }
            else if (i < v.Length && v[i] == '0' && i + 1 < v.Length)
                radix = 8;
            for (; i < v.Length; i++, digits++)
            {
                int d = Uri.IsHexDigit(v[i]) ? Convert.ToInt32(v[i].ToString(), 16) : 99;
                if (d >= radix)
                    break;
                n = Math.Min(n * radix + d, int.MaxValue);
            }
            if (digits == 0 && radix != 8)
                return null;
            return (int)(neg ? -n : n);
        }

        public ImmutableArray<string> UnknownArguments() =>
            [.. args.Select((a, i) => (a, i)).Where(x => !used.Contains(x.i)).Select(x => x.a.Value is null ? x.a.Name : x.a.Name + "=" + x.a.Value)];
    }

    /// <summary>The command line as it was given (<see cref="Text"/>).</summary>
    public override string ToString() => Text;
}
