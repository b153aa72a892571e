using System.Collections.Immutable;
using Altpatch.Images.Boot;

namespace Altpatch.Images.Verify;

/// <summary>A site of any table, by address, to name what an unexplained range hits ("alt #1234").</summary>
/// <param name="Kind">The table.</param>
/// <param name="Index">Entry index.</param>
/// <param name="Address">Runtime address.</param>
/// <param name="Length">Bytes.</param>
public readonly record struct KernelSiteSpan(KernelSiteKind Kind, int Index, ulong Address, int Length)
{
    /// <summary>"alt #12", "para #3", "jump #5".</summary>
    public override string ToString() => $"{Kind.ShortName()} #{Index}";
}

/// <summary>
/// What <c>kernel verify</c> expects of the running kernel's <c>.text</c>, taken from a prediction
/// (<see cref="KernelPatchResult"/> of the image at its runtime address): the sites the running kernel decides
/// (<see cref="DynamicSites(KernelPatchResult, KernelSymbols?)"/>) and every known site (<see cref="Sites(KernelPatchResult)"/>) to name what a difference hits. This is the
/// one place that reads the boot passes' per-site results; docs/verify.md lists what each kind may legally hold.
/// </summary>
public static class KernelTextExpectations
{
    /// <summary>The dynamic sites of a prediction, sorted by address: the sites whose state the running kernel may
    /// change after boot, each with a matcher of its legal states.</summary>
    /// <param name="prediction">The boot passes run on the image at its runtime address.</param>
    /// <param name="symbols">The runtime image's symbols (to name targets and check function starts), or null.</param>
    public static ImmutableArray<KernelDynamicSite> DynamicSites(KernelPatchResult prediction, KernelSymbols? symbols)
    {
        ArgumentNullException.ThrowIfNull(prediction);
        // The passes of alternative_instructions() decide their sites once, at boot: only the text passes' sites
        // (jump labels, static calls and their trampolines, ftrace) can be dynamic.
        var image = prediction.Image;
        var code = image.Sections.Where(s => s.IsAllocated && s.IsExecutable && s.Size > 0).Select(s => (s.Address, s.EndAddress)).ToArray();
        return DynamicSites(prediction.TextSites, image.Bitness, a => code.Any(r => a >= r.Address && a < r.EndAddress),
            a => symbols is not null && symbols.TryFind(a, out var sym, out ulong off) && off == 0 && sym.IsText ? sym.Name : null, symbols);
    }

    /// <summary>The dynamic sites among <paramref name="textSites"/> (a kernel's or a module's), sorted by address.</summary>
    /// <param name="textSites">The text passes' sites.</param>
    /// <param name="bitness">32 or 64.</param>
    /// <param name="inImageText">Whether an address is in code of the image (or module) verified: an ftrace trampoline never is.</param>
    /// <param name="functionAt">The name of the function starting at an address, or null (a static call may point at any).</param>
    /// <param name="symbols">The kernel's symbols (names of keys and trampolines), or null.</param>
    internal static ImmutableArray<KernelDynamicSite> DynamicSites(IEnumerable<KernelTextSite> textSites, int bitness, Func<ulong, bool> inImageText,
        Func<ulong, string?> functionAt, KernelSymbols? symbols)
    {
        bool InImageText(ulong a) => inImageText(a);
        var list = new List<KernelDynamicSite>();
        foreach (var site in textSites)
        {
            if (!site.Dynamic || site.States.IsEmpty)
                continue;
            var s = site;
            string? Match(ReadOnlySpan<byte> found)
            {
                if (found.Length != s.Length)
                    return null;
                foreach (var state in s.States)
                {
                    if (!state.Matches(found, s, s.Address, bitness))
                        continue;
                    switch (state.Form)
                    {
                        case KernelTextStateForm.BranchToFunction:
                        {
                            // static_call_update() points a call at a function: the start of a text symbol.
                            ulong target = state.BranchTarget(found, s.Address, bitness);
                            if (functionAt(target) is { } fn)
                                return $"{Opcode(state.Name)} {fn}";
                            continue;
                        }
                        case KernelTextStateForm.BranchToFunctionThunk:
                        {
                            // callthunks_translate_call_dest(): the accounting thunk in the padding of a function that
                            // skip_addr() does not name
                            ulong target = state.BranchTarget(found, s.Address, bitness) + state.Target;
                            if (functionAt(target) is { } fn && !Linux612CallThunks.IsSkippedName(fn))
                                return $"{Opcode(state.Name)} {fn}'s accounting thunk";
                            continue;
                        }
                        case KernelTextStateForm.BranchToTrampoline:
                        {
                            // An ftrace_ops or direct-call trampoline the running kernel allocated: never in the image's text.
                            ulong target = state.BranchTarget(found, s.Address, bitness);
                            if (InImageText(target))
                                continue;
                            string name = symbols is not null && symbols.TryFind(target, out var sym, out ulong off) ? $" ({sym.Name}+0x{off:x})" : "";
                            return $"{state.Name} at 0x{target:x}{name}";
                        }
                        default:
                            return state.Name;
                    }
                }
                return null;
            }
            list.Add(new KernelDynamicSite(site.Kind, site.Index, site.Address, site.Length, site.After, NameKey(site.Detail, symbols), Match));
        }
        list.Sort((a, b) => a.Address.CompareTo(b.Address));
        return [.. list];
    }

