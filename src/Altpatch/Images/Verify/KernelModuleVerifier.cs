using System.Collections.Immutable;
using Altpatch.Images.Boot;

namespace Altpatch.Images.Verify;

/// <summary>The result of verifying a loaded module's section against its prediction: every byte as predicted, dynamic
/// (a jump label, static call or mcount site of the module in another legal state) or unexplained.</summary>
public sealed class KernelModuleVerifyResult
{
    internal KernelModuleVerifyResult(KernelModuleResult loaded, string section, string source, ulong address, int length, long dynamicBytes,
        long unexplainedBytes, ImmutableArray<KernelUnexplainedRange> unexplained, ImmutableArray<KernelDynamicObservation> dynamicChanged,
        ImmutableArray<KernelDynamicSite> dynamicSites)
    {
        Loaded = loaded;
        Section = section;
        Source = source;
        Address = address;
        Length = length;
        DynamicBytes = dynamicBytes;
        UnexplainedBytes = unexplainedBytes;
        Unexplained = unexplained;
        DynamicChanged = dynamicChanged;
        DynamicSites = dynamicSites;
    }

    /// <summary>The prediction: the module as the loader leaves it.</summary>
    public KernelModuleResult Loaded { get; }

    /// <summary>The module's section verified (<c>.text</c>, …).</summary>
    public string Section { get; }

    /// <summary>Where the bytes came from (a dump's name).</summary>
    public string Source { get; }

    /// <summary>Where the section is loaded.</summary>
    public ulong Address { get; }

    /// <summary>Bytes compared (the section's size).</summary>
    public int Length { get; }

    /// <summary>Bytes equal to the prediction.</summary>
    public long AsPredictedBytes => Length - DynamicBytes - UnexplainedBytes;

    /// <summary>Bytes of dynamic sites found in another legal state.</summary>
    public long DynamicBytes { get; }

    /// <summary>Differing bytes nothing explains.</summary>
    public long UnexplainedBytes { get; }

    /// <summary>The unexplained ranges, each named and disassembled.</summary>
    public ImmutableArray<KernelUnexplainedRange> Unexplained { get; }

    /// <summary>Dynamic sites found in another legal state.</summary>
    public ImmutableArray<KernelDynamicObservation> DynamicChanged { get; }

    /// <summary>Every dynamic site of the module, sorted by address.</summary>
    public ImmutableArray<KernelDynamicSite> DynamicSites { get; }

    /// <summary>Nothing unexplained.</summary>
    public bool Clean => Unexplained.IsEmpty;
}

/// <summary>
/// Modules where a running kernel has them: the kernel predicted at its runtime address (<see cref="PredictKernel"/>),
/// a module and its dependencies linked and loaded into it (<see cref="Load"/>), and a dump of one of the module's
/// sections checked against the prediction (<see cref="Verify"/>) with the classes of <c>kernel verify</c>.
/// </summary>
public static class KernelModuleVerifier
{
    /// <summary>KASLR's alignment on x86-64 (CONFIG_PHYSICAL_ALIGN): the kernel moves by multiples of 2 MiB.</summary>
    public const ulong KaslrAlign = 0x200000;

    /// <summary>The kernel as its boot leaves it for <paramref name="cpu"/>, at the address <paramref name="kernelBase"/>
    /// (the running <c>_stext</c>; null: the link address).</summary>
    /// <exception cref="KernelModuleException">The base is not the link address of <c>.text</c> plus a multiple of 2 MiB.</exception>
    /// <exception cref="ImageFormatException">A table or the relocation table is malformed.</exception>
    /// <exception cref="Altpatch.Text.PatchException">A site cannot be patched.</exception>
    /// <exception cref="KernelPatchException">The image cannot be patched as asked.</exception>
    public static KernelPatchResult PredictKernel(KernelImage image, ulong? kernelBase, KernelCpuDescription cpu, KernelTextOptions? text = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(cpu);
        var runtime = image;
        if (kernelBase is { } b)
        {
            ulong link = KernelTextLocator.TextSection(image).Address;
            if (b < link || (b - link) % KaslrAlign != 0)
                throw new KernelModuleException($"{image.Name}: --kernel-base 0x{b:x} is not .text's link address 0x{link:x} plus a multiple of 2 MiB (the running _stext, from /proc/kallsyms as root)");
            if (b != link)
                runtime = image.Relocate((long)(b - link));
        }
        return KernelTextVerifier.Predict(runtime, cpu, text);
    }

