using System.Collections.Immutable;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Altpatch.Code;
using Altpatch.Images.Boot;
using Iced.Intel;

namespace Altpatch.Images.Verify;

/// <summary>
/// <c>kernel verify</c>: compares the <c>.text</c> of a running kernel with what the kernel's own boot-time patching
/// predicts for the image, CPU and command line, and classifies every byte as predicted, dynamic (a site the running
/// kernel decides, in a legal state) or unexplained.
/// </summary>
/// <remarks>
/// The prediction is made where the kernel runs: the image is moved to the dump's base with its own relocation table
/// (<see cref="KernelImage.Relocate"/>, what the decompressor does for KASLR) and the boot passes run on that image, so
/// relocated absolute addresses, in the text and in what the passes copy into it, come out as in the running kernel.
/// </remarks>
public static class KernelTextVerifier
{
    /// <summary>Differing bytes closer than this many equal bytes are reported as one range.</summary>
    public const int MergeGap = 4;

    /// <summary>
    /// Verifies <paramref name="found"/>, the running kernel's <c>.text</c> at <paramref name="textAddress"/>, against
    /// <paramref name="image"/> patched by <paramref name="predict"/>.
    /// </summary>
    /// <param name="image">The kernel image as opened (link addresses).</param>
    /// <param name="found">The running kernel's bytes from the start of <c>.text</c> (at least its size; more is ignored).</param>
    /// <param name="textAddress">Where <c>.text</c> was loaded (runtime <c>_stext</c>).</param>
    /// <param name="source">The dump, for messages and the report.</param>
    /// <param name="predict">Runs the boot passes on the image at its runtime address, e.g.
    /// <c>img => KernelBootPatcher.Patch(img, description)</c>.</param>
    /// <param name="progress">Told each step's name before it runs.</param>
    /// <exception cref="KernelVerifyException">The dump does not fit the image at that base (<see cref="KernelTextLocator.CheckFit"/>).</exception>
    /// <exception cref="ImageFormatException">The image or its relocation table is malformed.</exception>
    /// <exception cref="Altpatch.Text.PatchException">A site cannot be patched (as for <c>kernel patch</c>).</exception>
    /// <exception cref="KernelPatchException">The image cannot be patched as asked (as for <c>kernel patch</c>).</exception>
    /// <exception cref="ArgumentException"><paramref name="predict"/> returned a prediction of another image than the one it was given.</exception>
    public static KernelVerifyResult Verify(KernelImage image, ReadOnlyMemory<byte> found, ulong textAddress, string source,
        Func<KernelImage, KernelPatchResult> predict, IProgress<string>? progress = null) =>
        Verify(image, found, textAddress, source, predict, progress, inPlace: false);

    private static KernelVerifyResult Verify(KernelImage image, ReadOnlyMemory<byte> found, ulong textAddress, string source,
        Func<KernelImage, KernelPatchResult> predict, IProgress<string>? progress, bool inPlace)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(predict);
        var steps = ImmutableArray.CreateBuilder<KernelVerifyStep>();
        var sw = new Stopwatch();
        T Step<T>(string name, Func<T> body)
        {
            progress?.Report(name);
            sw.Restart();
            var r = body();
            steps.Add(new KernelVerifyStep(name, sw.Elapsed));
            return r;
        }

