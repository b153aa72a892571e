using System.Collections.Immutable;
using Altpatch.Text;

namespace Altpatch.Images.Boot;

/// <summary>What one pass did.</summary>
/// <param name="Pass">The pass.</param>
/// <param name="Sites">Entries in the pass's table.</param>
/// <param name="Plan">The plan it produced and the image poker wrote (changed ranges only).</param>
public readonly record struct BootPassResult(BootPass Pass, int Sites, PatchPlan Plan)
{
    /// <summary>Number of pokes written.</summary>
    public int Pokes => Plan.Count;

    /// <summary>Number of bytes written.</summary>
    public long Bytes => Plan.TotalBytes;
}

/// <summary>One site of the image after patching: its bytes before and after, and the passes that changed them.</summary>
/// <param name="Kind">The table.</param>
/// <param name="Index">Entry index in the table.</param>
/// <param name="Address">Link-time address.</param>
/// <param name="Before">The bytes in the original image.</param>
/// <param name="After">The bytes after every pass.</param>
/// <param name="Writers">The passes that changed at least one of its bytes, in order.</param>
public readonly record struct KernelSiteOutcome(KernelSiteKind Kind, int Index, ulong Address, ReadOnlyMemory<byte> Before, ReadOnlyMemory<byte> After, ImmutableArray<BootPass> Writers)
{
    /// <summary>Whether the bytes changed.</summary>
    public bool Changed => !Before.Span.SequenceEqual(After.Span);
}

/// <summary>The result of <c>KernelBootPatcher.Patch</c>: the patched ELF bytes, the passes and every site.</summary>
public sealed class KernelPatchResult
{
    internal KernelPatchResult(KernelImage image, ElfFile patched, KernelBootState state, KernelThunks thunks,
        ImmutableArray<BootPassResult> passes, string rules, ImageFeatureNumbering numbering)
    {
        Numbering = numbering;
        Image = image;
        Patched = patched;
        State = state;
        Thunks = thunks;
        Passes = passes;
        Rules = rules;
    }

    /// <summary>The original image (its tables and unpatched bytes).</summary>
    public KernelImage Image { get; }

    /// <summary>The patched ELF file: same size and layout as <see cref="KernelImage.ElfBytes"/>, text patched in place.</summary>
    public ElfFile Patched { get; }

    /// <summary>The boot CPU the passes used.</summary>
    public KernelBootState State { get; }

    /// <summary>The thunks found in the image.</summary>
    public KernelThunks Thunks { get; }

    /// <summary>The passes in the order run.</summary>
    public ImmutableArray<BootPassResult> Passes { get; }

    /// <summary>The feature numbering the image's alternatives were read with.</summary>
    public ImageFeatureNumbering Numbering { get; }

    /// <summary>Which kernel's rules were applied, e.g. "Linux 6.1".</summary>
    public string Rules { get; }

    /// <summary>The kernel line whose rules were applied.</summary>
    public KernelLine Line { get; init; } = KernelLines.Linux61;

    /// <summary>Why the result is unverified (a line forced with <c>--rules</c> that is not the image's own), or null.</summary>
    public string? Warning { get; init; }

    /// <summary>The tables of the text passes (jump labels, static calls, mcount, trampolines); null when they did not run
    /// (2.6.22 rules, or turned off).</summary>
    public KernelTextTables? TextTables { get; init; }

    /// <summary>The text passes' decisions, one line each (what <c>jump_label_init()</c>, <c>static_call_init()</c>,
    /// <c>ftrace_init()</c> and <c>sched_dynamic_update()</c> did, and what could not be done).</summary>
    public ImmutableArray<string> TextDecisions { get; init; } = [];

    /// <summary>Every site of the text passes after patching (mcount, jump labels, static calls, trampolines, in that order),
    /// with whether the running kernel decides its state and the states it may legally be in. Patched in place
    /// (<see cref="InPlace"/>), the bytes before are the patched ones with every pass's writes undone (<see cref="ReadOriginal"/>).</summary>
    public ImmutableArray<KernelTextSite> TextSites
    {
        get => textSites?.Value ?? [];
        init => textSites = new Lazy<ImmutableArray<KernelTextSite>>(value);
    }

    private Lazy<ImmutableArray<KernelTextSite>>? textSites;

    /// <summary>Builds <see cref="TextSites"/> on first use.</summary>
    internal Func<ImmutableArray<KernelTextSite>>? TextSitesFactory
    {
        init => textSites = value is null ? null : new Lazy<ImmutableArray<KernelTextSite>>(value);
    }

    /// <summary>Whether the image's own bytes were patched (<see cref="KernelBootPatcher.PatchInPlace(KernelImage, KernelCpuDescription, KernelLine?, IProgress{BootPass}?)"/>): then
    /// <see cref="Image"/> holds the patched bytes too, and what <see cref="Sites"/> and <see cref="TextSites"/> give as
    /// the bytes before is rebuilt from the passes' plans (<see cref="ReadOriginal"/>).</summary>
    public bool InPlace { get; init; }

    /// <summary>The image's bytes at [<paramref name="address"/>, + <paramref name="length"/>) as they were before the
    /// passes: the original image's, or, patched in place, the patched bytes with every pass's writes undone (last pass
    /// first: each poke's old bytes are what its range held before its plan was written).</summary>
    /// <exception cref="ImageFormatException">The range is not inside one section with file bytes.</exception>
    public byte[] ReadOriginal(ulong address, int length)
    {
        var bytes = Image.ReadBytes(address, length).ToArray();
        if (InPlace)
            Undo(Passes, address, bytes);
        return bytes;
    }

