using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Runtime.CompilerServices;
using Altpatch.Code;

namespace Altpatch.Images;

/// <summary>
/// The patch site tables of a kernel ELF file, read and checked: alternatives, paravirt sites, SMP
/// lock prefixes, retpoline and return-thunk sites, and the <c>pv_ops</c> table the paravirt sites
/// call through. Data only: nothing here writes code.
/// </summary>
/// <remarks>
/// <para><b>Format detection.</b> The <c>struct alt_instr</c> layout (<see cref="AltInstrFormat"/>) is found
/// from the table: every layout whose entry size divides the section size is tried on every entry,
/// and a layout fits when every entry's original instruction lies inside one executable section
/// (other than <c>.altinstr_replacement</c>), every replacement lies inside
/// <c>.altinstr_replacement</c>, instrlen ≤ 254 (<c>MAX_PATCH_LEN</c>), replacementlen and padlen ≤ instrlen, the
/// feature number is below 1024 and padding bytes are zero. If several fit, the kernel version picks
/// (<see cref="AltInstrFormats.ExpectedFor"/>), else the first in <see cref="AltInstrFormats.Preference"/>. If none fits, the error names the
/// first bad entry of the layout the version expects (or of the first candidate).
/// <c>.smp_locks</c> is tried as self-relative s32 and as absolute pointers in the same way; zero
/// entries are padding and skipped.</para>
/// <para><b>Checks.</b> Every site must lie (with its length) inside an executable section; otherwise
/// reading fails with an <see cref="ImageFormatException"/> naming the table, entry index, entry
/// address, format and problem.</para>
/// </remarks>
public sealed class KernelPatchTables
{
    /// <summary>Feature numbers must be below this (32 words of 32 bits; Linux 6.1 uses 24 words).</summary>
    public const int MaxFeature = 1024;

    /// <summary>Section names.</summary>
    public const string AltInstructions = ".altinstructions", AltReplacement = ".altinstr_replacement",
        ParaInstructions = ".parainstructions", SmpLocksSection = ".smp_locks",
        RetpolineSites = ".retpoline_sites", ReturnSites = ".return_sites";

    private KernelPatchTables() { }

    /// <summary>The detected <c>alt_instr</c> layout, or null when the image has no <c>.altinstructions</c>.</summary>
    public AltInstrFormat? AltFormat { get; private init; }

    /// <summary>Alternative sites in table order.</summary>
    public ImmutableArray<KernelAltSite> Alternatives { get; private init; } = [];

    /// <summary>Paravirt sites in table order (empty when the image has no <c>.parainstructions</c>).</summary>
    public ImmutableArray<KernelParavirtSite> Paravirt { get; private init; } = [];

    /// <summary>Entry size of <c>.parainstructions</c>: two pointers (8 on i386, 16 on x86-64).</summary>
    public int ParavirtEntrySize { get; private init; }

    /// <summary>Non-zero <c>.smp_locks</c> entries in table order.</summary>
    public ImmutableArray<KernelLockSite> SmpLocks { get; private init; } = [];

    /// <summary>Whether <c>.smp_locks</c> holds absolute pointers (2.6.x) rather than self-relative s32.</summary>
    public bool SmpLocksAbsolute { get; private init; }

    /// <summary><c>.retpoline_sites</c> entries (empty when absent).</summary>
    public ImmutableArray<KernelRetpolineSite> Retpolines { get; private init; } = [];

    /// <summary><c>.return_sites</c> entries (empty when absent).</summary>
    public ImmutableArray<KernelReturnSite> Returns { get; private init; } = [];

    /// <summary>One summary per table present in the image.</summary>
    public IReadOnlyList<KernelTableInfo> Tables { get; private init; } = [];

    /// <summary>The <c>pv_ops</c> table found through the paravirt sites, or null (no paravirt sites, or
    /// none is an indirect call through memory).</summary>
    public PvOpsTable? PvOps { get; private init; }