        var fit = Step("check", () => KernelTextLocator.CheckFit(image, found.Span, textAddress, source));
        var runtime = Step("relocate", () => inPlace ? image.RelocateInPlace(fit.Delta) : image.Relocate(fit.Delta));
        runtime.DecodeSymbolsInBackground();   // beside the thunks, the boot CPU and the tables, before the text passes need them
        var prediction = Step("predict", () => predict(runtime));
        if (!ReferenceEquals(prediction.Image, runtime))
            throw new ArgumentException("the prediction must be made on the image it is given", nameof(predict));
        var result = Step("compare", () => Compare(runtime, prediction, found, textAddress));
        return new KernelVerifyResult(image, runtime, prediction, source, textAddress, fit, result.TextLength, result.DynamicBytes,
            result.UnexplainedBytes, result.Unexplained, result.DynamicChanged, result.DynamicSites, steps.ToImmutable());
    }

    /// <summary>
    /// Verifies <paramref name="found"/> against <paramref name="image"/> patched for <paramref name="cpu"/> as the kernel
    /// patches itself at boot (<see cref="Predict"/>).
    /// </summary>
    /// <param name="image">The kernel image as opened (link addresses).</param>
    /// <param name="found">The running kernel's bytes from the start of <c>.text</c>.</param>
    /// <param name="textAddress">Where <c>.text</c> was loaded.</param>
    /// <param name="source">The dump, for messages and the report.</param>
    /// <param name="cpu">The machine, as for <c>kernel patch</c>.</param>
    /// <param name="text">The text passes' options (the command line's <c>preempt=</c>, …); symbols default to the
    /// image's own kallsyms at the runtime address.</param>
    /// <param name="progress">Told each step's name before it runs.</param>
    /// <exception cref="KernelVerifyException">As for <see cref="Verify(KernelImage, ReadOnlyMemory{byte}, ulong, string, Func{KernelImage, KernelPatchResult}, IProgress{string}?)"/>.</exception>
    /// <exception cref="ImageFormatException">As for that overload.</exception>
    /// <exception cref="Altpatch.Text.PatchException">As for that overload.</exception>
    /// <exception cref="KernelPatchException">As for that overload.</exception>
    public static KernelVerifyResult Verify(KernelImage image, ReadOnlyMemory<byte> found, ulong textAddress, string source,
        KernelCpuDescription cpu, KernelTextOptions? text = null, IProgress<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        return Verify(image, found, textAddress, source, img => Predict(img, cpu, text), progress);
    }

    /// <summary>
    /// Like <see cref="Verify(KernelImage, ReadOnlyMemory{byte}, ulong, string, KernelCpuDescription, KernelTextOptions?, IProgress{string}?)"/>,
    /// but moves and patches <paramref name="image"/>'s own bytes instead of copies of them (what <c>kernel verify</c>
    /// does: no second and third image-sized buffer). The result is the same; the image is consumed: afterwards its
    /// bytes are the prediction's (moved to the dump's base and patched), so use the result's
    /// <see cref="KernelVerifyResult.Prediction"/>, whose <see cref="KernelPatchResult.ReadOriginal"/> and sites still
    /// give the bytes before the passes, not the image.
    /// </summary>
    /// <param name="image">The kernel image as opened (link addresses); consumed.</param>
    /// <param name="found">As for the other overloads.</param>
    /// <param name="textAddress">As for the other overloads.</param>
    /// <param name="source">As for the other overloads.</param>
    /// <param name="cpu">As for the other overloads.</param>
    /// <param name="text">As for the other overloads.</param>
    /// <param name="progress">As for the other overloads.</param>
    /// <exception cref="KernelVerifyException">As for <see cref="Verify(KernelImage, ReadOnlyMemory{byte}, ulong, string, Func{KernelImage, KernelPatchResult}, IProgress{string}?)"/>.</exception>
    /// <exception cref="ImageFormatException">As for that overload.</exception>
    /// <exception cref="Altpatch.Text.PatchException">As for that overload.</exception>
    /// <exception cref="KernelPatchException">As for that overload.</exception>
    public static KernelVerifyResult VerifyInPlace(KernelImage image, ReadOnlyMemory<byte> found, ulong textAddress, string source,
        KernelCpuDescription cpu, KernelTextOptions? text = null, IProgress<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        return Verify(image, found, textAddress, source, img => PredictOn(img, cpu, text, inPlace: true), progress, inPlace: true);
    }

    /// <summary>
    /// The kernel's boot-time patching of an image at its runtime address (<see cref="KernelImage.Relocate"/>) for a CPU:
    /// <see cref="KernelBootPatcher.Patch(KernelImage, KernelBootState, KernelThunks, KernelTextOptions, IProgress{BootPass}?)"/>;
    /// the text passes take the image's own kallsyms (runtime addresses) unless <paramref name="text"/> gives symbols
    /// (which must then be the runtime ones), and a KVM guest's System.map (link addresses) is moved to the runtime address.
    /// </summary>
    /// <param name="runtime">The image where the kernel runs.</param>
    /// <param name="cpu">The machine.</param>
    /// <param name="text">The text passes' options, or null for the build's defaults.</param>
    /// <exception cref="ImageFormatException">A table is malformed.</exception>
    /// <exception cref="Altpatch.Text.PatchException">A site cannot be patched.</exception>
    /// <exception cref="KernelPatchException">The image cannot be patched as asked.</exception>
    public static KernelPatchResult Predict(KernelImage runtime, KernelCpuDescription cpu, KernelTextOptions? text = null) =>
        PredictOn(runtime, cpu, text, inPlace: false);

    private static KernelPatchResult PredictOn(KernelImage runtime, KernelCpuDescription cpu, KernelTextOptions? text, bool inPlace)
    {
        ArgumentNullException.ThrowIfNull(runtime);
        ArgumentNullException.ThrowIfNull(cpu);
        text ??= KernelTextOptions.Default;
        var thunks = KernelThunks.Find(runtime);
        var kvmSymbols = Moved(cpu.Symbols, runtime);
        var pvOps = cpu.Hypervisor == KernelHypervisor.Kvm
            ? KvmGuest.Plan(runtime, cpu.KvmFeatures, cpu.Cpus, kvmSymbols)
            : KvmPvOps.None;
        var line = text.Rules ?? KernelLines.For(runtime);
        var state = line.DeriveState(runtime, cpu, thunks, pvOps);
        // The text passes take the image's own kallsyms (runtime addresses on a moved image) unless given symbols.
        return inPlace ? KernelBootPatcher.PatchInPlace(runtime, state, thunks, text) : KernelBootPatcher.Patch(runtime, state, thunks, text);
    }

    /// <summary>Link-time symbol addresses inside the kernel's image moved to where <paramref name="runtime"/> is.</summary>
    private static IReadOnlyDictionary<string, ulong>? Moved(IReadOnlyDictionary<string, ulong>? symbols, KernelImage runtime)
    {
        if (symbols is null || runtime.RelocationDelta == 0)
            return symbols;
        ulong delta = (ulong)runtime.RelocationDelta;
        ulong textStart = KernelTextLocator.TextSection(runtime).Address - delta;
        return symbols.ToDictionary(kv => kv.Key, kv => kv.Value >= textStart ? kv.Value + delta : kv.Value, StringComparer.Ordinal);
    }

    internal sealed record Comparison(int TextLength, long DynamicBytes, long UnexplainedBytes, ImmutableArray<KernelUnexplainedRange> Unexplained,
        ImmutableArray<KernelDynamicObservation> DynamicChanged, ImmutableArray<KernelDynamicSite> DynamicSites);

    private static Comparison Compare(KernelImage runtime, KernelPatchResult prediction, ReadOnlyMemory<byte> foundMemory, ulong textAddress)
    {
        var text = KernelTextLocator.TextSection(runtime);
        if (text.Address != textAddress)
            throw new InvalidOperationException($"the runtime image's .text is at 0x{text.Address:x}, not 0x{textAddress:x}");
        var predictedMemory = prediction.Patched.SectionBytes(prediction.Patched.FindSection(".text") ?? text);
        runtime.TryGetSymbols(out var symbols);
        var dynamicSites = KernelTextExpectations.DynamicSites(prediction, symbols);
        return Compare(predictedMemory[..(int)text.Size], foundMemory, textAddress, runtime.Bitness, dynamicSites,
            () => KernelTextExpectations.Sites(prediction), symbols is null ? null : symbols.Describe, symbols);
    }

    /// <summary>Classifies every byte of <paramref name="foundMemory"/> against <paramref name="predictedMemory"/> (code at
    /// <paramref name="textAddress"/>, a kernel's <c>.text</c> or a module's section): as predicted, a dynamic site in a legal
    /// state, or unexplained (merged into ranges, named and disassembled).</summary>
    internal static Comparison Compare(ReadOnlyMemory<byte> predictedMemory, ReadOnlyMemory<byte> foundMemory, ulong textAddress, int bitness,
        ImmutableArray<KernelDynamicSite> dynamicSites, Func<ImmutableArray<KernelSiteSpan>> allSites, Func<ulong, string>? describe, KernelSymbols? symbols,
        Func<ulong, ulong?>? symbolStart = null)
    {
        int n = predictedMemory.Length;
        var predicted = predictedMemory.Span[..n];
        var found = foundMemory.Span[..n];
        string Describe(KernelSymbols? _, ulong address) => describe?.Invoke(address) ?? $"0x{address:x}";

        // 1. Runs of differing bytes.
        var runs = new List<(int Start, int End)>();
        for (int i = 0; i < n;)
        {
            i += predicted[i..].CommonPrefixLength(found[i..]);
            if (i >= n)
                break;
            int j = i + 1;
            while (j < n && predicted[j] != found[j])
                j++;
            runs.Add((i, j));
            i = j;
        }

        // 2. Dynamic sites explain the runs they cover when their whole bytes are in a legal state.
        var legal = new Dictionary<int, KernelDynamicObservation>();      // site index -> observation
        var illegal = new HashSet<int>();
        var unexplained = new List<(int Start, int End)>();
        int siteCursor = 0;
        foreach (var (s, e) in runs)
        {
            int pos = s;
            while (siteCursor < dynamicSites.Length && Offset(dynamicSites[siteCursor].End, textAddress) <= s)
                siteCursor++;
            for (int k = siteCursor; k < dynamicSites.Length && pos < e; k++)
            {
                var site = dynamicSites[k];
                long so = Offset(site.Address, textAddress), se = so + site.Length;
                if (so >= e)
                    break;
                if (se <= pos)
                    continue;
                if (so < 0 || se > n)
                    continue;   // a site outside .text (e.g. .init.text) cannot explain .text bytes
                bool ok;
                if (legal.ContainsKey(k))
                    ok = true;
                else if (illegal.Contains(k))
                    ok = false;
                else
                {
                    var bytes = found.Slice((int)so, site.Length);
                    if (site.Matcher(bytes) is { } state)
                    {
                        legal[k] = new KernelDynamicObservation(site, state, bytes.ToArray(), Describe(symbols, site.Address));
                        ok = true;
                    }
                    else
                    {
                        illegal.Add(k);
                        ok = false;
                    }
                }
                if (ok)
                {
                    if (so > pos)
                        unexplained.Add((pos, (int)so));
                    pos = Math.Max(pos, (int)se);
                }
            }
            if (pos < e)
                unexplained.Add((pos, e));
        }

        // 3. Unexplained bytes, merged into ranges.
        long unexplainedBytes = 0;
        foreach (var (s, e) in unexplained)
        {
            for (int i = s; i < e; i++)
            {
                if (predicted[i] != found[i])
                    unexplainedBytes++;
            }
        }
        var merged = new List<(int Start, int End)>();
        foreach (var r in unexplained)
        {
            if (merged.Count > 0 && r.Start - merged[^1].End < MergeGap)
                merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, r.End));
            else
                merged.Add(r);
        }

        var sites = merged.Count > 0 ? allSites() : [];
        symbolStart ??= a => symbols is not null && symbols.TryFind(a, out var sym, out _) ? sym.Address : null;
        RangeDisassembler? disassembler = null;   // only for unexplained ranges (it may copy the dump into an array)
        var ranges = ImmutableArray.CreateBuilder<KernelUnexplainedRange>(merged.Count);
        foreach (var (s, e) in merged)
        {
            ulong a = textAddress + (ulong)s;
            disassembler ??= new RangeDisassembler(predictedMemory[..n], foundMemory[..n], textAddress, bitness, symbolStart);
            var (expectedCode, foundCode) = disassembler.Disassemble(s, e);
            var names = ImmutableArray.CreateBuilder<string>();
            foreach (var site in Overlapping(sites, a, (ulong)(e - s)))
                names.Add(site.ToString());
            foreach (int k in illegal)
            {
                var d = dynamicSites[k];
                if (d.Address < a + (ulong)(e - s) && d.End > a)
                    names.Add($"{d.Kind.ShortName()} #{d.Index} in no legal state ({d.Detail})");
            }
            ranges.Add(new KernelUnexplainedRange(a, e - s, Describe(symbols, a), predicted[s..e].ToArray(), found[s..e].ToArray(),
                expectedCode, foundCode, names.ToImmutable()));
        }

        var changed = legal.OrderBy(kv => kv.Key).Select(kv => kv.Value).ToImmutableArray();
        long dynamicBytes = changed.Sum(o => (long)o.Site.Length);
        return new Comparison(n, dynamicBytes, unexplainedBytes, ranges.MoveToImmutable(), changed, dynamicSites);
    }

    private static long Offset(ulong address, ulong textAddress) => unchecked((long)(address - textAddress));

    /// <summary>The sites of a sorted list that overlap [address, address + length).</summary>
    private static IEnumerable<KernelSiteSpan> Overlapping(ImmutableArray<KernelSiteSpan> sites, ulong address, ulong length)
    {
        // Sites are at most 255 bytes long (alt_instr's instrlen is a byte): start the scan that far back.
        ulong from = address >= 256 ? address - 256 : 0;
        int lo = 0, hi = sites.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (sites[mid].Address < from)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (int i = lo; i < sites.Length && sites[i].Address < address + length; i++)
        {
            if (sites[i].Address + (ulong)sites[i].Length > address)
                yield return sites[i];
        }
    }

    /// <summary>
    /// Disassembles the predicted and found code around a range, decoding from an instruction boundary: the start of
    /// the symbol holding it (kallsyms; a module's own symbols for a module), swept forward in address order so a function is decoded once however many
    /// ranges it has.
    /// </summary>
    private sealed class RangeDisassembler
    {
        private readonly byte[] predictedBytes, foundBytes;
        private readonly int predictedStart, foundStart, textLength;
        private readonly ulong textBase;
        private readonly Func<ulong, ulong?> symbolStartOf;
        private readonly Decoder decoder;
        private readonly ArrayCodeReader reader = new();
        private readonly Formatter formatter;
        private readonly StringOutput output = new();
        private int sweepAt = -1;        // an instruction boundary of the predicted code reached by the last sweep
        private ulong sweepSymbol = ulong.MaxValue;

        public RangeDisassembler(ReadOnlyMemory<byte> predicted, ReadOnlyMemory<byte> found, ulong textAddress, int bitness, Func<ulong, ulong?> symbolStart)
        {
            (predictedBytes, predictedStart) = ArrayOf(predicted);
            (foundBytes, foundStart) = ArrayOf(found);
            textLength = predicted.Length;
            textBase = textAddress;
            symbolStartOf = symbolStart;
            decoder = Decoder.Create(bitness, reader, DecoderOptions.None);
            formatter = Disassembler.CreateFormatter();
        }

        private static (byte[] Array, int Start) ArrayOf(ReadOnlyMemory<byte> m) =>
            MemoryMarshal.TryGetArray(m, out var seg) && seg.Array is not null ? (seg.Array, seg.Offset) : (m.ToArray(), 0);

        public (string Expected, string Found) Disassemble(int start, int end)
        {
            // A boundary at or before the range: the symbol's start (or the last sweep inside the same symbol).
            int boundary = start;
            ulong symbolStart = ulong.MaxValue;
            ulong at = textBase + (ulong)start;
            if (symbolStartOf(at) is { } symAddress && symAddress <= at && at - symAddress is var off && off <= 0x10000 && off <= (ulong)start)
            {
                symbolStart = symAddress;
                boundary = start - (int)off;
                if (sweepSymbol == symbolStart && sweepAt >= boundary && sweepAt <= start)
                    boundary = sweepAt;
            }
            // Sweep the predicted code to the first instruction that reaches into the range.
            int first = boundary;
            foreach (var (ip, len) in Decode(predictedBytes, predictedStart, boundary, start + 1))
            {
                if (ip + len > start)
                {
                    first = ip;
                    break;
                }
                first = ip + len;
            }
            if (first > start)
                first = start;
            sweepAt = first;
            sweepSymbol = symbolStart;
            return (Format(predictedBytes, predictedStart, first, end), Format(foundBytes, foundStart, first, end));
        }

        /// <summary>(offset, length) of the instructions decoded from <paramref name="from"/> until one starts at or past <paramref name="until"/>.</summary>
        private IEnumerable<(int Offset, int Length)> Decode(byte[] data, int dataStart, int from, int until)
        {
            int pos = from;
            while (pos < until && pos < textLength)
            {
                reader.Reset(data, dataStart + pos, textLength - pos);
                decoder.IP = textBase + (ulong)pos;
                decoder.Decode(out var insn);
                int len = insn.IsInvalid || insn.Length == 0 ? 1 : insn.Length;
                yield return (pos, len);
                pos += len;
            }
        }

        private string Format(byte[] data, int dataStart, int from, int end)
        {
            var parts = new List<string>();
            int pos = from;
            while (pos < end && pos < textLength && parts.Count < 32)
            {
                reader.Reset(data, dataStart + pos, textLength - pos);
                decoder.IP = textBase + (ulong)pos;
                decoder.Decode(out var insn);
                if (insn.IsInvalid || pos + insn.Length > textLength)
                {
                    parts.Add("(bad)");
                    pos++;
                    continue;
                }
                formatter.Format(insn, output);
                parts.Add(output.ToStringAndReset());
                pos += insn.Length;
            }
            return string.Join("; ", parts);
        }
    }
}
