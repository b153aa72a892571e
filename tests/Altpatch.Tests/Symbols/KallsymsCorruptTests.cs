using System.Buffers.Binary;
using Altpatch.Images;

namespace Altpatch.Tests.Symbols;

/// <summary>
/// Real kallsyms tables (6.1 layout with seqs, 6.4+ layout, ELF32 and ELF64), each damaged in one place: the decoder
/// refuses with one ImageFormatException that names the table and says what is wrong, never a crash and never a
/// partial list.
/// </summary>
public class KallsymsCorruptTests
{
    public static TheoryData<string> Shared => new(SymbolImage.Shared.Select(i => i.Id));

    /// <summary>A copy of the image's vmlinux with <paramref name="damage"/> done to it (at file offsets found from the
    /// clean decode), decoded afresh.</summary>
    private static ImageFormatException Decode(string id, Action<KallsymsTables, Span<byte>, Func<ulong, int>> damage)
    {
        var img = SymbolImage.Get(id).Open();
        var tables = img.Symbols.Kallsyms!;
        var bytes = img.ElfBytes.ToArray();
        damage(tables, bytes, va => (int)img.FileOffsetOf(va));
        var copy = KernelImage.Load(bytes, "damaged");
        var e = Assert.Throws<ImageFormatException>(() => copy.Symbols);
        Assert.StartsWith("damaged: ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        if (e.Message.StartsWith("damaged: no kallsyms tables", StringComparison.Ordinal))
            Assert.False(copy.TryGetSymbols(out _));   // absent, not corrupt
        else
            Assert.Throws<ImageFormatException>(() => copy.TryGetSymbols(out _));
        return e;
    }

    private static void U32(Span<byte> b, int at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b[at..], v);
    private static uint U32(Span<byte> b, int at) => BinaryPrimitives.ReadUInt32LittleEndian(b[at..]);

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void An_absurd_num_syms_is_refused(string id)
    {
        var e = Decode(id, (t, b, off) => U32(b, off(t.NumSyms), 0xffff_fff0));
        Assert.Contains("kallsyms_num_syms at 0x", e.Message, StringComparison.Ordinal);
        Assert.Contains("4294967280 symbols, but kallsyms_markers", e.Message, StringComparison.Ordinal);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void One_symbol_too_many_runs_past_the_names(string id)
    {
        var e = Decode(id, (t, b, off) => U32(b, off(t.NumSyms), (uint)t.Count + 1));
        // With seqs before the token table their size gives the count away; without, the names run out.
        // (In the 6.2-6.3 layout the seqs' size allows a count or two more when the alignment padding is wide enough.)
        Assert.Matches(@"kallsyms_num_syms at 0x[0-9a-f]+: \d+ symbols, but kallsyms_seqs_of_names at 0x[0-9a-f]+ holds \d+|kallsyms_names at 0x[0-9a-f]+: only \d+ symbols before kallsyms_markers at 0x[0-9a-f]+, but kallsyms_num_syms says \d+", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_name_whose_length_is_wrong_is_caught_by_the_next_marker(string id)
    {
        // Symbol 300's length byte one larger: every later name shifts, marker 2 (symbol 512) no longer agrees.
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.Names) + (int)U32(b, off(t.Markers) + 4);
            for (int i = 256; i < 300; i++)
                p += 1 + b[p];
            b[p]++;
        });
        // Either the next marker disagrees, or a name in between no longer parses (a bad length, too long a name).
        var m = System.Text.RegularExpressions.Regex.Match(e.Message,
            @"kallsyms_markers at 0x[0-9a-f]+: entry 2 is 0x[0-9a-f]+, but symbol (512) starts at \+0x[0-9a-f]+ in kallsyms_names|kallsyms_names at 0x[0-9a-f]+: symbol (\d+) ");
        Assert.True(m.Success, e.Message);
        int symbol = int.Parse(m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(symbol, 300, 512);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_truncated_name_stream_is_refused(string id)
    {
        // The last name's length says it runs into kallsyms_markers.
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.Names) + (int)U32(b, off(t.Markers) + 4 * (t.MarkerCount - 1));
            for (int i = 256 * (t.MarkerCount - 1); i < t.Count - 1; i++)
                p += (b[p] & 0x80) != 0 ? 2 + ((b[p] & 0x7f) | (b[p + 1] << 7)) : 1 + b[p];
            b[p] = 0x7f;
        });
        Assert.Contains("kallsyms_names", e.Message, StringComparison.Ordinal);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_bad_marker_is_refused(string id)
    {
        var e = Decode(id, (t, b, off) => U32(b, off(t.Markers) + 4 * 5, U32(b, off(t.Markers) + 4 * 5) + 3));
        Assert.Matches(@"kallsyms_markers at 0x[0-9a-f]+: entry 5 is 0x[0-9a-f]+, but symbol 1280 starts at", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_bad_marker_where_the_names_are_split_between_two_threads_is_refused(string id)
    {
        // The decoder splits a large table at marker (Count / 2) / 256 and starts the second half where it says: that
        // marker wrong is the same error as any other marker's, from the first half's end.
        int k = 0;
        var e = Decode(id, (t, b, off) =>
        {
            k = (t.Count / 2) >> 8;
            U32(b, off(t.Markers) + 4 * k, U32(b, off(t.Markers) + 4 * k) + 3);
        });
        Assert.Matches($@"kallsyms_markers at 0x[0-9a-f]+: entry {k} is 0x[0-9a-f]+, but symbol {256 * k} starts at \+0x[0-9a-f]+ in kallsyms_names", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Of_two_damaged_names_the_first_is_named(string id)
    {
        // One name damaged in each half: the error is the first half's, as a serial decode finds it first.
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.Names) + (int)U32(b, off(t.Markers) + 4);
            for (int i = 256; i < 300; i++)
                p += 1 + b[p];
            b[p]++;
            int q = off(t.Names) + (int)U32(b, off(t.Markers) + 4 * (t.MarkerCount - 1));
            b[q] = 0;                                          // a name of length 0 in the last block
        });
        var m = System.Text.RegularExpressions.Regex.Match(e.Message,
            @"kallsyms_markers at 0x[0-9a-f]+: entry 2 is 0x[0-9a-f]+, but symbol (512) starts at \+0x[0-9a-f]+ in kallsyms_names|kallsyms_names at 0x[0-9a-f]+: symbol (\d+) ");
        Assert.True(m.Success, e.Message);
        int symbol = int.Parse(m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(symbol, 300, 512);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_bad_token_index_is_refused(string id)
    {
        var e = Decode(id, (t, b, off) => BinaryPrimitives.WriteUInt16LittleEndian(b[(off(t.TokenIndex) + 2 * 0x61)..],
            (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(b[(off(t.TokenIndex) + 2 * 0x61)..]) + 1)));
        Assert.Matches(@"kallsyms_token_table at 0x[0-9a-f]+: token 0x6[01] at \+0x[0-9a-f]+ does not end just before token 0x6[12]", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_token_index_out_of_order_is_refused(string id)
    {
        var e = Decode(id, (t, b, off) => BinaryPrimitives.WriteUInt16LittleEndian(b[(off(t.TokenIndex) + 2 * 0x80)..], 1));
        Assert.Matches(@"kallsyms_token_index at 0x[0-9a-f]+: entry 128 \(0x1\) is not above entry 127", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_token_with_a_control_character_is_refused(string id)
    {
        // The first byte of token 0x61 ('a', a one-character token) becomes a newline.
        var e = Decode(id, (t, b, off) => b[off(t.TokenTable) + BinaryPrimitives.ReadUInt16LittleEndian(b[(off(t.TokenIndex) + 2 * 0x61)..])] = 0x0a);
        Assert.Matches(@"kallsyms_token_table at 0x[0-9a-f]+: token 0x61 holds byte 0x0a, which no symbol name has", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Offsets_out_of_order_are_refused(string id)
    {
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.Offsets) + 4 * (t.Count / 2);
            uint x = U32(b, p);
            U32(b, p, U32(b, p + 4 * 100));
            U32(b, p + 4 * 100, x);
        });
        Assert.Contains("kallsyms_offsets", e.Message, StringComparison.Ordinal);
        Assert.Contains("not ascending addresses", e.Message, StringComparison.Ordinal);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void A_repeated_seq_is_refused(string id)
    {
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.SeqsOfNames!.Value);
            b.Slice(p, 3).CopyTo(b[(p + 3 * 10)..]);
        });
        Assert.Matches(@"kallsyms_seqs_of_names at 0x[0-9a-f]+: entry 10 names symbol \d+ a second time", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void Seqs_out_of_name_order_are_refused(string id)
    {
        var e = Decode(id, (t, b, off) =>
        {
            int p = off(t.SeqsOfNames!.Value);
            Span<byte> x = stackalloc byte[3];
            b.Slice(p + 3 * 1000, 3).CopyTo(x);
            b.Slice(p + 3 * 2000, 3).CopyTo(b[(p + 3 * 1000)..]);
            x.CopyTo(b[(p + 3 * 2000)..]);
        });
        Assert.Matches(@"kallsyms_seqs_of_names at 0x[0-9a-f]+: entry \d+ \(.+\) sorts before entry \d+", e.Message);
    }

    [SkippableTheory]
    [MemberData(nameof(Shared))]
    public void An_image_whose_token_table_is_gone_has_no_kallsyms(string id)
    {
        var e = Decode(id, (t, b, off) => b[off(t.TokenTable)..(off(t.TokenIndex) + 512)].Clear());
        Assert.Contains("damaged: no kallsyms tables", e.Message, StringComparison.Ordinal);
    }
}