    /// <summary>Reads and checks every table of a kernel ELF file.</summary>
    /// <param name="elf">The vmlinux ELF file.</param>
    /// <param name="version">The kernel version when known; breaks ties between layouts that fit equally.</param>
    /// <exception cref="ImageFormatException">A table's size is not a multiple of any entry size, or an entry is out of bounds.</exception>
    public static KernelPatchTables Read(ElfFile elf, KernelVersion? version)
    {
        ArgumentNullException.ThrowIfNull(elf);
        var ctx = new Context(elf);
        var infos = new List<KernelTableInfo>();

        var (altFormat, alts) = ReadAlternatives(ctx, version, infos);
        var (para, paraSize) = ReadParavirt(ctx, infos);
        var (locks, absolute) = ReadLocks(ctx, version, infos);
        var retpolines = ReadRelativeSites(ctx, RetpolineSites, KernelSiteKind.Retpoline, infos);
        var returns = ReadRelativeSites(ctx, ReturnSites, KernelSiteKind.Return, infos);

        return new KernelPatchTables
        {
            AltFormat = altFormat,
            Alternatives = alts,
            Paravirt = para,
            ParavirtEntrySize = paraSize,
            SmpLocks = locks,
            SmpLocksAbsolute = absolute,
            Retpolines = [.. retpolines.Select(s => new KernelRetpolineSite(s.Index, s.Address))],
            Returns = [.. returns.Select(s => new KernelReturnSite(s.Index, s.Address))],
            Tables = infos,
            PvOps = PvOpsTable.Find(elf, para),
        };
    }

    /// <summary>The same tables with another <c>pv_ops</c>: a module's paravirt sites call through the kernel's.</summary>
    internal KernelPatchTables WithPvOps(PvOpsTable? pvOps) => new()
    {
        AltFormat = AltFormat,
        Alternatives = Alternatives,
        Paravirt = Paravirt,
        ParavirtEntrySize = ParavirtEntrySize,
        SmpLocks = SmpLocks,
        SmpLocksAbsolute = SmpLocksAbsolute,
        Retpolines = Retpolines,
        Returns = Returns,
        Tables = Tables,
        PvOps = pvOps,
    };

    /// <summary>Number of sites of one kind.</summary>
    public int Count(KernelSiteKind kind) => kind switch
    {
        KernelSiteKind.Alternative => Alternatives.Length,
        KernelSiteKind.Paravirt => Paravirt.Length,
        KernelSiteKind.SmpLock => SmpLocks.Length,
        KernelSiteKind.Retpoline => Retpolines.Length,
        KernelSiteKind.Return => Returns.Length,
        _ => 0,
    };

    private sealed class Context(ElfFile elf)
    {
        public ElfFile Elf { get; } = elf;
        public ElfSection? Replacement { get; } = elf.FindSection(AltReplacement);

        /// <summary>Null when [address, address + length) lies in one executable section; else the problem.</summary>
        public string? CheckCode(string what, ulong address, int length, bool allowReplacement = true)
        {
            var s = Elf.SectionContaining(address);
            if (s is not { } sec)
                return $"{what} 0x{address:x} is outside every section with file bytes";
            if (!sec.IsExecutable)
                return $"{what} 0x{address:x} lies in {sec.Name}, which is not executable";
            if (!allowReplacement && sec.Name == AltReplacement)
                return $"{what} 0x{address:x} lies in {AltReplacement}, not in the kernel's text";
            if (!sec.Contains(address, (ulong)length))
                return $"{what} 0x{address:x} (+{length}) runs past the end of {sec.Name} (0x{sec.EndAddress:x})";
            return null;
        }

        public string Fail(string table, int index, ulong entry, string format, string problem) =>
            $"{Elf.Name}: {table}[{index}] at 0x{entry:x} ({format}): {problem}";
    }

