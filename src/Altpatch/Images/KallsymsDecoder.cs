using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text;

namespace Altpatch.Images;

/// <summary>
/// Finds and decodes a kernel's kallsyms tables (what <c>scripts/kallsyms</c> wrote into <c>.rodata</c>) in a
/// vmlinux that has no symbol table, by their structure alone; see <see cref="KallsymsLayout"/> and docs/formats.md.
/// </summary>
/// <remarks>
/// <para>The search, each step checked exactly before the next is tried:</para>
/// <list type="number">
/// <item><c>kallsyms_token_table</c>: every character that occurs in a symbol name is its own one-character token,
/// so the digits are the 20 bytes <c>"0\0" "1\0" … "9\0"</c> at tokens 0x30–0x39. From there the 208 tokens up to
/// 0xff end the table; <c>kallsyms_token_index</c> (256 u16) follows at the next pointer-aligned address and must
/// point at exactly those 256 strings.</item>
/// <item><c>kallsyms_markers</c>: the u32 offsets of every 256th name, strictly increasing from 0 by at least 512
/// (a name takes at least 2 bytes). They end just before the token table, or (6.2–6.3 layout) before
/// <c>kallsyms_seqs_of_names</c>, whose 3 bytes per symbol then fill the gap to the token table.</item>
/// <item><c>kallsyms_names</c> ends just before the markers; its start is where walking names from the last-but-one
/// marker lands exactly on the last marker. <c>kallsyms_num_syms</c> is the u32 before it and must agree with the
/// number of markers. Every name is then expanded and every marker checked.</item>
/// <item><c>kallsyms_offsets</c> and <c>kallsyms_relative_base</c>: after the token index (6.4+) or before
/// <c>kallsyms_num_syms</c> (up to 6.3). The offsets must decode, in one of the two encodings, to addresses in
/// ascending order starting from the relative base, as <c>scripts/kallsyms</c> sorted them.</item>
/// <item><c>kallsyms_seqs_of_names</c>, when present: a permutation of the symbol indexes that lists the names in
/// ascending order.</item>
/// </list>
/// <para>Only the name strings are allocated per symbol.</para>
/// </remarks>
internal sealed class KallsymsDecoder
{
    /// <summary>Tokens 0x30–0x39 of every kallsyms token table: "0\0" … "9\0".</summary>
    private static readonly byte[] DigitTokens = [.. Enumerable.Range(0, 10).SelectMany(i => new[] { (byte)('0' + i), (byte)0 })];

    /// <summary>KSYM_NAME_LEN of 6.1 and later: a name (without its type letter) is shorter than this.</summary>
    private const int KsymNameLen = 512;

    /// <summary>kallsyms_seqs_of_names holds 24-bit indexes; no kernel has more symbols.</summary>
    private const int MaxSymbols = 1 << 24;

    private readonly ElfFile elfFile;
    private readonly string sectionName;
    private readonly ulong baseAddress;
    private readonly byte[] array;
    private readonly int arrayOffset;
    private readonly int arrayLength;
    private readonly int pointerSize;

    private ReadOnlySpan<byte> D => array.AsSpan(arrayOffset, arrayLength);

    private KallsymsDecoder(ElfFile elf, string section, ulong address, ArraySegment<byte> bytes)
    {
        elfFile = elf;
        sectionName = section;
        baseAddress = address;
        array = bytes.Array!;
        arrayOffset = bytes.Offset;
        arrayLength = bytes.Count;
        pointerSize = elf.PointerSize;
    }

    /// <summary>A candidate position that turned out not to hold (valid) kallsyms tables. <see cref="Stage"/> says
    /// how far the tables checked out: 0 = not a token table at all; 1 = a token table; 2 = markers; 3 = names;
    /// 4 = offsets.</summary>
    private sealed class RejectException(int stage, string message) : Exception(message)
    {
        public int Stage { get; } = stage;
    }

