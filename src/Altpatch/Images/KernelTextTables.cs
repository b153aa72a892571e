using System.Buffers.Binary;
using System.Collections.Immutable;
using Altpatch.Code;

namespace Altpatch.Images;

/// <summary>One <c>struct jump_entry</c> of <c>__jump_table</c>: a jump label (static branch).</summary>
/// <param name="Index">Entry index in the table (link order).</param>
/// <param name="Code">The address of the 2- or 5-byte <c>jmp</c>/NOP (<c>jump_entry_code()</c>).</param>
/// <param name="Target">Where the <c>jmp</c> goes (<c>jump_entry_target()</c>).</param>
/// <param name="Key">The <c>struct static_key</c> (<c>jump_entry_key()</c>, flag bits removed).</param>
/// <param name="Branch">The entry's branch bit (<c>jump_entry_is_branch()</c>): the code is a <c>jmp</c> when the key's
/// enabled state differs from it.</param>
/// <param name="Length">2 or 5 (<c>arch_jump_entry_size()</c>).</param>
/// <param name="IsJump">Whether the image holds the <c>jmp</c> (else the NOP).</param>
public readonly record struct KernelJumpEntry(int Index, ulong Code, ulong Target, ulong Key, bool Branch, int Length, bool IsJump);

/// <summary>One <c>struct static_call_site</c> of <c>.static_call_sites</c> (x86-64, <c>CONFIG_HAVE_STATIC_CALL_INLINE</c>).</summary>
/// <param name="Index">Entry index in the table (link order).</param>
/// <param name="Address">The call/jmp/jcc site (<c>static_call_addr()</c>).</param>
/// <param name="Key">The <c>struct static_call_key</c> (<c>static_call_key()</c>, flag bits removed).</param>
/// <param name="Tail">A tail call (<c>STATIC_CALL_SITE_TAIL</c>): <c>jmp</c> or <c>jcc</c>, not <c>call</c>.</param>
/// <param name="Length">5, or 6 for a <c>jcc rel32</c>.</param>
/// <param name="Trampoline">The target the image's instruction branches to (its <c>__SCT__</c> trampoline), 0 when the
/// site holds no branch.</param>
public readonly record struct KernelStaticCallSite(int Index, ulong Address, ulong Key, bool Tail, int Length, ulong Trampoline);

/// <summary>One <c>__mcount_loc</c> record: the <c>call __fentry__</c> at a traced function's start.</summary>
/// <param name="Index">Entry index in the table (zero padding words are skipped but counted).</param>
/// <param name="Address">The call's address.</param>
public readonly record struct KernelMcountSite(int Index, ulong Address);

/// <summary>A static-call trampoline (<c>__SCT__name</c> in <c>.static_call.text</c>): <c>jmp func</c> or a RET form,
/// then the signature <c>ud1 %esp,%ecx</c> (<c>0f b9 cc</c>).</summary>
/// <param name="Index">Index in address order.</param>
/// <param name="Address">The trampoline's first byte.</param>
/// <param name="Name">The call's name (<c>cond_resched</c> for <c>__SCT__cond_resched</c>) when symbols named it, else null.</param>
public readonly record struct KernelStaticCallTrampoline(int Index, ulong Address, string? Name);

/// <summary>One of ftrace's own patched instructions: <c>ftrace_call</c> and <c>ftrace_regs_call</c> (<c>call ftrace_stub</c> as
/// built; <c>ftrace_update_ftrace_func()</c> points them at the tracing function) and, where it exists (i386),
/// <c>ftrace_graph_call</c> (<c>jmp ftrace_stub</c>, or <c>jmp ftrace_graph_caller</c> while the graph tracer runs).</summary>
/// <param name="Index">Index (in the order above).</param>
/// <param name="Address">The instruction (the label's address).</param>
/// <param name="Name">The label.</param>
/// <param name="Stub">Where it goes as built (<c>ftrace_stub</c>).</param>
public readonly record struct KernelFtraceCall(int Index, ulong Address, string Name, ulong Stub);