    /// <summary>Loads a module and its dependencies into the kernel: each must be of the kernel's build
    /// (<see cref="KernelModuleLoader.CheckVermagic"/>), each is linked against the kernel and the ones before it, and the
    /// last is loaded after them (<see cref="KernelModuleLoader.Load(KernelPatchResult, KernelModuleLink, IEnumerable{KernelModuleLink}, KernelCommandLine?)"/>).</summary>
    /// <param name="kernel">The kernel, e.g. <see cref="PredictKernel"/>.</param>
    /// <param name="modules">The dependencies first, the module last, each with where it was loaded.</param>
    /// <param name="commandLine">The kernel command line.</param>
    /// <exception cref="KernelModuleException">Another build's module, a missing section, an unresolved symbol, a
    /// relocation of an unknown type or that overflows.</exception>
    /// <exception cref="ImageFormatException">A malformed module.</exception>
    /// <exception cref="Altpatch.Text.PatchException">A site cannot be patched.</exception>
    public static KernelModuleResult Load(KernelPatchResult kernel, IReadOnlyList<(KernelModule Module, KernelModuleSections Sections)> modules,
        KernelCommandLine? commandLine = null)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(modules);
        if (modules.Count == 0)
            throw new ArgumentException("no module", nameof(modules));
        foreach (var (m, _) in modules)
            KernelModuleLoader.CheckVermagic(kernel.Image, m);
        var symbols = kernel.Image.Symbols;
        var linked = new List<KernelModuleLink>();
        foreach (var (m, s) in modules)
            linked.Add(KernelModuleLinker.Link(m, s, KernelModuleLoader.Resolver(symbols, linked)));
        return KernelModuleLoader.Load(kernel, linked[^1], linked[..^1], commandLine);
    }

    /// <summary>Verifies a dump of one of a loaded module's sections against the prediction.</summary>
    /// <param name="loaded">The prediction.</param>
    /// <param name="found">The running module's bytes from the start of the section (at least its size).</param>
    /// <param name="address">Where the dump starts: the load address of one of the module's sections.</param>
    /// <param name="source">The dump's name, for messages.</param>
    /// <exception cref="KernelVerifyException">The address is not where a section of the module starts, or the dump is shorter than the section.</exception>
    public static KernelModuleVerifyResult Verify(KernelModuleResult loaded, ReadOnlyMemory<byte> found, ulong address, string source)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        ArgumentNullException.ThrowIfNull(source);
        var module = loaded.Link.Module;
        var patched = loaded.Patched;
        var section = patched.Sections.FirstOrDefault(s => s.IsAllocated && s.IsExecutable && s.Size > 0 && s.Address == address);
        if (section.Size == 0)
            throw new KernelVerifyException($"{source}: 0x{address:x} is not where an executable section of {module.Name} starts (its .text is at 0x{patched.FindSection(".text")?.Address ?? 0:x})");
        if ((ulong)found.Length < section.Size)
            throw new KernelVerifyException($"{source}: {found.Length} bytes, but {module.Name}'s {section.Name} has {section.Size}");
        int n = (int)section.Size;
        var kernel = loaded.Kernel;
        var kernelSymbols = kernel.Image.TryGetSymbols(out var ks) ? ks : null;
        var own = ModuleSymbols(loaded.Link);
        var code = kernel.Image.Sections.Concat(patched.Sections).Where(s => s.IsAllocated && s.IsExecutable && s.Size > 0 && s.Address != 0)
            .Select(s => (s.Address, s.EndAddress)).ToArray();
        string? FunctionAt(ulong a)
        {
            if (kernelSymbols is not null && kernelSymbols.TryFind(a, out var sym, out ulong off) && off == 0 && sym.IsText)
                return sym.Name;
            int i = own.FindLastIndex(x => x.Address <= a);
            return i >= 0 && own[i].Address == a && own[i].Function ? own[i].Name : null;
        }
        string Describe(ulong a)
        {
            int i = own.FindLastIndex(x => x.Address <= a);
            if (i >= 0 && a - own[i].Address < Math.Max(own[i].Size, 1))
                return $"{own[i].Name}+0x{a - own[i].Address:x}/0x{own[i].Size:x} [{module.Name}]";
            return kernelSymbols?.Describe(a) ?? $"0x{a:x}";
        }
        var sites = loaded.TextSites.Where(x => x.Address >= section.Address && x.Address < section.EndAddress);
        var dynamicSites = KernelTextExpectations.DynamicSites(sites, kernel.Image.Bitness, a => code.Any(r => a >= r.Address && a < r.EndAddress), FunctionAt, kernelSymbols);
        var tables = KernelPatchTables.Read(loaded.Link.Elf, kernel.Image.Version);
        var c = KernelTextVerifier.Compare(patched.SectionBytes(section), found[..n], address, kernel.Image.Bitness, dynamicSites,
            () => KernelTextExpectations.Sites(tables, loaded.TextSites, a => BranchLength(patched, a)), Describe, kernelSymbols,
            a => own.FindLastIndex(x => x.Address <= a && x.Function) is var i and >= 0 ? own[i].Address : null);   // decode from the module's function
        return new KernelModuleVerifyResult(loaded, section.Name, source, address, n, c.DynamicBytes, c.UnexplainedBytes, c.Unexplained, c.DynamicChanged, c.DynamicSites);
    }

    private static int BranchLength(ElfFile patched, ulong address) =>
        patched.TryReadBytes(address, 1, out var b) && b[0] == 0x0f && patched.TryReadBytes(address, 6, out _) ? 6 : patched.TryReadBytes(address, 5, out _) ? 5 : 1;

    private static List<(ulong Address, ulong Size, string Name, bool Function)> ModuleSymbols(KernelModuleLink link)
    {
        var syms = link.Elf.Symbols;
        var list = new List<(ulong, ulong, string, bool)>();
        for (int i = 1; i < syms.Count; i++)
        {
            var s = syms[i];
            if (s.Name.Length == 0 || s.SectionIndex is 0 or >= 0xff00 || !(s.IsFunction || s.IsObject))
                continue;
            list.Add((link.SymbolValues[i], s.Size, s.Name, s.IsFunction));
        }
        list.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        return list;
    }
}