    /// <summary>Finds and decodes the tables; null when the image has no kallsyms token table at all.</summary>
    /// <exception cref="ImageFormatException">Tables were found but are corrupt or truncated.</exception>
    public static (KallsymsTables Tables, KernelSymbol[] Symbols)? Decode(ElfFile elf)
    {
        RejectException? best = null;
        foreach (var (section, address, bytes) in Regions(elf))
        {
            if (!MemoryMarshal.TryGetArray<byte>(bytes, out var segment))
                continue;
            var decoder = new KallsymsDecoder(elf, section, address, segment);
            var d = decoder.D;
            int from = 0;
            while (from < d.Length)
            {
                int hit = d[from..].IndexOf(DigitTokens);
                if (hit < 0)
                    break;
                int x = from + hit;
                from = x + 1;
                try
                {
                    return decoder.DecodeAt(x);
                }
                catch (RejectException e)
                {
                    if (best is null || e.Stage > best.Stage)
                        best = e;
                }
            }
        }
        if (best is { Stage: > 0 })
            throw new ImageFormatException($"{elf.Name}: {best.Message}");
        return null;
    }

    /// <summary>Where to look: <c>.rodata</c> first, then the other allocated sections with file bytes that do not hold
    /// code; the PT_LOAD segments of a file without section headers.</summary>
    private static IEnumerable<(string Section, ulong Address, Memory<byte> Bytes)> Regions(ElfFile elf)
    {
        var sections = elf.Sections
            .Where(s => s.IsAllocated && !s.IsExecutable && ElfFile.HasBytesInFile(s) && s.Size >= 1024)
            .OrderBy(s => s.Name == ".rodata" ? 0 : 1)
            .ToList();
        if (sections.Count > 0)
        {
            foreach (var s in sections)
                yield return (s.Name, s.Address, elf.SectionBytes(s));
            yield break;
        }
        foreach (var p in elf.Segments)
        {
            if (p.IsLoad && p.FileSize > 0)
                yield return ("PT_LOAD", p.VirtualAddress, elf.Bytes.Slice((int)p.FileOffset, (int)p.FileSize));
        }
    }

    private string Va(int position) => $"0x{baseAddress + (ulong)position:x}";
    private int Misalignment(int position) => (int)((baseAddress + (ulong)position) % (ulong)pointerSize);
    private bool Aligned(int position) => Misalignment(position) == 0;
    private int AlignUp(int position) => Misalignment(position) is var m && m == 0 ? position : position + pointerSize - m;
    private int AlignDown(int position) => position - Misalignment(position);
    private uint U32(int position) => BinaryPrimitives.ReadUInt32LittleEndian(D[position..]);
    private ushort U16(int position) => BinaryPrimitives.ReadUInt16LittleEndian(D[position..]);
    private ulong Pointer(int position) => ElfFile.ReadPointer(D[position..], pointerSize);
    private bool Fits(long position, long length) => position >= 0 && length >= 0 && position + length <= arrayLength;

