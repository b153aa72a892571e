using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Altpatch.Cpu;
using Altpatch.Images.Boot;

namespace Altpatch.Cli.Commands;

/// <summary>
/// The options that describe the machine a kernel boots on, shared by <c>kernel patch</c> and <c>kernel verify</c>:
/// <c>--cpuinfo FILE | --flags LIST [--bugs LIST] [--vendor …] [--family N] [--model N] [--stepping N]</c>, <c>--set</c>,
/// <c>--clear</c>, <c>--smp</c>, <c>--hypervisor</c>, <c>--symbols</c>, <c>--kvm-features</c>, <c>--arch-capabilities</c>,
/// <c>--exact</c>; their checks, and the <see cref="KernelCpuDescription"/> they give.
/// </summary>
internal sealed class KernelCpuOptions
{
    public Option<FileInfo?> CpuInfo { get; } = new("--cpuinfo") { Description = "A /proc/cpuinfo of the target machine: vendor_id, cpu family, model, stepping, flags and bugs of the first processor; the processor count is the default --smp." };
    public Option<string[]> Flags { get; } = new("--flags") { Description = "CPU feature names instead of --cpuinfo (cpuinfo names, X86_FEATURE_ macros or word*32+bit; comma- or space-separated; repeatable).", AllowMultipleArgumentsPerToken = true };
    public Option<string[]> Bugs { get; } = new("--bugs") { Description = "CPU bug names with --flags (cpu_meltdown, spectre_v2, … or X86_BUG_ macros).", AllowMultipleArgumentsPerToken = true };
    public Option<string?> Vendor { get; } = new("--vendor") { Description = "With --flags: the vendor (GenuineIntel, AuthenticAMD, HygonGenuine, … or intel, amd, hygon, centaur, zhaoxin)." };
    public Option<int?> Family { get; } = new("--family") { Description = "With --flags: the CPU family (decimal, as /proc/cpuinfo shows it)." };
    public Option<int?> Model { get; } = new("--model") { Description = "With --flags: the model (decimal)." };
    public Option<int?> Stepping { get; } = new("--stepping") { Description = "With --flags: the stepping." };
    public Option<string[]> Set { get; } = new("--set") { Description = "Set a feature after the derivation (repeatable; any name form; hidden features by X86_FEATURE_ macro)." };
    public Option<string[]> Clear { get; } = new("--clear") { Description = "Clear a feature after the derivation (repeatable; applied after --set)." };
    public Option<int?> Smp { get; } = new("--smp") { Description = "Number of CPUs (present = possible). 1 switches the SMP lock prefixes to UP as the kernel does. Default: the --cpuinfo processor count, else 2." };
    public Option<string> Hypervisor { get; } = new("--hypervisor") { Description = "The hypervisor the kernel detects: none (bare metal, and QEMU TCG) or kvm. Default: none.", DefaultValueFactory = _ => "none" };
    public Option<FileInfo?> Symbols { get; } = new("--symbols") { Description = "A System.map or /proc/kallsyms of the same build: with --hypervisor kvm, the addresses of the KVM functions kvm_guest_init() puts into pv_ops." };
    public Option<string[]> KvmFeatures { get; } = new("--kvm-features") { Description = "With --hypervisor kvm: the KVM paravirtual features of the host: nopiodelay, steal_time, pv_unhalt, pv_tlb_flush, realtime (hint), or none. Default: nopiodelay,steal_time (QEMU's defaults).", AllowMultipleArgumentsPerToken = true };
    public Option<string?> ArchCapabilities { get; } = new("--arch-capabilities") { Description = "The target's MSR_IA32_ARCH_CAPABILITIES (0x10a) value in hex (rdmsr 0x10a); /proc/cpuinfo does not show it. Default: 0, as under QEMU TCG." };
    public Option<bool> Exact { get; } = new("--exact") { Description = "Take the given features as the kernel's final capability words (no derivation of hidden bits or mitigations)." };

    private IEnumerable<Option> All => [CpuInfo, Flags, Bugs, Vendor, Family, Model, Stepping, Set, Clear, Smp, Hypervisor, Symbols, KvmFeatures, ArchCapabilities, Exact];