/// <summary>
/// The tables of the kernel's other boot-time text writers — <c>__jump_table</c> (<c>jump_label_init()</c>),
/// <c>.static_call_sites</c> and the <c>__SCT__</c> trampolines (<c>static_call_init()</c>, <c>static_call_update()</c>),
/// <c>__mcount_loc</c> (<c>ftrace_init()</c>) — read and checked. Data only.
/// </summary>
/// <remarks>
/// <para>None of these is an ELF section of vmlinux: the linker script puts them inside <c>.rodata</c> and
/// <c>.init.data</c> between <c>__start_*</c>/<c>__stop_*</c> symbols. They are found by those symbols (kallsyms of a
/// <c>CONFIG_KALLSYMS_ALL</c> kernel, or a System.map), else by a scan: the longest run of entries that each
/// satisfy the table's checks (see <see cref="Read"/>). <see cref="Tables"/> says which.</para>
/// <para><b>Checks</b> (an <see cref="ImageFormatException"/> names table, index and entry address): jump entries'
/// code must hold a <c>jmp</c> to their target or the NOP of its size, their target must be code and their key must lie
/// in an allocated data section; static call sites must hold what <c>__static_call_validate()</c> accepts for their
/// tail flag; mcount records must lie in code; trampolines must carry the signature.</para>
/// </remarks>
public sealed class KernelTextTables
{
    /// <summary>Table names used in messages and reports.</summary>
    public const string JumpTable = "__jump_table", StaticCallSites = ".static_call_sites", McountLoc = "__mcount_loc",
        StaticCallText = ".static_call.text";

    /// <summary>The trampoline signature <c>ud1 %esp,%ecx</c> at offset 5 (<c>tramp_ud[]</c>).</summary>
    public static ReadOnlySpan<byte> TrampolineSignature => [0x0f, 0xb9, 0xcc];

    /// <summary><c>cs cs cs xorl %eax,%eax</c> (<c>xor5rax[]</c>): the call form of <c>__static_call_return0</c>.</summary>
    public static ReadOnlySpan<byte> Xor5Rax => [0x2e, 0x2e, 0x2e, 0x31, 0xc0];

    /// <summary>Size of a static-call trampoline.</summary>
    public const int TrampolineSize = 8;

    /// <summary>Prefix of the trampolines' symbol names.</summary>
    public const string TrampolinePrefix = "__SCT__";

    /// <summary>Fewest entries a scan accepts as a table.</summary>
    internal const int MinScanEntries = 8;

    private KernelTextTables() { }

    /// <summary>Jump entries in table order.</summary>
    public ImmutableArray<KernelJumpEntry> JumpEntries { get; private init; } = [];

    /// <summary>Static call sites in table order (empty on i386).</summary>
    public ImmutableArray<KernelStaticCallSite> StaticCalls { get; private init; } = [];

    /// <summary>mcount records in table order (zero padding skipped).</summary>
    public ImmutableArray<KernelMcountSite> Mcount { get; private init; } = [];

    /// <summary>Static-call trampolines in address order.</summary>
    public ImmutableArray<KernelStaticCallTrampoline> Trampolines { get; private init; } = [];

    /// <summary>ftrace's own call sites, found by their symbols (empty without symbols).</summary>
    public ImmutableArray<KernelFtraceCall> FtraceCalls { get; private init; } = [];

    /// <summary>The labels of <see cref="FtraceCalls"/>, in order.</summary>
    public static IReadOnlyList<string> FtraceCallNames { get; } = ["ftrace_call", "ftrace_regs_call", "ftrace_graph_call"];

    /// <summary><c>__fentry__</c> (<c>MCOUNT_ADDR</c>): from the symbols, else the target the mcount records call; null
    /// without records.</summary>
    public ulong? Fentry { get; private init; }

    /// <summary>One summary per table found; <see cref="KernelTableInfo.Format"/> says how it was found.</summary>
    public IReadOnlyList<KernelTableInfo> Tables { get; private init; } = [];

    /// <summary>Reads the tables of a kernel ELF file.</summary>
    /// <param name="elf">The vmlinux.</param>
    /// <param name="nops">The kernel's <c>x86_nops[]</c> (what the NOP state of a jump label is).</param>
    /// <param name="symbols">The image's symbols (its kallsyms, or a System.map of the same build), or null.</param>
    /// <exception cref="ImageFormatException">A table bound is inconsistent or an entry fails its checks.</exception>
    public static KernelTextTables Read(ElfFile elf, NopTable nops, KernelSymbols? symbols) => ReadAny(elf, nops, symbols, null);