    private static RejectException Reject(int stage, string message) => new(stage, message);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private (KallsymsTables, KernelSymbol[]) DecodeAt(int digits)
    {
        var tokens = ReadTokens(digits, out int tokenTable, out int tokenIndex);

        // kallsyms_markers (and kallsyms_seqs_of_names) before the token table: scan back for markers[0] == 0.
        RejectException? best = null;
        long maxBack = 772L * (MaxSymbols / 256) + 64;
        for (int z = AlignDown(tokenTable - 4); z >= 0 && tokenTable - z <= maxBack; z -= pointerSize)
        {
            if (U32(z) != 0)
                continue;
            // The markers end at the token table (up to 6.1, and 6.4+).
            for (int pad = 0; pad < pointerSize; pad += 4)
            {
                int end = tokenTable - pad;
                if (end <= z || (end - z) % 4 != 0 || (pad > 0 && U32(tokenTable - 4) != 0))
                    continue;
                int m = (end - z) / 4;
                if (m > MaxSymbols / 256 || !IsMarkerRun(z, m))
                    continue;
                try
                {
                    return Finish(tokens, tokenTable, tokenIndex, z, m, seqs: -1, seqsCounts: null);
                }
                catch (RejectException e) when (best is null || e.Stage > best.Stage)
                {
                    best = e;
                }
                catch (RejectException)
                {
                }
            }
            // 6.2-6.3: 4·m bytes of markers, then 3·n bytes of kallsyms_seqs_of_names, with n in (256(m-1), 256m].
            int span = tokenTable - z;
            int estimate = span / 772;
            for (int m = Math.Max(1, estimate - 1); m <= estimate + 1 && m <= MaxSymbols / 256; m++)
            {
                int end = z + 4 * m;
                if (end >= tokenTable || !IsMarkerRun(z, m))
                    continue;
                int seqs = AlignUp(end);
                if (!IsZero(end, seqs - end))
                    continue;
                var counts = new List<int>();
                for (int n = Math.Max(1, (tokenTable - seqs - pointerSize + 1 + 2) / 3); 3L * n <= tokenTable - seqs; n++)
                {
                    if (AlignUp(seqs + 3 * n) == tokenTable && (n + 255) / 256 == m)
                        counts.Add(n);
                }
                if (counts.Count == 0)
                    continue;
                try
                {
                    return Finish(tokens, tokenTable, tokenIndex, z, m, seqs, counts);
                }
                catch (RejectException e) when (best is null || e.Stage > best.Stage)
                {
                    best = e;
                }
                catch (RejectException)
                {
                }
            }
        }
        throw best ?? Reject(1, $"kallsyms_markers: not found before kallsyms_token_table at {Va(tokenTable)} (a u32 0 followed by offsets rising by at least 512, ending at the token table or at kallsyms_seqs_of_names)");
    }

    /// <summary>Reads and checks kallsyms_token_table and kallsyms_token_index around the digit tokens at <paramref name="digits"/>.
    /// Returns each token's position and length.</summary>
    private (int Start, int Length)[] ReadTokens(int digits, out int table, out int index)
    {
        var d = D;
        int p = digits;
        for (int i = 0x30; i < 256; i++)
        {
            int z = d[p..].IndexOf((byte)0);
            if (z < 0)
                throw Reject(0, $"kallsyms_token_table: token 0x{i:x2} after {Va(digits)} runs past the end of {sectionName}");
            p += z + 1;
        }
        int end = p;
        index = AlignUp(end);
        if (!Fits(index, 512))
            throw Reject(0, $"kallsyms_token_index at {Va(index)}: runs past the end of {sectionName}");
        table = digits - U16(index + 2 * 0x30);
        if (U16(index) != 0 || table < 0 || !Aligned(table) || table > digits)
            throw Reject(0, $"kallsyms_token_index at {Va(index)}: does not index a token table ending at {Va(end)}");

        // A token table when (nearly) every index entry points at the string after the previous one: then every
        // inconsistency is reported; other tables that happen to hold the digit strings are passed over.
        var tokens = new (int Start, int Length)[256];
        string? problem = null;
        int consistent = 0;
        for (int i = 0; i < 256; i++)
        {
            int start = table + U16(index + 2 * i);
            int next = i < 255 ? table + U16(index + 2 * (i + 1)) : end;
            if (next <= start || next > end)
            {
                problem ??= $"kallsyms_token_index at {Va(index)}: entry {i + 1} (0x{next - table:x}) is not above entry {i} (0x{start - table:x})";
                continue;
            }
            int nul = d[start..next].IndexOf((byte)0);
            if (nul != next - start - 1)
            {
                problem ??= $"kallsyms_token_table at {Va(table)}: token 0x{i:x2} at +0x{start - table:x} does not end just before token 0x{i + 1:x2} at +0x{next - table:x}" + (i == 255 ? " (the table's end)" : "");
                continue;
            }
            consistent++;
            tokens[i] = (start, nul);
        }
        if (consistent < 240)
            throw Reject(0, $"kallsyms_token_index at {Va(index)}: only {consistent} of 256 entries index a token table ending at {Va(end)}");
        if (problem is not null)
            throw Reject(1, problem);
        if (!IsZero(end, index - end))
            throw Reject(1, $"kallsyms_token_table at {Va(table)}: the padding between its end ({Va(end)}) and kallsyms_token_index ({Va(index)}) is not zero");
        for (int i = 0; i < 256; i++)
        {
            foreach (byte b in d.Slice(tokens[i].Start, tokens[i].Length))
            {
                if (b <= 0x20 || b == 0x7f)
                    throw Reject(1, $"kallsyms_token_table at {Va(table)}: token 0x{i:x2} holds byte 0x{b:x2}, which no symbol name has");
            }
        }
        return tokens;
    }