    private static (AltInstrFormat?, ImmutableArray<KernelAltSite>) ReadAlternatives(Context ctx, KernelVersion? version, List<KernelTableInfo> infos)
    {
        var elf = ctx.Elf;
        if (FindTable(elf, AltInstructions) is not { } sec)
            return (null, []);
        var expected = AltInstrFormats.ExpectedFor(version);
        var candidates = AltInstrFormats.Preference.Where(f => AltInstrFormats.EntryCount(f, sec.Size, elf.PointerSize) is not null).ToList();
        if (candidates.Count == 0)
            throw new ImageFormatException(
                $"{elf.Name}: {AltInstructions}: size {sec.Size} is not a multiple of any alt_instr entry size (12, 13, 14{(elf.PointerSize == 8 ? ", 24" : "")} bytes)");
        if (sec.Size == 0)
        {
            var f = expected is { } e && candidates.Contains(e) ? e : candidates[0];
            infos.Add(new KernelTableInfo(KernelSiteKind.Alternative, sec.Name, sec.Address, 0, f.ShortName(), f.EntrySize(elf.PointerSize), 0, 0));
            return (f, []);
        }
        var fits = new List<(AltInstrFormat Format, KernelAltSite[] Sites)>();
        var errors = new Dictionary<AltInstrFormat, string>();
        foreach (var f in candidates)
        {
            if (TryReadAlt(ctx, sec, f, out var sites, out var error))
                fits.Add((f, sites));
            else
                errors[f] = error!;
        }
        if (fits.Count == 0)
        {
            var primary = expected is { } e && errors.ContainsKey(e) ? e : candidates[0];
            var others = candidates.Where(c => c != primary).Select(c => c.ShortName()).ToList();
            throw new ImageFormatException(errors[primary] + (others.Count > 0 ? $" (other layouts tried, none fits: {string.Join(", ", others)})" : ""));
        }
        var chosen = fits.FirstOrDefault(x => x.Format == expected);
        if (chosen.Sites is null)
            chosen = fits[0];
        int es = chosen.Format.EntrySize(elf.PointerSize);
        infos.Add(new KernelTableInfo(KernelSiteKind.Alternative, sec.Name, sec.Address, sec.Size, chosen.Format.ShortName(), es, chosen.Sites.Length, chosen.Sites.Length));
        return (chosen.Format, [.. chosen.Sites]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool TryReadAlt(Context ctx, ElfSection sec, AltInstrFormat f, out KernelAltSite[] sites, out string? error)
    {
        var elf = ctx.Elf;
        int ptr = elf.PointerSize, es = f.EntrySize(ptr);
        var data = elf.SectionBytes(sec).Span;
        int n = AltInstrFormats.EntryCount(f, sec.Size, ptr) ?? 0;
        sites = new KernelAltSite[n];
        error = null;
        string name = f.ShortName();
        var last = new byte[es];
        for (int i = 0; i < n; i++)
        {
            var e = data.Slice(i * es, Math.Min(es, data.Length - i * es));
            if (e.Length < es)
            {
                // The 2.6-era asm aligns *before* each entry, so the last one lacks its padding bytes.
                Array.Clear(last);
                e.CopyTo(last);
                e = last;
            }
            ulong ea = sec.Address + (ulong)i * (ulong)es;
            ulong instr, repl;
            ushort cpuid, flags = 0;
            bool not = false;
            byte il, rl, pad = 0;
            bool padOk = true;
            switch (f)
            {
                case AltInstrFormat.Relative12:
                case AltInstrFormat.Relative13:
                {
                    instr = elf.AddressPlus(ea, I32(e, 0));
                    repl = elf.AddressPlus(ea + 4, I32(e, 4));
                    ushort raw = U16(e, 8);
                    not = (raw & 0x8000) != 0;
                    cpuid = (ushort)(raw & 0x7fff);
                    il = e[10];
                    rl = e[11];
                    if (f == AltInstrFormat.Relative13)
                        pad = e[12];
                    break;
                }
                case AltInstrFormat.Relative14:
                {
                    instr = elf.AddressPlus(ea, I32(e, 0));
                    repl = elf.AddressPlus(ea + 4, I32(e, 4));
                    uint ft = BinaryPrimitives.ReadUInt32LittleEndian(e[8..]);
                    cpuid = (ushort)ft;
                    flags = (ushort)(ft >> 16);
                    not = (flags & 1) != 0;
                    il = e[12];
                    rl = e[13];
                    break;
                }
                default:
                {
                    instr = ElfFile.ReadPointer(e, ptr);
                    repl = ElfFile.ReadPointer(e[ptr..], ptr);
                    int o = 2 * ptr;
                    if (f == AltInstrFormat.AbsoluteByteCpuid)
                    {
                        cpuid = e[o];
                        il = e[o + 1];
                        rl = e[o + 2];
                        padOk = !e[(o + 3)..].ContainsAnyExcept((byte)0);
                    }
                    else
                    {
                        cpuid = U16(e, o);
                        il = e[o + 2];
                        rl = e[o + 3];
                        padOk = !e[(o + 4)..].ContainsAnyExcept((byte)0);
                    }
                    break;
                }
            }
            string? problem =
                !padOk ? "padding bytes are not zero"
                : il > X86.MaxPatchLength ? $"instrlen {il} exceeds MAX_PATCH_LEN {X86.MaxPatchLength}"
                : rl > il ? $"replacementlen {rl} is larger than instrlen {il}"
                : pad > il ? $"padlen {pad} is larger than instrlen {il}"
                : cpuid >= MaxFeature ? $"feature {cpuid} ({cpuid >> 5}*32+{cpuid & 31}) is implausible (must be below {MaxFeature})"
                : ctx.CheckCode("instruction", instr, il, allowReplacement: false)
                ?? CheckReplacement(ctx, repl, rl);
            if (problem is not null)
            {
                error = ctx.Fail(AltInstructions, i, ea, name, problem);
                return false;
            }
            sites[i] = new KernelAltSite(i, instr, repl, cpuid, not, il, rl, pad, flags);
        }
        return true;
    }

    private static string? CheckReplacement(Context ctx, ulong repl, int length)
    {
        if (ctx.Replacement is not { } rs)
            return ctx.CheckCode("replacement", repl, length);
        return rs.Contains(repl, (ulong)length)
            ? null
            : $"replacement 0x{repl:x} (+{length}) is outside {AltReplacement} (0x{rs.Address:x} … 0x{rs.EndAddress:x})";
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (ImmutableArray<KernelParavirtSite>, int) ReadParavirt(Context ctx, List<KernelTableInfo> infos)
    {
        var elf = ctx.Elf;
        int ptr = elf.PointerSize, es = 2 * ptr;
        if (FindTable(elf, ParaInstructions) is not { } sec)
            return ([], es);
        if (sec.Size % (ulong)es != 0)
            throw new ImageFormatException(
                $"{elf.Name}: {ParaInstructions}: size {sec.Size} is not a multiple of the {es}-byte paravirt_patch_site entry");
        var data = elf.SectionBytes(sec).Span;
        int n = data.Length / es;
        var sites = new KernelParavirtSite[n];
        for (int i = 0; i < n; i++)
        {
            var e = data.Slice(i * es, es);
            ulong ea = sec.Address + (ulong)i * (ulong)es;
            ulong instr = ElfFile.ReadPointer(e, ptr);
            byte type = e[ptr], len = e[ptr + 1];
            ushort clobbers = U16(e, ptr + 2);
            string? problem = len > X86.MaxPatchLength ? $"len {len} exceeds MAX_PATCH_LEN {X86.MaxPatchLength}"
                : len == 0 ? "len is 0"
                : ctx.CheckCode("site", instr, len);
            if (problem is not null)
                throw new ImageFormatException(ctx.Fail(ParaInstructions, i, ea, $"paravirt_patch_site, {es} bytes", problem));
            sites[i] = new KernelParavirtSite(i, instr, type, len, clobbers);
        }
        infos.Add(new KernelTableInfo(KernelSiteKind.Paravirt, sec.Name, sec.Address, sec.Size,
            $"ptr{ptr * 8}+type+len+clobbers", es, n, n));
        return ([.. sites], es);
    }

    private static (ImmutableArray<KernelLockSite>, bool) ReadLocks(Context ctx, KernelVersion? version, List<KernelTableInfo> infos)
    {
        var elf = ctx.Elf;
        if (FindTable(elf, SmpLocksSection) is not { } sec)
            return ([], false);
        string? relError = null, absError = null;
        List<(int Index, ulong Address)>? rel = null, abs = null;
        if (sec.Size % 4 == 0)
            rel = TryReadPointerTable(ctx, sec, relative: true, out relError);
        if (sec.Size % (ulong)elf.PointerSize == 0)
            abs = TryReadPointerTable(ctx, sec, relative: false, out absError);
        if (rel is null && abs is null)
        {
            if (relError is null && absError is null)
                throw new ImageFormatException($"{elf.Name}: {SmpLocksSection}: size {sec.Size} is not a multiple of 4 bytes");
            throw new ImageFormatException((relError ?? absError)! + (relError is not null && absError is not null ? " (absolute pointers do not fit either)" : ""));
        }
        bool preferAbsolute = version is { Major: 2, Minor: 6, Patch: < 35 };
        bool useAbs = abs is not null && (rel is null || preferAbsolute);
        var list = useAbs ? abs! : rel!;
        int es = useAbs ? elf.PointerSize : 4;
        infos.Add(new KernelTableInfo(KernelSiteKind.SmpLock, sec.Name, sec.Address, sec.Size,
            useAbs ? $"absolute-ptr{es * 8}" : "s32-relative", es, (int)(sec.Size / (ulong)es), list.Count));
        return ([.. list.Select(x => new KernelLockSite(x.Index, x.Address))], useAbs);
    }

    private static List<(int Index, ulong Address)> ReadRelativeSites(Context ctx, string section, KernelSiteKind kind, List<KernelTableInfo> infos)
    {
        var elf = ctx.Elf;
        if (FindTable(elf, section) is not { } sec)
            return [];
        if (sec.Size % 4 != 0)
            throw new ImageFormatException($"{elf.Name}: {section}: size {sec.Size} is not a multiple of the 4-byte s32 entry");
        var list = TryReadPointerTable(ctx, sec, relative: true, out var error) ?? throw new ImageFormatException(error!);
        infos.Add(new KernelTableInfo(kind, sec.Name, sec.Address, sec.Size, "s32-relative", 4, (int)(sec.Size / 4), list.Count));
        return list;
    }

    /// <summary>
    /// The section of a patch table, or null when the image has none. A table section that exists with a
    /// size but has no bytes in the file (SHT_NOBITS or SHT_NULL) is a corrupt image, not an empty table:
    /// patching on would silently leave every one of its sites alone.
    /// </summary>
    private static ElfSection? FindTable(ElfFile elf, string name)
    {
        if (elf.FindSection(name) is not { } sec)
            return null;
        if (!ElfFile.HasBytesInFile(sec))
        {
            if (sec.Size == 0)
                return null;
            throw new ImageFormatException($"{elf.Name}: {name}: section of {sec.Size} bytes has no bytes in the file (sh_type {sec.Type})");
        }
        if (sec.Size > ImageLimits.MaxTableSize)
            throw new ImageFormatException($"{elf.Name}: {name}: section of {sec.Size} bytes is implausibly large for a patch table (at most {ImageLimits.MaxTableSize})");
        return sec;
    }

    /// <summary>Reads a table of self-relative s32 or absolute pointers to code; zero entries are padding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static List<(int Index, ulong Address)>? TryReadPointerTable(Context ctx, ElfSection sec, bool relative, out string? error)
    {
        var elf = ctx.Elf;
        int es = relative ? 4 : elf.PointerSize;
        var data = elf.SectionBytes(sec).Span;
        int n = data.Length / es;
        var list = new List<(int, ulong)>(n);
        error = null;
        for (int i = 0; i < n; i++)
        {
            var e = data.Slice(i * es, es);
            ulong ea = sec.Address + (ulong)i * (ulong)es;
            ulong target;
            if (relative)
            {
                int off = I32(e, 0);
                if (off == 0) continue;
                target = elf.AddressPlus(ea, off);
            }
            else
            {
                target = ElfFile.ReadPointer(e, es);
                if (target == 0) continue;
            }
            if (ctx.CheckCode("target", target, 1) is { } problem)
            {
                error = ctx.Fail(sec.Name, i, ea, relative ? "s32-relative" : $"absolute-ptr{es * 8}", problem);
                return null;
            }
            list.Add((i, target));
        }
        return list;
    }

    private static int I32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadInt32LittleEndian(d[o..]);
    private static ushort U16(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt16LittleEndian(d[o..]);
}
