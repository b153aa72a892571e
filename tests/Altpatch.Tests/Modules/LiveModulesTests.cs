using Altpatch.Images;
using Altpatch.Images.Verify;
using Altpatch.Tests.Verify;

namespace Altpatch.Tests.Modules;

/// <summary>
/// <see cref="KernelLiveModules"/> over a copy of a machine's directories laid out like /proc, /sys and /lib/modules,
/// built from the module ground truth (Haswell-smp2+kaslr): every loaded module found with its .ko, dependencies and
/// per-CPU base, its .text read from a core and verified clean; a hooked module caught; a module without a .ko reported,
/// never skipped.
/// </summary>
public sealed class LiveModulesTests : IDisposable
{
    private const string Config = "Haswell-smp2+kaslr";
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-livemod-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private (KernelLiveModules Live, byte[] Core, Dictionary<string, ulong> Text) Machine(IEnumerable<string> withoutKo, Action<string, byte[]>? tamper = null,
        ModuleTruth? truth = null)
    {
        truth ??= ModuleTruth.Linux61;
        var modules = truth.Modules(Config);
        var proc = Directory.CreateDirectory(Path.Combine(dir, "proc")).FullName;
        var sys = Path.Combine(dir, "sys");
        var lib = Directory.CreateDirectory(Path.Combine(dir, "lib")).FullName;
        var procModules = new List<string>();
        var dep = new List<string>();
        var segments = new List<(ulong, byte[])>();
        var text = new Dictionary<string, ulong>();
        foreach (var (name, path) in modules)
        {
            var sections = Directory.CreateDirectory(Path.Combine(sys, "module", name, "sections")).FullName;
            foreach (var line in File.ReadAllLines(Path.Combine(truth.Data, Config, name + ".sections")).Where(l => l.Length > 0 && l[0] != '#'))
            {
                var f = line.Split(' ');
                if (f[0] != ".data..percpu")
                    File.WriteAllText(Path.Combine(sections, f[0]), f[1] + "\n");
            }
            string rel = Path.GetRelativePath(Path.Combine(truth.ModulesDir, ".."), path);
            if (!withoutKo.Contains(name))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(lib, rel))!);
                File.Copy(path, Path.Combine(lib, rel));
                string deps = string.Join(' ', new KernelModuleDeps().Of(name).Select(d => Path.GetRelativePath(Path.Combine(truth.ModulesDir, ".."), modules.Single(m => m.Name == d).Path)));
                dep.Add($"{rel}: {deps}".TrimEnd());
            }
            var saved = truth.Saved(Config, name);
            var (addr, bytes) = saved[".text"];
            tamper?.Invoke(name, bytes);
            segments.Add((addr, bytes));
            text[name] = addr;
            procModules.Insert(0, $"{name} 16384 0 - Live 0x{addr:x}");
        }
        File.WriteAllLines(Path.Combine(proc, "modules"), procModules);
        File.WriteAllLines(Path.Combine(lib, "modules.dep"), dep);
        // kvm's per-CPU base, as /proc/kallsyms lists a per-CPU symbol of it: the base plus the symbol's value in the .ko
        ulong pcpu = ModuleTruth.Hex(File.ReadAllLines(Path.Combine(truth.Data, Config, "kvm.sections")).Single(l => l.StartsWith(".data..percpu ", StringComparison.Ordinal)).Split(' ')[1]);
        ulong value = KernelModule.Open(modules.Single(m => m.Name == "kvm").Path).Elf.Symbols.First(x => x.Name == "kvm_running_vcpu").Value;
        File.WriteAllLines(Path.Combine(proc, "kallsyms"), [$"{pcpu + value:x16} a kvm_running_vcpu\t[kvm]"]);
        return (new KernelLiveModules(proc, sys, lib), SyntheticCore.Build(true, segments), text);
    }

    /// <summary>The dependencies modules.dep lists for the truth's modules (what depmod writes).</summary>
    private sealed class KernelModuleDeps
    {
        public string[] Of(string name) => name switch
        {
            "xfs" => ["libcrc32c"],
            "kvm" => ["irqbypass"],
            _ => [],
        };
    }

    [SkippableTheory]
    [InlineData("6.1.0-50-amd64")]
    [InlineData("6.12.118+deb12-amd64")]
    public void Every_loaded_module_is_verified_and_one_without_its_ko_is_reported(string release)
    {
        var truth = ModuleTruth.For(release);
        Skip.IfNot(truth.HavePackage, truth.NoPackage);
        var (live, core, _) = Machine(withoutKo: ["crc32c_generic"], truth: truth);
        var listed = live.List();
        Assert.Equal(7, listed.Count);
        Assert.Equal(["irqbypass"], listed.Single(m => m.Name == "kvm").Dependencies.Select(KernelModule.NameFromFile));
        var image = truth.OpenKernel()!;
        var (kernel, cmdline) = truth.Kernel(Config, image);
        using var c = ElfCore.FromBytes(core, "kcore");
        var results = live.Verify(kernel, c, cmdline);
        Assert.Equal(7, results.Count);
        var missing = results.Single(r => r.Module.Name == "crc32c_generic");
        Assert.Null(missing.Result);
        Assert.Contains("no .ko for crc32c_generic", missing.Problem, StringComparison.Ordinal);
        Assert.All(results.Where(r => r.Module.Name != "crc32c_generic"), r => Assert.True(r.Clean, $"{r.Module.Name}: {r.Problem} {r.Result?.UnexplainedBytes}"));
    }

    [SkippableFact]
    public void A_hook_in_a_loaded_module_is_caught()
    {
        Skip.IfNot(ModuleTruth.Linux61.HavePackage, ModuleTruth.Linux61.NoPackage);
        var (live, core, text) = Machine(withoutKo: [], (name, bytes) =>
        {
            if (name == "tun")
                bytes[0x40] = 0xcc;                          // an int3 in tun's .text
        });
        var image = KernelImage.Open(ModuleTruth.Linux61.KernelPath);
        var (kernel, cmdline) = ModuleTruth.Linux61.Kernel(Config, image);
        using var c = ElfCore.FromBytes(core, "kcore");
        var results = live.Verify(kernel, c, cmdline);
        var tun = results.Single(r => r.Module.Name == "tun");
        Assert.False(tun.Clean);
        Assert.Equal(text["tun"] + 0x40, Assert.Single(tun.Result!.Unexplained).Address);
        Assert.All(results.Where(r => r.Module.Name != "tun"), r => Assert.True(r.Clean, $"{r.Module.Name}: {r.Problem}"));
    }
}