    /// <summary>Whether the <paramref name="m"/> u32 at <paramref name="z"/> (the first is 0) rise by at least 512 each.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private bool IsMarkerRun(int z, int m)
    {
        if (!Fits(z, 4L * m))
            return false;
        uint prev = U32(z);
        for (int k = 1; k < m; k++)
        {
            uint cur = U32(z + 4 * k);
            if (cur < prev || cur - prev < 512)
                return false;
            prev = cur;
        }
        return true;
    }

    private bool IsZero(int position, int length) => length <= 0 || !D.Slice(position, length).ContainsAnyExcept((byte)0);

    /// <summary>Walks <paramref name="count"/> names from <paramref name="position"/>; the end, or -1 when a name runs past <paramref name="limit"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Walk(int position, int count, int limit)
    {
        var d = D;
        for (int i = 0; i < count; i++)
        {
            if (position >= limit)
                return -1;
            int len = d[position++];
            if ((len & 0x80) != 0)
            {
                if (position >= limit)
                    return -1;
                len = (len & 0x7f) | (d[position++] << 7);
            }
            if (len == 0)
                return -1;
            position += len;
            if (position > limit)
                return -1;
        }
        return position;
    }

    /// <summary>With the markers at <paramref name="markers"/> (<paramref name="m"/> of them) and, in the 6.2–6.3
    /// layout, the seqs at <paramref name="seqs"/>: finds the names and num_syms, then the offsets, and decodes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private (KallsymsTables, KernelSymbol[]) Finish((int Start, int Length)[] tokens, int tokenTable, int tokenIndex,
        int markers, int m, int seqs, List<int>? seqsCounts)
    {
        // kallsyms_names: ends in (markers - align, markers], starts at an aligned S with S + markers[k] the k-th block,
        // right after kallsyms_num_syms. First a start where everything agrees; failing that, one where only the names
        // agree with the markers, so that the error can name what is wrong with kallsyms_num_syms.
        uint last = U32(markers + 4 * (m - 1));
        int names = FindNames(markers, m, seqsCounts, strict: true);
        if (names < 0 && m >= 2)
            names = FindNames(markers, m, seqsCounts, strict: false);
        if (names < 0)
            throw Reject(2, $"kallsyms_names: not found before kallsyms_markers at {Va(markers)} ({m} markers): no start from which the names of symbols {256 * Math.Max(0, m - 2)}… end where marker {m - 1} (0x{last:x}) says");

        int numSyms = names - pointerSize;
        uint count = U32(numSyms);
        if (pointerSize == 8 && U32(numSyms + 4) != 0)
            throw Reject(3, $"kallsyms_num_syms at {Va(numSyms)}: the 4 bytes after it are 0x{U32(numSyms + 4):x}, not the zero padding before kallsyms_names");
        if (count == 0 || count > MaxSymbols || (count + 255) / 256 != m)
            throw Reject(3, $"kallsyms_num_syms at {Va(numSyms)}: {count} symbols, but kallsyms_markers at {Va(markers)} has {m} entries, one per 256 symbols ({256L * (m - 1) + 1}-{256L * m})");
        int n32 = (int)count;
        if (seqsCounts is not null && !seqsCounts.Contains(n32))
            throw Reject(3, $"kallsyms_num_syms at {Va(numSyms)}: {count} symbols, but kallsyms_seqs_of_names at {Va(seqs)} holds {string.Join(" or ", seqsCounts)} (3 bytes each, up to kallsyms_token_table at {Va(tokenTable)})");

        var symbols = new KernelSymbol[n32];
        int namesEnd = DecodeNames(tokens, names, markers, m, symbols);

        // kallsyms_offsets + kallsyms_relative_base.
        bool absolute = false;
        int offsets, relativeBase;
        KallsymsLayout layout;
        if (seqs >= 0)
        {
            layout = KallsymsLayout.OffsetsFirstWithSeqs;
            (offsets, relativeBase) = OffsetsBefore(numSyms, n32);
            string? problem = ReadOffsets(offsets, relativeBase, symbols, out absolute);
            if (problem is not null)
                throw Reject(4, problem);
        }
        else
        {
            // 6.4+: after the token index; seqs after the relative base.
            offsets = AlignUp(tokenIndex + 512);
            relativeBase = AlignUp(offsets + 4 * n32);
            string? after = Fits(relativeBase, pointerSize)
                ? ReadOffsets(offsets, relativeBase, symbols, out absolute)
                : $"kallsyms_offsets at {Va(offsets)}: {n32} entries run past the end of {sectionName}";
            if (after is null)
            {
                layout = KallsymsLayout.NamesFirst;
                seqs = AlignUp(relativeBase + pointerSize);
                if (!Fits(seqs, 3L * n32))
                    throw Reject(4, $"kallsyms_seqs_of_names at {Va(seqs)}: {n32} entries of 3 bytes run past the end of {sectionName}");
            }
            else
            {
                layout = KallsymsLayout.OffsetsFirst;
                (offsets, relativeBase) = OffsetsBefore(numSyms, n32);
                string? before = offsets < 0
                    ? $"{n32} entries would start before {sectionName}"
                    : ReadOffsets(offsets, relativeBase, symbols, out absolute);
                if (before is not null)
                    throw Reject(4, $"kallsyms_offsets: neither after kallsyms_token_index ({after}) nor before kallsyms_num_syms ({before})");
            }
        }

        if (seqs >= 0)
            CheckSeqs(seqs, symbols);

        var info = new KallsymsTables(layout, sectionName, n32, absolute, Pointer(relativeBase),
            baseAddress + (ulong)numSyms, baseAddress + (ulong)names, namesEnd - names, baseAddress + (ulong)markers, m,
            baseAddress + (ulong)tokenTable, baseAddress + (ulong)tokenIndex, baseAddress + (ulong)offsets, baseAddress + (ulong)relativeBase,
            seqs >= 0 ? baseAddress + (ulong)seqs : null);
        return (info, symbols);
    }

    /// <summary>
    /// The start of kallsyms_names, searched down from the last marker: an aligned position from which walking 256
    /// names from each of the last (up to 16) markers lands exactly on the next one. <paramref name="strict"/> also
    /// wants kallsyms_num_syms before it to agree with the markers (and the seqs), and the last block of names to end
    /// just before the markers: a wrong start can fall into step with the names for a block or two, never for all that.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int FindNames(int markers, int m, List<int>? seqsCounts, bool strict)
    {
        uint last = U32(markers + 4 * (m - 1));
        long lowest = markers - (long)last - 256L * (2 + 0x3fff) - pointerSize;
        int first = AlignDown(markers - (int)Math.Min(last + 2, (uint)markers));
        int blocks = Math.Min(m - 1, 16);
        for (int s = first; s >= pointerSize && s >= lowest; s -= pointerSize)
        {
            bool ok = true;
            for (int k = m - 2; k >= m - 1 - blocks && ok; k--)
            {
                long a = s + (long)U32(markers + 4 * k), b = s + (long)U32(markers + 4 * (k + 1));
                ok = b < markers && Walk((int)a, 256, (int)b) == b;
            }
            if (!ok)
                continue;
            if (!strict)
                return s;
            uint n = U32(s - pointerSize);
            if (n == 0 || n > MaxSymbols || (n + 255) / 256 != m || (pointerSize == 8 && U32(s - 4) != 0)
                || (seqsCounts is not null && !seqsCounts.Contains((int)n)))
                continue;
            int end = Walk(s + (int)last, (int)(n - 256 * (uint)(m - 1)), markers);
            if (end > markers - pointerSize && IsZero(end, markers - end))
                return s;
        }
        return -1;
    }

    /// <summary>Up to 6.3: kallsyms_offsets, kallsyms_relative_base, kallsyms_num_syms, each aligned.</summary>
    private (int Offsets, int RelativeBase) OffsetsBefore(int numSyms, int n)
    {
        int relativeBase = numSyms - pointerSize;
        int offsets = relativeBase - 4 * n;
        if (offsets >= 0 && !Aligned(offsets))
            offsets = AlignDown(offsets);
        return (offsets, relativeBase);
    }

    /// <summary>Expands every name into <paramref name="symbols"/> (name and type; addresses come later), checking each
    /// marker and the end of the stream; returns the end.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int DecodeNames((int Start, int Length)[] tokens, int names, int markers, int m, KernelSymbol[] symbols)
    {
        var d = D;
        int n = symbols.Length;
        // Each token in a 16-byte slot, so that a token of up to 16 bytes (nearly all) is one 16-byte copy; longer
        // ones are copied from the token table. The name buffer has 16 bytes of slack for the overhang.
        var slots = new byte[256 * 16];
        var tokenLength = new int[256];
        var tokenStart = new int[256];
        for (int c = 0; c < 256; c++)
        {
            tokenLength[c] = tokens[c].Length;
            tokenStart[c] = tokens[c].Start;
            d.Slice(tokens[c].Start, Math.Min(tokens[c].Length, 16)).CopyTo(slots.AsSpan(16 * c));
        }
        // Two halves on two threads, split at a marker (the second starts where kallsyms_markers says): the names are
        // most of the decoding, and it runs beside the tables' reading (KernelImage.DecodeSymbolsInBackground). The
        // errors are the serial loop's: the first half's first, then the marker between them, then the second half's.
        int h = n >= 2 * SplitSymbols ? (n / 2) & ~0xff : 0;
        long at = h > 0 ? names + (long)U32(markers + 4 * (h >> 8)) : -1;
        if (h == 0 || at <= names || at >= markers)
            return DecodeRange(slots, tokenLength, tokenStart, names, markers, 0, n, names, symbols, last: true);
        int second = (int)at;
        var rest = Task.Run(() => DecodeRange(slots, tokenLength, tokenStart, names, markers, h, n, second, symbols, last: true));
        int end;
        try
        {
            end = DecodeRange(slots, tokenLength, tokenStart, names, markers, 0, h, names, symbols, last: false);
        }
        catch
        {
            try { rest.Wait(); } catch (AggregateException) { }   // its symbols array is not returned; let it finish
            throw;
        }
        if (end != second)
        {
            try { rest.Wait(); } catch (AggregateException) { }
            throw Reject(3, $"kallsyms_markers at {Va(markers)}: entry {h >> 8} is 0x{second - names:x}, but symbol {h} starts at +0x{end - names:x} in kallsyms_names at {Va(names)}");
        }
        return rest.GetAwaiter().GetResult();
    }

    /// <summary>Below this many symbols a second thread does not pay for itself (2 x this: the split).</summary>
    private const int SplitSymbols = 8192;

    /// <summary>Decodes the names of symbols [from, to), the first at <paramref name="pos"/>; returns where the next begins
    /// (with <paramref name="last"/>, checked to be just before kallsyms_markers).</summary>
    private int DecodeRange(byte[] slots, int[] tokenLength, int[] tokenStart, int names, int markers, int from, int to, int pos,
        KernelSymbol[] symbols, bool last)
    {
        var d = D;
        int n = symbols.Length;
        Span<byte> buf = stackalloc byte[KsymNameLen + 1 + 16];
        var utf8 = Encoding.UTF8;
        for (int i = from; i < to; i++)
        {
            if ((i & 0xff) == 0 && U32(markers + 4 * (i >> 8)) != (uint)(pos - names))
                throw Reject(3, $"kallsyms_markers at {Va(markers)}: entry {i >> 8} is 0x{U32(markers + 4 * (i >> 8)):x}, but symbol {i} starts at +0x{pos - names:x} in kallsyms_names at {Va(names)}");
            if (pos >= markers || (d[pos] == 0 && IsZero(pos, markers - pos)))
                throw Reject(3, $"kallsyms_names at {Va(names)}: only {i} symbols before kallsyms_markers at {Va(markers)}, but kallsyms_num_syms says {n}");
            int len = d[pos++];
            if ((len & 0x80) != 0)
            {
                int hi = pos < markers ? d[pos++] : 0x80;
                if (hi >= 0x80)
                    throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} has a bad two-byte length (second byte 0x{hi:x2})");
                len = (len & 0x7f) | (hi << 7);
            }
            if (len == 0)
                throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} at +0x{pos - 1 - names:x} has length 0");
            if (pos + len > markers)
                throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} ({len} tokens at +0x{pos - names:x}) runs past the table's end (kallsyms_markers at {Va(markers)})");
            int o = 0;
            ref byte slot0 = ref MemoryMarshal.GetArrayDataReference(slots);
            ref byte out0 = ref MemoryMarshal.GetReference(buf);
            foreach (byte code in d.Slice(pos, len))
            {
                int tl = tokenLength[code];
                if (o + tl > KsymNameLen + 1)
                    throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} expands to more than {KsymNameLen} characters (KSYM_NAME_LEN)");
                if (tl <= 16)
                    Unsafe.WriteUnaligned(ref Unsafe.Add(ref out0, o), Unsafe.ReadUnaligned<Vector128<byte>>(ref Unsafe.Add(ref slot0, code * 16)));
                else
                    d.Slice(tokenStart[code], tl).CopyTo(buf[o..]);
                o += tl;
            }
            pos += len;
            if (o < 2)
                throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} expands to {o} character(s); a type letter and a name take at least 2");
            byte type = buf[0];
            if (!char.IsAsciiLetter((char)type))
                throw Reject(3, $"kallsyms_names at {Va(names)}: symbol {i} has type 0x{type:x2}, not a letter");
            symbols[i] = new KernelSymbol(utf8.GetString(buf[1..o]), 0, (char)type);
        }
        if (last && (pos <= markers - pointerSize || !IsZero(pos, markers - pos)))
            throw Reject(3, $"kallsyms_names at {Va(names)}: the {n} symbols end at +0x{pos - names:x}, not just before kallsyms_markers at {Va(markers)}");
        return pos;
    }

    /// <summary>Decodes kallsyms_offsets into the symbols' addresses in whichever encoding gives ascending addresses from
    /// the relative base; the problem when neither does.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private string? ReadOffsets(int offsets, int relativeBase, KernelSymbol[] symbols, out bool absolute)
    {
        absolute = false;
        int n = symbols.Length;
        if (!Fits(offsets, 4L * n) || !Fits(relativeBase, pointerSize))
            return $"kallsyms_offsets at {Va(offsets)}: {n} entries run past {sectionName}";
        if (!IsZero(offsets + 4 * n, relativeBase - (offsets + 4 * n)))
            return $"kallsyms_offsets at {Va(offsets)}: the padding before kallsyms_relative_base at {Va(relativeBase)} is not zero";
        ulong rb = Pointer(relativeBase);
        if (elfFile.SectionContaining(rb) is null && !elfFile.Sections.Any(s => s.IsAllocated && s.Contains(rb)))
            return $"kallsyms_relative_base at {Va(relativeBase)} is 0x{rb:x}, not an address in the image";
        ulong mask = pointerSize == 8 ? ulong.MaxValue : 0xffff_ffffUL;
        var table = D.Slice(offsets, 4 * n);

        // Without --absolute-percpu: unsigned offsets above the base; the first symbol is the base.
        string? plain = null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(table) != 0)
            plain = $"entry 0 is 0x{BinaryPrimitives.ReadUInt32LittleEndian(table):x}, not 0";
        else
        {
            ulong prev = 0;
            for (int i = 0; i < n; i++)
            {
                ulong a = (rb + BinaryPrimitives.ReadUInt32LittleEndian(table[(4 * i)..])) & mask;
                if (a < prev)
                {
                    plain = $"entry {i} gives 0x{a:x}, below entry {i - 1} (0x{prev:x})";
                    break;
                }
                prev = a;
            }
        }
        if (plain is null)
        {
            for (int i = 0; i < n; i++)
                symbols[i] = symbols[i] with { Address = (rb + BinaryPrimitives.ReadUInt32LittleEndian(table[(4 * i)..])) & mask };
            return null;
        }

        // --absolute-percpu: non-negative = absolute, negative = rb - 1 - offset; the first relative symbol is the base.
        string? abs = null;
        bool sawRelative = false;
        ulong last = 0;
        for (int i = 0; i < n; i++)
        {
            int off = BinaryPrimitives.ReadInt32LittleEndian(table[(4 * i)..]);
            ulong a;
            if (off >= 0)
                a = (ulong)off;
            else
            {
                if (!sawRelative && off != -1)
                {
                    abs = $"the first negative entry ({i}) is {off}, not -1 (the relative base itself)";
                    break;
                }
                sawRelative = true;
                a = (rb - 1 - (ulong)(long)off) & mask;
            }
            if (a < last)
            {
                abs = $"entry {i} gives 0x{a:x}, below entry {i - 1} (0x{last:x})";
                break;
            }
            last = a;
            symbols[i] = symbols[i] with { Address = a };
        }
        if (abs is null && !sawRelative)
            abs = "no entry is relative to the base";
        if (abs is null)
        {
            absolute = true;
            return null;
        }
        return $"kallsyms_offsets at {Va(offsets)} with kallsyms_relative_base 0x{rb:x}: not ascending addresses as unsigned offsets ({plain}) nor with absolute per-CPU symbols ({abs})";
    }

    /// <summary>kallsyms_seqs_of_names: each index once, naming the symbols in ascending name order (compare_names()).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void CheckSeqs(int seqs, KernelSymbol[] symbols)
    {
        int n = symbols.Length;
        var d = D.Slice(seqs, 3 * n);
        var seen = new ulong[(n + 63) / 64];
        int prev = -1;
        for (int k = 0; k < n; k++)
        {
            int p = 3 * k;
            int v = (d[p] << 16) | (d[p + 1] << 8) | d[p + 2];
            if (v >= n)
                throw Reject(4, $"kallsyms_seqs_of_names at {Va(seqs)}: entry {k} is {v}, not one of the {n} symbols");
            ulong bit = 1UL << (v & 63);
            if ((seen[v >> 6] & bit) != 0)
                throw Reject(4, $"kallsyms_seqs_of_names at {Va(seqs)}: entry {k} names symbol {v} a second time");
            seen[v >> 6] |= bit;
            // Ordinal order first; only names out of it are compared as scripts/kallsyms does for clang LTO.
            if (prev >= 0 && string.CompareOrdinal(symbols[prev].Name, symbols[v].Name) > 0 && CompareNames(symbols[prev].Name, symbols[v].Name) > 0)
                throw Reject(4, $"kallsyms_seqs_of_names at {Va(seqs)}: entry {k} ({symbols[v].Name}) sorts before entry {k - 1} ({symbols[prev].Name})");
            prev = v;
        }
    }

    /// <summary>strcmp of two names as scripts/kallsyms sorts them (a clang LTO ".llvm.NNN" suffix does not count).</summary>
    private static int CompareNames(string a, string b)
    {
        int ia = a.IndexOf(".llvm.", StringComparison.Ordinal), ib = b.IndexOf(".llvm.", StringComparison.Ordinal);
        return string.CompareOrdinal(ia < 0 ? a : a[..ia], ib < 0 ? b : b[..ib]);
    }
}