    /// <summary>Reads the tables of a linked module (<see cref="KernelModuleLink.Elf"/>): its sections <c>__jump_table</c>,
    /// <c>.static_call_sites</c> and <c>__mcount_loc</c>, whose keys and call targets may lie in the kernel.</summary>
    /// <param name="module">The linked module (sections at their load addresses, relocations applied).</param>
    /// <param name="nops">The kernel's <c>x86_nops[]</c>.</param>
    /// <param name="kernel">The kernel's ELF file at the addresses it runs at: a key or trampoline in one of its allocated
    /// sections is accepted.</param>
    /// <exception cref="ImageFormatException">An entry fails its checks.</exception>
    public static KernelTextTables ReadModule(ElfFile module, NopTable nops, ElfFile kernel)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        return ReadAny(module, nops, null, kernel);
    }

    private static KernelTextTables ReadAny(ElfFile elf, NopTable nops, KernelSymbols? symbols, ElfFile? kernel)
    {
        ArgumentNullException.ThrowIfNull(elf);
        ArgumentNullException.ThrowIfNull(nops);
        var r = new Reader(elf, nops, symbols, kernel);
        var infos = new List<KernelTableInfo>();
        var trampolines = r.ReadTrampolines(infos);
        var jumps = r.ReadJumpTable(infos);
        var calls = r.ReadStaticCalls(trampolines, infos);
        var (mcount, fentry) = r.ReadMcount(infos);
        var ftraceCalls = r.ReadFtraceCalls();
        return new KernelTextTables
        {
            FtraceCalls = ftraceCalls,
            JumpEntries = jumps,
            StaticCalls = calls,
            Mcount = mcount,
            Trampolines = trampolines,
            Fentry = fentry,
            Tables = infos,
        };
    }

    /// <summary>Number of sites of one kind (<see cref="KernelSiteKind.Mcount"/>, <see cref="KernelSiteKind.JumpLabel"/>,
    /// <see cref="KernelSiteKind.StaticCall"/>, <see cref="KernelSiteKind.StaticCallTrampoline"/>).</summary>
    public int Count(KernelSiteKind kind) => kind switch
    {
        KernelSiteKind.Mcount => Mcount.Length,
        KernelSiteKind.JumpLabel => JumpEntries.Length,
        KernelSiteKind.StaticCall => StaticCalls.Length,
        KernelSiteKind.StaticCallTrampoline => Trampolines.Length,
        KernelSiteKind.FtraceCall => FtraceCalls.Length,
        _ => 0,
    };

    private sealed class Reader(ElfFile elf, NopTable nops, KernelSymbols? symbols, ElfFile? kernel)
    {
        /// <summary>A module's table: its section, or (a module without it) an empty one.</summary>
        private (ulong Start, int Size)? ModuleTable(string section, int entrySize)
        {
            if (elf.FindSection(section) is not { } s || s.Size == 0 || !ElfFile.HasBytesInFile(s))
                return (0, 0);
            if (s.Size % (ulong)entrySize != 0)
                throw new ImageFormatException($"{elf.Name}: {section}: size {s.Size} is not a multiple of the {entrySize}-byte entry");
            return (s.Address, (int)s.Size);
        }

        /// <summary>Where a key may live: the file's data, or for a module also any allocated section of the kernel (a
        /// static call site of a module names the kernel's trampoline when the key is not exported).</summary>
        private bool IsKey(ulong address) =>
            IsData(address) || (kernel?.Sections.Any(s => s.IsAllocated && s.Size > 0 && s.Contains(address)) ?? false);

        private readonly int ptr = elf.PointerSize;
        private readonly ElfSection[] code = [.. elf.Sections.Where(s => s.IsAllocated && s.IsExecutable && ElfFile.HasBytesInFile(s) && s.Size > 0)];
        private readonly ElfSection[] data = [.. elf.Sections.Where(s => s.IsAllocated && !s.IsExecutable && s.Size > 0 && s.Address != 0)];

        private string Fail(string table, int index, ulong entry, string problem) =>
            $"{elf.Name}: {table}[{index}] at 0x{entry:x}: {problem}";

        // [start, size) of the code and data sections, for the checks run on every scanned position
        private readonly (ulong Start, ulong Size)[] codeRanges = [.. elf.Sections.Where(s => s.IsAllocated && s.IsExecutable && ElfFile.HasBytesInFile(s) && s.Size > 0).Select(s => (s.Address, s.Size))];
        private readonly (ulong Start, ulong Size)[] dataRanges = [.. elf.Sections.Where(s => s.IsAllocated && !s.IsExecutable && s.Size > 0 && s.Address != 0).Select(s => (s.Address, s.Size))];

        // [Low, Low + Span): from the lowest code address to the end of the highest code section
        private readonly (ulong Low, ulong Span) codeBounds = CodeBounds(elf);

        private static (ulong, ulong) CodeBounds(ElfFile elf)
        {
            var code = elf.Sections.Where(s => s.IsAllocated && s.IsExecutable && ElfFile.HasBytesInFile(s) && s.Size > 0).ToList();
            if (code.Count == 0)
                return (0, 0);
            ulong low = code.Min(s => s.Address);
            return (low, code.Max(s => s.Address + s.Size) - low);
        }

        private bool IsCode(ulong address, int length)
        {
            foreach (var (start, size) in codeRanges)
            {
                ulong o = address - start;
                if (address >= start && o <= size && (ulong)length <= size - o)
                    return true;
            }
            return false;
        }

        /// <summary>In an allocated, non-executable section (data, read-only data, .bss): where keys live.</summary>
        private bool IsData(ulong address)
        {
            foreach (var (start, size) in dataRanges)
            {
                if (address - start < size)
                    return true;
            }
            return false;
        }

        private bool TryBytes(ulong address, int length, out ReadOnlySpan<byte> bytes)
        {
            bool ok = elf.TryReadBytes(address, length, out var b);
            bytes = b;
            return ok;
        }

        private ulong? Symbol(string name) => symbols is not null && symbols.TryGetAddress(name, out var a) ? a : null;

        /// <summary>[start, stop) of a table bounded by two symbols, checked to lie in one section with file bytes.</summary>
        private (ulong Start, int Size)? Bounds(string table, string start, string stop, int entrySize)
        {
            if (Symbol(start) is not { } a || Symbol(stop) is not { } b)
                return null;
            if (b < a)
                throw new ImageFormatException($"{elf.Name}: {table}: {stop} (0x{b:x}) is below {start} (0x{a:x})");
            ulong size = b - a;
            if (size % (ulong)entrySize != 0)
                throw new ImageFormatException($"{elf.Name}: {table}: {size} bytes from {start} to {stop} is not a multiple of the {entrySize}-byte entry");
            if (size > 0 && !elf.TryGetFileOffset(a, (int)size, out _))
                throw new ImageFormatException($"{elf.Name}: {table}: [0x{a:x}, 0x{b:x}) ({start}..{stop}) is not inside one section with file bytes");
            return (a, (int)size);
        }

        // ---------------------------------------------------------------- trampolines

        public ImmutableArray<KernelStaticCallTrampoline> ReadTrampolines(List<KernelTableInfo> infos)
        {
            var list = new List<(ulong Address, string? Name)>();
            string how;
            if (symbols is not null)
            {
                var seen = new HashSet<ulong>();
                foreach (var sym in symbols.All)              // sorted by address
                {
                    if (sym.Name.StartsWith(TrampolinePrefix, StringComparison.Ordinal) && sym.IsText && seen.Add(sym.Address))
                        list.Add((sym.Address, sym.Name[TrampolinePrefix.Length..]));
                }
            }
            if (list.Count > 0)
                how = "__SCT__* symbols";
            else
            {
                list.AddRange(ScanTrampolines().Select(a => (a, (string?)null)));
                how = "scan for the ud1 %esp,%ecx signature";
            }
            var result = new KernelStaticCallTrampoline[list.Count];
            for (int i = 0; i < list.Count; i++)
            {
                var (addr, name) = list[i];
                string? problem = !IsCode(addr, TrampolineSize) ? $"0x{addr:x} (+{TrampolineSize}) is not inside an executable section"
                    : !TryBytes(addr, TrampolineSize, out var b) || !b[5..].SequenceEqual(TrampolineSignature)
                        ? $"no trampoline signature 0f b9 cc at +5 (found {Hex(b)})"
                    : b[0] is not (X86Op.Jmp32 or X86Op.Ret) ? $"starts with {b[0]:x2}, neither jmp rel32 nor ret"
                    : null;
                if (problem is not null)
                    throw new ImageFormatException(Fail(StaticCallText, i, addr, (name is null ? "" : $"{TrampolinePrefix}{name}: ") + problem));
                result[i] = new KernelStaticCallTrampoline(i, addr, name);
            }
            if (result.Length > 0)
                infos.Add(new KernelTableInfo(KernelSiteKind.StaticCallTrampoline, StaticCallText, result[0].Address,
                    result[^1].Address + TrampolineSize - result[0].Address, how, TrampolineSize, result.Length, result.Length));
            return [.. result];
        }

        /// <summary>Trampolines without symbols: the longest run of 4-aligned 8-byte slots of one executable section
        /// that each start with <c>jmp rel32</c> or <c>ret</c> and carry the signature at +5.</summary>
        private List<ulong> ScanTrampolines()
        {
            var best = new List<ulong>();
            foreach (var s in code)
            {
                var bytes = elf.SectionBytes(s).Span;
                var run = new List<ulong>();
                int from = 0;
                while (true)
                {
                    int hit = bytes[from..].IndexOf(TrampolineSignature);
                    if (hit < 0)
                        break;
                    int sig = from + hit;
                    from = sig + 1;
                    int start = sig - 5;
                    ulong addr = s.Address + (ulong)start;
                    if (start < 0 || (addr & 3) != 0 || bytes[start] is not (X86Op.Jmp32 or X86Op.Ret))
                        continue;
                    if (run.Count > 0 && run[^1] + TrampolineSize != addr)
                    {
                        if (run.Count > best.Count)
                            best = run;
                        run = [];
                    }
                    run.Add(addr);
                }
                if (run.Count > best.Count)
                    best = run;
            }
            return best.Count >= 2 ? best : [];
        }

        // ---------------------------------------------------------------- __jump_table

        private int JumpEntrySize => ptr == 8 ? 16 : 12;

        public ImmutableArray<KernelJumpEntry> ReadJumpTable(List<KernelTableInfo> infos)
        {
            int es = JumpEntrySize;
            string how;
            ulong start;
            int size;
            if (kernel is not null)
            {
                (start, size) = ModuleTable(JumpTable, es)!.Value;
                how = "section";
            }
            else if (Bounds(JumpTable, "__start___jump_table", "__stop___jump_table", es) is { } b)
            {
                (start, size) = b;
                how = "__start___jump_table..__stop___jump_table";
            }
            else if (ScanRun(es, (at, e) => IsCode(elf.AddressPlus(at, I32(e, 0)), 2) && IsCode(elf.AddressPlus(at + 4, I32(e, 4)), 1)
                                         && IsData(elf.AddressPlus(at + 8, ptr == 8 ? BinaryPrimitives.ReadInt64LittleEndian(e[8..]) : I32(e, 8)) & ~3UL),
                         at => JumpEntry(at, 0, out _) is null) is { } run)
            {
                (start, size) = run;
                how = "scan";
            }
            else
                return [];
            int n = size / es;
            var list = new KernelJumpEntry[n];
            for (int i = 0; i < n; i++)
            {
                ulong at = start + (ulong)(i * es);
                if (JumpEntry(at, i, out list[i]) is { } problem)
                    throw new ImageFormatException(Fail(JumpTable, i, at, problem));
            }
            infos.Add(new KernelTableInfo(KernelSiteKind.JumpLabel, JumpTable, start, (ulong)size,
                $"s32 code, s32 target, long key ({how})", es, n, n));
            return [.. list];
        }

        /// <summary>Checks one jump entry; null when it is good.</summary>
        private string? JumpEntry(ulong at, int index, out KernelJumpEntry entry)
        {
            entry = default;
            if (!TryBytes(at, JumpEntrySize, out var e))
                return "the entry has no bytes in the file";
            ulong codeAddr = elf.AddressPlus(at, I32(e, 0));
            ulong target = elf.AddressPlus(at + 4, I32(e, 4));
            long keyRel = ptr == 8 ? BinaryPrimitives.ReadInt64LittleEndian(e[8..]) : I32(e, 8);
            ulong keyRaw = elf.AddressPlus(at + 8, keyRel);
            ulong key = keyRaw & ~3UL;
            bool branch = (keyRaw & 1) != 0;
            if (!IsCode(codeAddr, 2))
                return $"code 0x{codeAddr:x} is not in an executable section";
            if (!IsCode(target, 1))
                return $"target 0x{target:x} is not in an executable section";
            if (!IsKey(key))
                return $"key 0x{key:x} is not in an allocated data section";
            int length;
            bool jump;
            TryBytes(codeAddr, IsCode(codeAddr, 5) ? 5 : 2, out var c);
            if (c[0] == X86Op.Jmp8)
            {
                (length, jump) = (2, true);
                ulong t = elf.AddressPlus(codeAddr + 2, (sbyte)c[1]);
                if (t != target)
                    return $"code 0x{codeAddr:x} is a jmp to 0x{t:x}, not to the entry's target 0x{target:x}";
            }
            else if (c.Length == 5 && c[0] == X86Op.Jmp32)
            {
                (length, jump) = (5, true);
                ulong t = elf.AddressPlus(codeAddr + 5, I32(c, 1));
                if (t != target)
                    return $"code 0x{codeAddr:x} is a jmp to 0x{t:x}, not to the entry's target 0x{target:x}";
            }
            else if (c[..2].SequenceEqual(nops[2]))
                (length, jump) = (2, false);
            else if (c.Length == 5 && c.SequenceEqual(nops[5]))
                (length, jump) = (5, false);
            else
                return $"code 0x{codeAddr:x} holds {Hex(c)}: neither a jmp to the target nor the 2- or 5-byte NOP ({nops.Name})";
            entry = new KernelJumpEntry(index, codeAddr, target, key, branch, length, jump);
            return null;
        }

        // ---------------------------------------------------------------- .static_call_sites

        public ImmutableArray<KernelStaticCallSite> ReadStaticCalls(ImmutableArray<KernelStaticCallTrampoline> trampolines, List<KernelTableInfo> infos)
        {
            const int es = 8;
            var tramps = trampolines.Select(t => t.Address).ToHashSet();
            string how;
            ulong start;
            int size;
            if (kernel is not null)
            {
                (start, size) = ModuleTable(StaticCallSites, es)!.Value;
                how = "section";
            }
            else if (Bounds(StaticCallSites, "__start_static_call_sites", "__stop_static_call_sites", es) is { } b)
            {
                (start, size) = b;
                how = "__start_static_call_sites..__stop_static_call_sites";
            }
            else if (Symbol("__start___jump_table") is not null)
                return [];   // the symbols name the other tables but not this one: a kernel without HAVE_STATIC_CALL_INLINE
            else if (!elf.Is64)
                return [];   // i386 never has HAVE_STATIC_CALL_INLINE (it needs HAVE_OBJTOOL, "if X86_64" in arch/x86/Kconfig of
                             // 6.1 and 6.12): its static calls are trampolines only. The scan cost 60 ms on the 686 image.
            else if (tramps.Count > 0 && ScanRun(es, (at, e) => IsCode(elf.AddressPlus(at, I32(e, 0)), 5) && IsData(elf.AddressPlus(at + 4, I32(e, 4)) & ~3UL),
                         at => StaticCallSite(at, 0, out var s) is null && tramps.Contains(s.Trampoline)) is { } run)
            {
                (start, size) = run;
                how = "scan";
            }
            else
                return [];
            int n = size / es;
            var list = new KernelStaticCallSite[n];
            for (int i = 0; i < n; i++)
            {
                ulong at = start + (ulong)(i * es);
                if (StaticCallSite(at, i, out list[i]) is { } problem)
                    throw new ImageFormatException(Fail(StaticCallSites, i, at, problem));
            }
            infos.Add(new KernelTableInfo(KernelSiteKind.StaticCall, StaticCallSites, start, (ulong)size,
                $"s32 addr, s32 key ({how})", es, n, n));
            return [.. list];
        }

        private string? StaticCallSite(ulong at, int index, out KernelStaticCallSite site)
        {
            site = default;
            if (!TryBytes(at, 8, out var e))
                return "the entry has no bytes in the file";
            ulong addr = elf.AddressPlus(at, I32(e, 0));
            ulong keyRaw = elf.AddressPlus(at + 4, I32(e, 4));
            ulong key = keyRaw & ~3UL;
            bool tail = (keyRaw & 1) != 0;
            if (!IsCode(addr, 5))
                return $"site 0x{addr:x} (+5) is not in an executable section";
            if (!IsKey(key))
                return $"key 0x{key:x} is not in an allocated data section";
            TryBytes(addr, IsCode(addr, 6) ? 6 : 5, out var c);
            int length = 5;
            ulong trampoline = 0;
            bool ok;
            if (c.Length == 6 && c[0] == 0x0f && (c[1] & 0xf0) == 0x80)
            {
                length = 6;
                trampoline = elf.AddressPlus(addr + 6, I32(c, 2));
                ok = tail;
            }
            else if (c[0] is X86Op.Call or X86Op.Jmp32)
            {
                trampoline = elf.AddressPlus(addr + 5, I32(c, 1));
                ok = (c[0] == X86Op.Jmp32) == tail;
            }
            else if (tail)
                ok = c[0] == X86Op.Ret;
            else
                ok = c[..5].SequenceEqual(nops[5]) || c[..5].SequenceEqual(Xor5Rax);
            if (!ok)
                return $"site 0x{addr:x} holds {Hex(c[..length])}, which __static_call_validate() refuses for a {(tail ? "tail" : "non-tail")} call";
            site = new KernelStaticCallSite(index, addr, key, tail, length, trampoline);
            return null;
        }

        // ---------------------------------------------------------------- __mcount_loc

        public (ImmutableArray<KernelMcountSite>, ulong?) ReadMcount(List<KernelTableInfo> infos)
        {
            ulong? fentry = Symbol("__fentry__");
            string how;
            ulong start;
            int size;
            if (kernel is not null)
            {
                (start, size) = ModuleTable(McountLoc, ptr)!.Value;
                how = "section";
            }
            else if (Bounds(McountLoc, "__start_mcount_loc", "__stop_mcount_loc", ptr) is { } b)
            {
                (start, size) = b;
                how = "__start_mcount_loc..__stop_mcount_loc";
            }
            else if (ScanMcount() is { } run)
            {
                (start, size, ulong target) = run;
                how = "scan";
                fentry ??= target;
            }
            else
                return ([], fentry);
            int n = size / ptr;
            var list = new List<KernelMcountSite>(n);
            var table = size == 0 ? [] : elf.ReadBytes(start, size);
            var targets = new Dictionary<ulong, int>();
            for (int i = 0; i < n; i++)
            {
                ulong addr = ElfFile.ReadPointer(table[(i * ptr)..], ptr);
                if (addr == 0)
                    continue;                       // "Skip any NULL pointers"
                if (!IsCode(addr, 5) && addr < 0x4000_0000 && addr % 0x20_0000 == 0)
                    continue;                       // a weak function's zeroed record moved by KASLR (6.12: "!is_kernel_text(addr)")
                if (!IsCode(addr, 5))
                    throw new ImageFormatException(Fail(McountLoc, i, start + (ulong)(i * ptr), $"record 0x{addr:x} (+5) is not in an executable section"));
                list.Add(new KernelMcountSite(i, addr));
                if (fentry is null && TryBytes(addr, 5, out var c) && c[0] == X86Op.Call)
                {
                    ulong t = elf.AddressPlus(addr + 5, I32(c, 1));
                    targets[t] = targets.GetValueOrDefault(t) + 1;
                }
            }
            if (fentry is null && targets.Count > 0)
                fentry = targets.MaxBy(kv => kv.Value).Key;
            infos.Add(new KernelTableInfo(KernelSiteKind.Mcount, McountLoc, start, (ulong)size, $"ptr{ptr * 8} ({how})", ptr, n, list.Count));
            return ([.. list], fentry);
        }

        /// <summary>mcount records without symbols: the longest run of pointer-aligned words of an allocated data section
        /// that each point at a <c>call rel32</c> in code, all to the same target (zero words allowed inside the run).</summary>
        private (ulong Start, int Size, ulong Target)? ScanMcount()
        {
            (ulong Start, int Size, ulong Target, int Records) best = default;
            // The linker script puts __mcount_loc into .init.data (MCOUNT_REC in INIT_DATA); other data holds arrays of
            // function pointers, and a traced function starts with call __fentry__ too: look there only when it exists.
            var where = data.Where(s => s.Name == ".init.data" && ElfFile.HasBytesInFile(s)).ToList();
            if (where.Count == 0)
                where = [.. data.Where(ElfFile.HasBytesInFile)];
            foreach (var s in where)
            {
                var bytes = elf.SectionBytes(s).Span;
                int words = bytes.Length / ptr;
                int runStart = -1, records = 0, lastRecord = -1;
                ulong target = 0;
                void Close()
                {
                    if (runStart >= 0 && records > best.Records)
                        best = (s.Address + (ulong)(runStart * ptr), (lastRecord + 1 - runStart) * ptr, target, records);
                    runStart = -1;
                    records = 0;
                }
                for (int w = 0; w < words; w++)
                {
                    ulong v = ElfFile.ReadPointer(bytes[(w * ptr)..], ptr);
                    if (v == 0)
                        continue;                   // padding (inside a run: "Skip any NULL pointers")
                    if (!IsCode(v, 5) || !TryBytes(v, 5, out var c) || c[0] != X86Op.Call)
                    {
                        Close();
                        continue;
                    }
                    ulong t = elf.AddressPlus(v + 5, I32(c, 1));
                    if (runStart >= 0 && t != target)
                        Close();
                    if (runStart < 0)
                    {
                        runStart = w;
                        target = t;
                    }
                    records++;
                    lastRecord = w;
                }
                Close();
            }
            return best.Records >= MinScanEntries ? (best.Start, best.Size, best.Target) : null;
        }

        // ---------------------------------------------------------------- ftrace's own sites

        public ImmutableArray<KernelFtraceCall> ReadFtraceCalls()
        {
            var list = new List<KernelFtraceCall>();
            foreach (var name in FtraceCallNames)
            {
                if (Symbol(name) is not { } addr)
                    continue;
                byte op = name == "ftrace_graph_call" ? X86Op.Jmp32 : X86Op.Call;
                if (!IsCode(addr, 5) || !TryBytes(addr, 5, out var c) || c[0] != op)
                    throw new ImageFormatException($"{elf.Name}: {name} at 0x{addr:x} does not hold the {(op == X86Op.Call ? "call" : "jmp")} ftrace patches");
                list.Add(new KernelFtraceCall(list.Count, addr, name, elf.AddressPlus(addr + 5, I32(c, 1))));
            }
            return [.. list];
        }

        // ---------------------------------------------------------------- scans

        /// <summary>A cheap first test of one table entry before the full check (most positions fail it).</summary>
        private delegate bool Plausible(ulong at, ReadOnlySpan<byte> entry);

        /// <summary>The longest run of <paramref name="entrySize"/>-byte entries, at any 4-byte phase, in the allocated
        /// data sections with file bytes, for which <paramref name="plausible"/> and then <paramref name="good"/> hold;
        /// null when shorter than <see cref="MinScanEntries"/>.</summary>
        private (ulong Start, int Size)? ScanRun(int entrySize, Plausible plausible, Func<ulong, bool> good)
        {
            // The linker script puts __jump_table and .static_call_sites into RO_AFTER_INIT_DATA, which x86 places in
            // .rodata (6.1) or .data: look there first, elsewhere only when that finds nothing.
            return ScanRun(entrySize, plausible, good, data.Where(s => s.Name is ".rodata" or ".data"))
                ?? ScanRun(entrySize, plausible, good, data.Where(s => s.Name is not (".rodata" or ".data")));
        }

        private (ulong Start, int Size)? ScanRun(int entrySize, Plausible plausible, Func<ulong, bool> good, IEnumerable<ElfSection> where)
        {
            (ulong Start, int Count) best = default;
            foreach (var s in where)
            {
                if (!ElfFile.HasBytesInFile(s))
                    continue;
                var bytes = elf.SectionBytes(s).Span;
                for (int phase = 0; phase < entrySize; phase += 4)
                {
                    int run = 0;
                    ulong runStart = 0;
                    for (int off = phase; off + entrySize <= bytes.Length; off += entrySize)
                    {
                        ulong at = s.Address + (ulong)off;
                        // Every scanned table starts with an s32 offset to code: most words of .rodata fail this bound
                        // before the checks behind the delegates run (the 686's scans took ~20 ms without it).
                        if (elf.AddressPlus(at, I32(bytes, off)) - codeBounds.Low < codeBounds.Span
                            && plausible(at, bytes.Slice(off, entrySize)) && good(at))
                        {
                            if (run++ == 0)
                                runStart = at;
                        }
                        else
                        {
                            if (run > best.Count)
                                best = (runStart, run);
                            run = 0;
                        }
                    }
                    if (run > best.Count)
                        best = (runStart, run);
                }
            }
            return best.Count >= MinScanEntries ? (best.Start, best.Count * entrySize) : null;
        }
    }

    private static int I32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadInt32LittleEndian(d[o..]);

    private static string Hex(ReadOnlySpan<byte> b) => Convert.ToHexString(b).ToLowerInvariant();
}

/// <summary>The opcodes the table checks recognise (text-patching.h).</summary>
file static class X86Op
{
    public const byte Call = 0xe8, Jmp32 = 0xe9, Jmp8 = 0xeb, Ret = 0xc3;
}