    /// <summary>Adds the options and their checks to <paramref name="cmd"/>.</summary>
    /// <param name="cmd">The command.</param>
    /// <param name="cpuRequired">Whether this parse must describe the CPU (--cpuinfo or --flags); <c>kernel verify --live</c>
    /// reads /proc/cpuinfo instead.</param>
    public void AddTo(Command cmd, Func<CommandResult, bool> cpuRequired)
    {
        Hypervisor.AcceptOnlyFromAmong("none", "kvm");
        foreach (var o in All)
            cmd.Options.Add(o);
        // The validators read the int options' tokens or presence, never GetValue: on "--smp abc" GetValue throws
        // (a crash with a stack trace) instead of leaving the parser's "Cannot parse argument 'abc'" error.
        Smp.Validators.Add(r =>
        {
            if (r.Tokens is [var t] && int.TryParse(t.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n < 1)
                r.AddError("--smp must be at least 1");
        });
        cmd.Validators.Add(r =>
        {
            bool hasCpuinfo = r.GetValue(CpuInfo) is not null;
            bool hasFlags = (r.GetValue(Flags)?.Length ?? 0) > 0;
            if (hasCpuinfo && hasFlags)
                r.AddError("give the CPU with either --cpuinfo FILE or --flags LIST");
            else if (!hasCpuinfo && !hasFlags && cpuRequired(r))
                r.AddError("give the CPU with either --cpuinfo FILE or --flags LIST");
            else if (hasFlags && !Split(r.GetValue(Flags) ?? []).Any())
                r.AddError("--flags names no feature");
            if (hasCpuinfo && ((r.GetValue(Bugs)?.Length ?? 0) > 0 || r.GetValue(Vendor) is not null || r.GetResult(Family) is not null
                               || r.GetResult(Model) is not null || r.GetResult(Stepping) is not null))
                r.AddError("--bugs, --vendor, --family, --model and --stepping go with --flags, not with --cpuinfo");
            if ((r.GetValue(KvmFeatures)?.Length ?? 0) > 0 && r.GetValue(Hypervisor) != "kvm")
                r.AddError("--kvm-features goes with --hypervisor kvm");
        });
    }

    /// <summary>Whether the parse describes the CPU itself (--cpuinfo or --flags).</summary>
    public bool Given(ParseResult parse) => parse.GetValue(CpuInfo) is not null || (parse.GetValue(Flags)?.Length ?? 0) > 0;

    /// <summary>The machine the options describe; with neither --cpuinfo nor --flags, the CPU of <paramref name="cpuInfoText"/>
    /// (a /proc/cpuinfo read by the caller, named <paramref name="cpuInfoName"/>).</summary>
    /// <exception cref="CpuFeatureException">A name, number or file is not valid.</exception>
    /// <exception cref="FileNotFoundException">--cpuinfo or --symbols names no file.</exception>
    public KernelCpuDescription Describe(ParseResult parse, string? cpuInfoText = null, string? cpuInfoName = null)
    {
        KernelCpuDescription d;
        var flags = parse.GetValue(Flags) ?? [];
        if (parse.GetValue(CpuInfo) is { } file)
        {
            if (!file.Exists)
                throw new FileNotFoundException($"{file.FullName}: no such file");
            d = FromCpuInfo(Terminal.ReadInputText(file.FullName), file.FullName);
        }
        else if (flags.Length > 0)
        {
            var names = Split(flags).Concat(Split(parse.GetValue(Bugs) ?? [])).ToList();
            var v = parse.GetValue(Vendor) is { } vendor ? ParseVendor(vendor) : CpuVendor.Unknown;
            var cpu = CpuFeatures.FromNames(names, v, parse.GetValue(Family) ?? 0, parse.GetValue(Model) ?? 0, parse.GetValue(Stepping) ?? 0);
            d = new KernelCpuDescription { Cpu = cpu };
        }
        else if (cpuInfoText is not null)
            d = FromCpuInfo(cpuInfoText, cpuInfoName ?? "cpuinfo");
        else
            throw new CpuFeatureException("give the CPU with either --cpuinfo FILE or --flags LIST");

        IReadOnlyDictionary<string, ulong>? symbols = null;
        if (parse.GetValue(Symbols) is { } sf)
        {
            if (!sf.Exists)
                throw new FileNotFoundException($"{sf.FullName}: no such file");
            symbols = KvmGuest.ReadSymbols(Terminal.ReadInputText(sf.FullName));
        }
        var kvm = parse.GetValue(KvmFeatures) ?? [];
        var archCap = parse.GetValue(ArchCapabilities);
        return d with
        {
            Cpus = parse.GetValue(Smp) ?? d.Cpus,
            Hypervisor = parse.GetValue(Hypervisor) == "kvm" ? KernelHypervisor.Kvm : KernelHypervisor.None,
            Symbols = symbols,
            KvmFeatures = kvm.Length == 0 ? KvmGuest.QemuDefaults : KvmGuest.ParseFeatures(Split(kvm)),
            Exact = parse.GetValue(Exact),
            ArchCapabilities = archCap is null ? 0 : ParseHex(archCap),
            Set = [.. ParseNames(Split(parse.GetValue(Set) ?? []))],
            Clear = [.. ParseNames(Split(parse.GetValue(Clear) ?? []))],
        };
    }

    private static KernelCpuDescription FromCpuInfo(string text, string name)
    {
        try
        {
            return KernelCpuDescription.FromCpuInfo(text);
        }
        catch (CpuFeatureException e)
        {
            throw new CpuFeatureException($"{name}: {e.Message}", e);
        }
    }

    private static IEnumerable<string> Split(IEnumerable<string> values) =>
        values.SelectMany(v => v.Split([',', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries));

    /// <summary>Feature names for --set/--clear, checked by the same parser (and message) as --flags.</summary>
    private static IEnumerable<CpuFeature> ParseNames(IEnumerable<string> names) => CpuFeatures.FromNames(names).Features;

    private static ulong ParseHex(string s)
    {
        var t = s.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v)
            ? v
            : throw new CpuFeatureException($"--arch-capabilities: '{s}' is not a hexadecimal number");
    }

    private static CpuVendor ParseVendor(string s)
    {
        var v = CpuVendors.FromVendorId(s);
        if (v != CpuVendor.Unknown)
            return v;
        if (Enum.TryParse<CpuVendor>(s, ignoreCase: true, out v) && v != CpuVendor.Unknown)
            return v;
        throw new CpuFeatureException($"unknown CPU vendor '{s}' (a vendor_id such as GenuineIntel or AuthenticAMD, or intel, amd, hygon, centaur, zhaoxin)");
    }
}