    /// <summary>Overwrites <paramref name="bytes"/>, the bytes at <paramref name="address"/> after every pass of
    /// <paramref name="passes"/>, with the old bytes of each poke over them, last pass first: the bytes before the passes.</summary>
    internal static void Undo(ImmutableArray<BootPassResult> passes, ulong address, Span<byte> bytes)
    {
        ulong end = address + (ulong)bytes.Length;
        for (int k = passes.Length - 1; k >= 0; k--)
        {
            var pokes = passes[k].Plan.AsSpan();   // sorted by address, none overlapping
            for (int i = FirstEndingAfter(pokes, address); i < pokes.Length && pokes[i].Address < end; i++)
            {
                var p = pokes[i];
                ulong from = Math.Max(p.Address, address), to = Math.Min(p.End, end);
                p.Old.Span.Slice((int)(from - p.Address), (int)(to - from)).CopyTo(bytes[(int)(from - address)..]);
            }
        }
    }

    /// <summary>The PREEMPT_DYNAMIC mode the static calls were set for; null without PREEMPT_DYNAMIC (or unknown).</summary>
    public PreemptMode? Preempt { get; init; }

    /// <summary>Every site of every table, in table order (alt, para, retpoline, return, lock; then, where the image has
    /// them, call, endbr, runtime_const), with before/after bytes and writers.</summary>
    public IEnumerable<KernelSiteOutcome> Sites()
    {
        foreach (var o in TableSites())
            yield return o;
        var elf = Image.Elf;
        foreach (var (kind, section, len) in new[] { (KernelSiteKind.CallSite, ".call_sites", 5), (KernelSiteKind.Endbr, Linux61Passes.IbtSealTable, 4) })
        {
            if (elf.FindSection(section) is not { } sec || !sec.HasFileBytes)
                continue;
            var table = Image.ReadBytes(sec.Address, (int)sec.Size).ToArray();
            for (int i = 0; i + 4 <= table.Length; i += 4)
            {
                ulong addr = elf.AddressPlus(sec.Address + (ulong)i, System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(table.AsSpan(i)));
                if (elf.TryReadBytes(addr, len, out _))
                    yield return Outcome(kind, i / 4, addr, len);
            }
        }
        int k = 0;
        foreach (var (_, _, address, width) in Linux612Passes.RuntimeConstSites(Image))
            yield return Outcome(KernelSiteKind.RuntimeConst, k++, address, width);
    }

    private IEnumerable<KernelSiteOutcome> TableSites()
    {
        var t = Image.Tables;
        foreach (var a in t.Alternatives)
            yield return Outcome(KernelSiteKind.Alternative, a.Index, a.Address, a.InstrLen);
        foreach (var p in t.Paravirt)
            yield return Outcome(KernelSiteKind.Paravirt, p.Index, p.Address, p.Len);
        foreach (var r in t.Retpolines)
            yield return Outcome(KernelSiteKind.Retpoline, r.Index, r.Address, BranchLength(r.Address));
        foreach (var r in t.Returns)
            yield return Outcome(KernelSiteKind.Return, r.Index, r.Address, BranchLength(r.Address));
        foreach (var l in t.SmpLocks)
            yield return Outcome(KernelSiteKind.SmpLock, l.Index, l.Address, 1);
    }

    /// <summary>The length of the branch instruction a retpoline or return site names (5, or 6 for a Jcc): decoded from
    /// the bytes before the passes.</summary>
    public int BranchLength(ulong address)
    {
        // Up to 16 bytes, fewer at the end of a section.
        for (int n = 16; n > 0; n--)
        {
            if (Image.Elf.TryReadBytes(address, n, out _))
            {
                var insn = KernelInsn.Decode(ReadOriginal(address, n), address, Image.Bitness);
                return insn.IsValid ? insn.Length : 1;
            }
        }
        return 1;
    }

    private KernelSiteOutcome Outcome(KernelSiteKind kind, int index, ulong address, int length)
    {
        var before = ReadOriginal(address, length);
        var after = Patched.ReadBytes(address, length).ToArray();
        var writers = ImmutableArray.CreateBuilder<BootPass>();
        foreach (var p in Passes)
        {
            if (Touches(p.Plan, address, length))
                writers.Add(p.Pass);
        }
        return new KernelSiteOutcome(kind, index, address, before, after, writers.ToImmutable());
    }

    /// <summary>The index of the first poke of <paramref name="pokes"/> (sorted by address, none overlapping) that ends
    /// after <paramref name="address"/>; its length when none does.</summary>
    private static int FirstEndingAfter(ReadOnlySpan<Poke> pokes, ulong address)
    {
        int lo = 0, hi = pokes.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (pokes[mid].End <= address)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }

    internal static bool Touches(PatchPlan plan, ulong address, int length)
    {
        var pokes = plan.AsSpan();
        ulong end = address + (ulong)length;
        for (int i = FirstEndingAfter(pokes, address); i < pokes.Length && pokes[i].Address < end; i++)
        {
            // a merged poke may cover bytes it did not change: compare
            var p = pokes[i];
            ulong from = Math.Max(p.Address, address), to = Math.Min(p.End, end);
            int o = (int)(from - p.Address), n = (int)(to - from);
            if (!p.Old.Span.Slice(o, n).SequenceEqual(p.New.Span.Slice(o, n)))
                return true;
        }
        return false;
    }
}