    /// <summary>A jump label's detail with its key named: "key 0xffffffff82a5d100 disabled" → "key __use_tsc disabled".</summary>
    private static string NameKey(string detail, KernelSymbols? symbols)
    {
        const string prefix = "key 0x";
        if (symbols is null || !detail.StartsWith(prefix, StringComparison.Ordinal))
            return detail;
        int end = detail.IndexOfAny([' ', ','], prefix.Length);
        if (end < 0)
            end = detail.Length;
        if (!ulong.TryParse(detail.AsSpan(prefix.Length, end - prefix.Length), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out ulong key)
            || !symbols.TryFind(key, out var sym, out ulong off))
            return detail;
        return $"key {sym.Name}{(off == 0 ? "" : $"+0x{off:x}")}{detail[end..]}";
    }

    /// <summary>"call" of "call any function".</summary>
    private static string Opcode(string stateName)
    {
        int sp = stateName.IndexOf(' ', StringComparison.Ordinal);
        return sp < 0 ? stateName : stateName[..sp];
    }

    /// <summary>Every site of the prediction's tables, sorted by address.</summary>
    public static ImmutableArray<KernelSiteSpan> Sites(KernelPatchResult prediction)
    {
        ArgumentNullException.ThrowIfNull(prediction);
        return Sites(prediction.Image.Tables, prediction.TextSites, prediction.BranchLength);
    }

    /// <summary>Every site of a kernel's or a module's tables and text sites, sorted by address.</summary>
    internal static ImmutableArray<KernelSiteSpan> Sites(KernelPatchTables t, ImmutableArray<KernelTextSite> textSites, Func<ulong, int> branchLength)
    {
        var list = new List<KernelSiteSpan>(t.Alternatives.Length + t.Paravirt.Length + t.Retpolines.Length + t.Returns.Length + t.SmpLocks.Length);
        foreach (var a in t.Alternatives)
            list.Add(new KernelSiteSpan(KernelSiteKind.Alternative, a.Index, a.Address, a.InstrLen));
        foreach (var p in t.Paravirt)
            list.Add(new KernelSiteSpan(KernelSiteKind.Paravirt, p.Index, p.Address, p.Len));
        foreach (var r in t.Retpolines)
            list.Add(new KernelSiteSpan(KernelSiteKind.Retpoline, r.Index, r.Address, branchLength(r.Address)));
        foreach (var r in t.Returns)
            list.Add(new KernelSiteSpan(KernelSiteKind.Return, r.Index, r.Address, branchLength(r.Address)));
        foreach (var l in t.SmpLocks)
            list.Add(new KernelSiteSpan(KernelSiteKind.SmpLock, l.Index, l.Address, 1));
        foreach (var x in textSites)
            list.Add(new KernelSiteSpan(x.Kind, x.Index, x.Address, x.Length));
        list.Sort((a, b) => a.Address.CompareTo(b.Address));
        return [.. list];
    }
}
