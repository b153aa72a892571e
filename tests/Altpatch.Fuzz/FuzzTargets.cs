using System.Buffers.Binary;
using System.Text;
using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Fuzz;

/// <summary>
/// Every fuzz target, registered in one place. A new reader adds one <see cref="FuzzTarget"/> here (and a seed
/// in <see cref="SeedCorpus"/>): <c>tools/fuzz/run.sh</c>, the corpus replay test and the CI smoke pick it up by name.
/// </summary>
public static class FuzzTargets
{
    /// <summary>Decompressed sizes above this are not decoded by the fuzz targets: the decoders are bounded by the
    /// size trailer (see docs/bad-input.md), and allocating it for each input would only slow the fuzzer down.</summary>
    public const int MaxFuzzOutput = 1 << 20;

    private static readonly Type[] Image = [typeof(ImageFormatException)];

    /// <summary>All targets, by name.</summary>
    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new("bzimage", "bzImage setup header, payload framing, CRC32 and PE signature, then the payload's decompression and ELF (KernelImage.Load with IgnoreCrc)", BzImageFile, Image),
        new("signature", "PE header and certificate table of a signed image (PeHeader, ImageSignature: WIN_CERTIFICATE, PKCS#7 signer)", Signature, Image),
        .. Enum.GetValues<PayloadCompression>().Where(c => c != PayloadCompression.None).Select(c =>
            new FuzzTarget($"payload-{Lower(c)}", $"the {Lower(c)} payload decoder (stream + size trailer)", input => Payload(c, input), Image)),
        new("elf", "ElfFile: headers, sections, segments, symbols, address mapping, version banner", Elf, Image),
        new("alt-instructions", ".altinstructions in a real vmlinux (first byte: even x86-64, odd i386): every alt_instr layout's detection and checks", input => Table(KernelPatchTables.AltInstructions, input), Image, NeedsSharedImages: true),
        new("parainstructions", ".parainstructions in a real vmlinux, and PvOpsTable.Find through its sites", input => Table(KernelPatchTables.ParaInstructions, input), Image, NeedsSharedImages: true),
        new("smp-locks", ".smp_locks in a real vmlinux (relative and absolute forms)", input => Table(KernelPatchTables.SmpLocksSection, input), Image, NeedsSharedImages: true),
        new("return-sites", ".return_sites in the real x86-64 vmlinux", input => Table(KernelPatchTables.ReturnSites, input), Image, NeedsSharedImages: true),
        new("retpoline-sites", ".retpoline_sites in the real x86-64 vmlinux", input => Table(KernelPatchTables.RetpolineSites, input), Image, NeedsSharedImages: true),
        new("pv-ops", "PvOpsTable.Find with the code at the paravirt sites rewritten by the input (records: u16 site, 6 bytes)", PvOps, Image, NeedsSharedImages: true),
        new("feature-numbering", "ImageFeatureNumbering: the x86_cap_flags pointer array rewritten by the input", FeatureNumbering, [typeof(ImageFormatException), typeof(KernelPatchException)], NeedsSharedImages: true),
        new("cpuinfo", "/proc/cpuinfo text: CpuFeatures.FromCpuInfo and KernelCpuDescription.FromCpuInfo", CpuInfo, [typeof(CpuFeatureException)]),
        new("system-map", "System.map / /proc/kallsyms text for kernel patch --symbols: KvmGuest.ReadSymbols", SystemMap, Image),
        new("relocs", "vmlinux.relocs after the real i386 vmlinux: KernelRelocations.Read (lists, terminators, bounds, order)", Relocs, Image, NeedsSharedImages: true),
        new("core", "ELF core files (/proc/kcore, dump-guest-memory -p): ElfCore headers, segments, reads; KernelTextLocator.Find of the real i386 kernel's text", Core,
            [typeof(ImageFormatException), typeof(Altpatch.Images.Verify.KernelVerifyException)], NeedsSharedImages: true),
        new("text-tables", "KernelTextTables in a real vmlinux (first byte: frame; second: __jump_table, .static_call_sites or __mcount_loc) with the table's bytes rewritten by the input, found by the image's kallsyms or by the scans", TextTables, Image, NeedsSharedImages: true),
        new("command-line", "kernel command line text: KernelCommandLine.Parse with the 6.1 and 6.12 rules (early_param, __setup and cmdline_find_option semantics)", CommandLine, []),
        new("module", "kernel modules (.ko, .ko.xz, .ko.zst): KernelModule.Load (ELF, modinfo), then KernelModuleLinker.Link with every section placed and every symbol resolved (symbols, relocation tables, overflow checks)", Module,
            [typeof(ImageFormatException), typeof(KernelModuleException)]),
    ];

    // Not PayloadDecompressor.Name: the registry must not run Altpatch code, which is instrumented and may only run
    // inside Fuzzer.Run (before it, the coverage map is not set up).
    private static string Lower(PayloadCompression c) => c.ToString().ToLowerInvariant();

    /// <summary>The target called <paramref name="name"/>.</summary>
    /// <exception cref="ArgumentException">No such target.</exception>
    public static FuzzTarget Get(string name) =>
        All.FirstOrDefault(t => t.Name == name) ?? throw new ArgumentException($"no fuzz target '{name}' (known: {string.Join(", ", All.Select(t => t.Name))})");

    private static void BzImageFile(byte[] input)
    {
        if (!BzImage.IsBzImage(input))
            return;
        var bz = BzImage.Parse(input, "fuzz");
        var integrity = BzImageIntegrity.Check(bz);
        _ = integrity.Status;
        _ = integrity.FailureMessage("fuzz");
        if (bz.DecompressedSize > MaxFuzzOutput || bz.Header.InitSize > MaxFuzzOutput * 4L)
            return;
        var img = KernelImage.Load(input, "fuzz", new KernelImageOptions { IgnoreCrc = true });
        _ = img.Tables;
    }

    private static void Signature(byte[] input)
    {
        if (PeHeader.TryRead(input) is not { } pe)
            return;
        _ = PeHeader.ComputeChecksum(input, pe.ChecksumOffset);
        if (pe.HasCertificateTable && ImageSignature.Read(input, pe, out _) is { } sig)
            _ = sig.Description;
    }

    private static void Payload(PayloadCompression compression, byte[] input)
    {
        // Run some Altpatch code whatever the input: afl-fuzz refuses a target whose first input leaves the coverage
        // map empty ("No instrumentation detected"), which an input too short to decode would.
        _ = PayloadDecompressor.TryDetect(input, out _);
        if (input.Length < 4)
            return;
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(input.AsSpan(input.Length - 4));
        if (size > MaxFuzzOutput)
            return;
        var stream = compression == PayloadCompression.Gzip ? input : input.AsMemory(0, input.Length - 4);
        var data = PayloadDecompressor.Decompress(stream, compression, (int)size, "fuzz");
        if (data.Length != size)
            throw new InvalidOperationException($"{compression} decoder returned {data.Length} bytes for a trailer of {size}");
    }

    private static void Elf(byte[] input)
    {
        var elf = ElfFile.Parse(input, "fuzz");
        foreach (var s in elf.Sections)
        {
            _ = elf.SectionBytes(s);
            if (s.IsAllocated && s.Size > 0)
            {
                _ = elf.SectionContaining(s.Address);
                if (s.Size >= (ulong)elf.PointerSize && elf.TryGetFileOffset(s.Address, elf.PointerSize, out _))
                    _ = elf.ReadPointer(s.Address);
            }
        }
        foreach (var p in elf.Segments)
            _ = elf.TryGetFileOffset(p.VirtualAddress, 1, out _);
        _ = elf.Symbols.Count;
        _ = elf.FindSection(".text");
        _ = KernelVersion.FindBanner(elf);
    }

    private static void Table(string table, byte[] input)
    {
        var (frame, rest) = ImageFrame.Select(input);
        frame.WithTable(table, rest.Span, elf =>
        {
            var t = KernelPatchTables.Read(elf, frame.Image.Version);
            _ = t.Tables.Count;
            _ = t.PvOps?.SlotCount;
        });
    }

    private static void PvOps(byte[] input)
    {
        var (frame, rest) = ImageFrame.Select(input);
        var sites = frame.Tables.Paravirt;
        if (sites.Length == 0)
            return;
        var patches = new List<(ulong, byte[])>();
        var r = rest.Span;
        for (int i = 0; i + 8 <= r.Length && patches.Count < 64; i += 8)
        {
            var site = sites[BinaryPrimitives.ReadUInt16LittleEndian(r[i..]) % sites.Length];
            patches.Add((site.Address, r.Slice(i + 2, Math.Min(6, (int)site.Len)).ToArray()));
        }
        frame.WithPatches(patches, () => _ = PvOpsTable.Find(frame.Image.Elf, sites)?.SlotCount);
    }

    private static void FeatureNumbering(byte[] input)
    {
        var (frame, rest) = ImageFrame.Select(input);
        if (frame.CapFlagsAddress is not { } at)
            return;
        var bytes = rest.Span[..Math.Min(rest.Length, 8192)].ToArray();
        frame.WithPatches([(at, bytes)], () =>
        {
            var n = ImageFeatureNumbering.For(frame.Image, KernelBootRules.Linux61);
            _ = n.NameOf(0);
            var m = ImageFeatureNumbering.For(frame.Image, KernelBootRules.Linux2622);
            _ = m.HasFeature(CpuFeatures.Empty)(0);
        });
    }

    private static void Relocs(byte[] input)
    {
        var elf = ImageFrame.I386.Image.Elf;
        var bytes = new byte[elf.ElfEnd + input.Length];
        elf.Bytes.Span[..(int)elf.ElfEnd].CopyTo(bytes);
        input.CopyTo(bytes, (int)elf.ElfEnd);
        var r = KernelRelocations.Read(ElfFile.Parse(bytes, "fuzz"));
        _ = r?.FieldsIn(r.TextStart, 0x100000).Count();
    }

    private static void Module(byte[] input)
    {
        var module = KernelModule.Load(input, "fuzz.ko");
        _ = (module.Name, module.Vermagic, module.Depends.Length);
        // Every section 64 KiB apart in the module area, every undefined symbol in the kernel's text.
        var placed = KernelModuleSections.From("fuzz.sections",
            module.Elf.Sections.Where(s => s.Name.Length > 0).Select(s => new KeyValuePair<string, ulong>(s.Name, 0xffffffffc0000000UL + (ulong)s.Index * 0x10000)).DistinctBy(kv => kv.Key));
        var link = KernelModuleLinker.Link(module, placed, name => (0xffffffff81000000UL + (ulong)(name.Length * 16), "kernel"));
        _ = link.RelocationsByType.Count;
    }

    private static void Core(byte[] input)
    {
        using var core = ElfCore.FromBytes(input, "fuzz");
        var buf = new byte[64];
        foreach (var (start, length) in core.Ranges())
            _ = core.TryRead(start, buf.AsSpan(0, (int)Math.Min(length, (ulong)buf.Length)));
        _ = core.Covers(0xc1000000, 0x1000);
        _ = Altpatch.Images.Verify.KernelTextLocator.Find(ImageFrame.I386.Image, core);
    }

    private static void TextTables(byte[] input)
    {
        var (frame, rest) = ImageFrame.Select(input);
        if (rest.IsEmpty)
            return;
        var img = frame.Image;
        var nops = img.Bitness == 64 ? Altpatch.Code.NopTable.X86_64Linux61 : Altpatch.Code.NopTable.X86_32;
        var pristine = frame.TextTables;
        var table = (rest.Span[0] % 3) switch
        {
            0 => pristine.Tables.FirstOrDefault(t => t.Kind == KernelSiteKind.JumpLabel),
            1 => pristine.Tables.FirstOrDefault(t => t.Kind == KernelSiteKind.StaticCall),
            _ => pristine.Tables.FirstOrDefault(t => t.Kind == KernelSiteKind.Mcount),
        };
        if (table.Size == 0)
            return;
        var bytes = rest[1..].ToArray();
        if (bytes.Length > (int)table.Size)
            bytes = bytes[..(int)table.Size];
        frame.WithPatches([(table.Address, bytes)], () =>
        {
            var t = KernelTextTables.Read(img.Elf, nops, frame.Symbols);
            _ = t.Count(KernelSiteKind.JumpLabel) + t.Count(KernelSiteKind.Mcount);
        });
    }

    private static void CommandLine(byte[] input)
    {
        var c = KernelCommandLine.Parse(Encoding.UTF8.GetString(input));
        _ = c.Unknown.Length + c.ClearedFeatures.Length;
        var c612 = c.For(KernelBootRules.Linux612);   // 6.12's reading of the same text (pti/nopti as early params, …)
        _ = c612.Unknown.Length + (int)c612.Pti;
    }

    private static void SystemMap(byte[] input) => _ = KvmGuest.ReadSymbols(Encoding.UTF8.GetString(input)).Count;

    private static void CpuInfo(byte[] input)
    {
        var text = Encoding.UTF8.GetString(input);
        _ = CpuFeatures.FromCpuInfo(text, out _).Count;
        _ = KernelCpuDescription.FromCpuInfo(text).Cpus;
    }
}
