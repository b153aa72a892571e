using System.Globalization;
using System.Text.RegularExpressions;
using Altpatch.Images.Boot;

namespace Altpatch.Images.Verify;

/// <summary>One module of <c>/proc/modules</c>, with what is needed to verify it.</summary>
/// <param name="Name">The module's name.</param>
/// <param name="Address">Its core layout's address (the last field of <c>/proc/modules</c>).</param>
/// <param name="Holders">The modules that use it (the fourth field).</param>
/// <param name="SectionsDirectory">Its <c>/sys/module/NAME/sections</c>.</param>
/// <param name="File">Its <c>.ko</c> under <c>/lib/modules/RELEASE</c> (from <c>modules.dep</c>), or null when none is found.</param>
/// <param name="Dependencies">The files of the modules it links against, in load order (<c>modules.dep</c>, transitively).</param>
public sealed record KernelLiveModule(string Name, ulong Address, IReadOnlyList<string> Holders, string SectionsDirectory, string? File,
    IReadOnlyList<string> Dependencies);

/// <summary>The verification of one loaded module: its result, or why it could not be verified.</summary>
/// <param name="Module">The module.</param>
/// <param name="Result">The verification of its <c>.text</c>, or null.</param>
/// <param name="Problem">Why it was not verified (no <c>.ko</c>, another build, …), or null.</param>
public sealed record KernelLiveModuleResult(KernelLiveModule Module, KernelModuleVerifyResult? Result, string? Problem)
{
    /// <summary>Verified and nothing unexplained.</summary>
    public bool Clean => Result is { Clean: true };
}

/// <summary>
/// The modules a running kernel has loaded, found as root on the machine (or in a copy of its directories):
/// <c>/proc/modules</c>, <c>/sys/module/NAME/sections</c>, <c>/lib/modules/$(uname -r)/modules.dep</c>; their code read
/// from <c>/proc/kcore</c> and verified against the module as the loader leaves it. A module whose <c>.ko</c> cannot be
/// found is reported as such, never skipped.
/// </summary>
/// <param name="procRoot">/proc (or a copy).</param>
/// <param name="sysRoot">/sys (or a copy).</param>
/// <param name="modulesDirectory">/lib/modules/RELEASE (or a copy).</param>
public sealed class KernelLiveModules(string procRoot, string sysRoot, string modulesDirectory)
{
    /// <summary>The directories of this machine for the running release.</summary>
    public static KernelLiveModules Current(string release) => new("/proc", "/sys", Path.Combine("/lib/modules", release));

    /// <summary>/lib/modules/RELEASE.</summary>
    public string ModulesDirectory { get; } = modulesDirectory;

    /// <summary>The loaded modules, in <c>/proc/modules</c> order (most recently loaded first).</summary>
    /// <exception cref="KernelVerifyException"><c>/proc/modules</c> cannot be read or a line is malformed.</exception>
    public IReadOnlyList<KernelLiveModule> List()
    {
        var path = Path.Combine(procRoot, "modules");
        string[] lines;
        try
        {
            lines = System.IO.File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KernelVerifyException($"--live: cannot read {path}: {e.Message}");
        }
        var files = ReadModulesDep();
        var result = new List<KernelLiveModule>();
        foreach (var line in lines.Where(l => l.Length > 0))
        {
            // "xfs 1970176 0 - Live 0xffffffffc020f000 [(O)…]"
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 6 || KernelModuleSections.ParseAddress(f[5]) is not { } addr)
                throw new KernelVerifyException($"--live: {path}: '{line}' is not 'NAME SIZE REFS HOLDERS STATE ADDRESS'");
            var holders = f[3] == "-" ? [] : f[3].Split(',', StringSplitOptions.RemoveEmptyEntries);
            string? file = files.TryGetValue(f[0], out var e) ? e.File : null;
            var deps = new List<string>();
            if (file is not null)
                AddDependencies(files, f[0], deps, []);
            result.Add(new KernelLiveModule(f[0], addr, holders, Path.Combine(sysRoot, "module", f[0], "sections"), file, deps));
        }
        return result;
    }

    private static void AddDependencies(Dictionary<string, (string File, string[] Deps)> files, string name, List<string> into, HashSet<string> seen)
    {
        if (!seen.Add(name) || !files.TryGetValue(name, out var e))
            return;
        foreach (var d in e.Deps.Reverse())
        {
            string dn = KernelModule.NameFromFile(d);
            AddDependencies(files, dn, into, seen);
            if (files.TryGetValue(dn, out var de) && !into.Contains(de.File))
                into.Add(de.File);
        }
    }

    /// <summary>name → (.ko path, its modules.dep dependencies) from <c>modules.dep</c>.</summary>
    private Dictionary<string, (string File, string[] Deps)> ReadModulesDep()
    {
        var d = new Dictionary<string, (string, string[])>(StringComparer.Ordinal);
        var dep = Path.Combine(ModulesDirectory, "modules.dep");
        if (!System.IO.File.Exists(dep))
            return d;
        foreach (var line in System.IO.File.ReadLines(dep))
        {
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0)
                continue;
            string file = line[..colon].Trim();
            var deps = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            d.TryAdd(KernelModule.NameFromFile(file), (Path.Combine(ModulesDirectory, file), deps));
        }
        return d;
    }

    /// <summary>Where a loaded module's sections are: its sysfs directory, plus the per-CPU base that sysfs does not show
    /// (a per-CPU symbol of the module in <c>/proc/kallsyms</c> minus its value in the <c>.ko</c>).</summary>
    public KernelModuleSections Sections(string name, KernelModule module)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(module);
        var placed = KernelModuleSections.Read(Path.Combine(sysRoot, "module", name, "sections"));
        if (module.Elf.FindSection(KernelModuleLinker.PerCpuSection) is not { } pcpu)
            return placed;
        var symbols = module.Elf.Symbols.Where(s => s.SectionIndex == pcpu.Index && s.IsObject && s.Name.Length > 0).ToDictionary(s => s.Name, s => s.Value, StringComparer.Ordinal);
        var kallsyms = Path.Combine(procRoot, "kallsyms");
        if (symbols.Count == 0 || !System.IO.File.Exists(kallsyms))
            return placed;
        var tag = $"[{name}]";
        foreach (var line in System.IO.File.ReadLines(kallsyms))
        {
            if (!line.EndsWith(tag, StringComparison.Ordinal))
                continue;
            var f = line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
            if (f.Length >= 3 && symbols.TryGetValue(f[2], out ulong value)
                && ulong.TryParse(f[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong a))
                return KernelModuleSections.From(placed.Origin, placed.Addresses.SetItem(KernelModuleLinker.PerCpuSection, a - value));
        }
        return placed;
    }

    /// <summary>Verifies the <c>.text</c> of every loaded module (read from <paramref name="core"/>, e.g. <c>/proc/kcore</c>)
    /// against <paramref name="kernel"/> (the running kernel as its boot left it).</summary>
    /// <param name="kernel">The kernel, predicted where it runs.</param>
    /// <param name="core">The memory to read the modules' code from.</param>
    /// <param name="commandLine">The kernel command line.</param>
    /// <param name="progress">Told each module's name.</param>
    /// <exception cref="KernelVerifyException"><c>/proc/modules</c> cannot be read.</exception>
    public IReadOnlyList<KernelLiveModuleResult> Verify(KernelPatchResult kernel, ElfCore core, KernelCommandLine commandLine, IProgress<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(core);
        var results = new List<KernelLiveModuleResult>();
        var opened = new Dictionary<string, KernelModule>(StringComparer.Ordinal);
        KernelModule Open(string path) => opened.TryGetValue(path, out var m) ? m : opened[path] = KernelModule.Open(path);
        foreach (var lm in List())
        {
            progress?.Report(lm.Name);
            if (lm.File is null || !System.IO.File.Exists(lm.File))
            {
                results.Add(new KernelLiveModuleResult(lm, null, $"no .ko for {lm.Name} in {ModulesDirectory} (modules.dep): its code cannot be verified"));
                continue;
            }
            try
            {
                var chain = new List<(KernelModule, KernelModuleSections)>();
                foreach (var dep in lm.Dependencies)
                {
                    var dm = Open(dep);
                    chain.Add((dm, Sections(dm.Name, dm)));
                }
                var module = Open(lm.File);
                chain.Add((module, Sections(lm.Name, module)));
                var loaded = KernelModuleVerifier.Load(kernel, chain, commandLine);
                var text = loaded.Patched.FindSection(".text");
                if (text is not { Size: > 0 } t)
                {
                    results.Add(new KernelLiveModuleResult(lm, null, $"{lm.Name} has no .text"));
                    continue;
                }
                var bytes = new byte[t.Size];
                if (!core.TryRead(t.Address, bytes))
                {
                    results.Add(new KernelLiveModuleResult(lm, null, $"{core.Name} has no segment holding {lm.Name}'s .text at 0x{t.Address:x}"));
                    continue;
                }
                results.Add(new KernelLiveModuleResult(lm, KernelModuleVerifier.Verify(loaded, bytes, t.Address, $"{core.Name}:{lm.Name}"), null));
            }
            catch (Exception e) when (e is AltpatchException or IOException)
            {
                results.Add(new KernelLiveModuleResult(lm, null, Regex.Replace(e.Message, @"\s+", " ")));
            }
        }
        return results;
    }
}
