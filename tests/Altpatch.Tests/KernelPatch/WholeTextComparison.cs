using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// Altpatch's patched text against a whole-text truth, byte by byte, in the terms of issue 8: a byte is as predicted, or
/// differs inside a site whose state the running kernel decides (dynamic) and that is in one of its legal states, or
/// differs anywhere else (unexplained: the test fails on any).
/// </summary>
internal sealed class WholeTextComparison
{
    public required string Section { get; init; }
    public int Size { get; init; }
    public int Differing { get; set; }
    public int Dynamic { get; set; }
    public Dictionary<KernelSiteKind, int> DynamicByKind { get; } = [];
    public List<string> Unexplained { get; } = [];
    /// <summary>Dynamic sites in another legal state than Altpatch's, by kind (up to 200): what the running kernel changed.</summary>
    public List<string> DynamicSites { get; } = [];
    public int UnexplainedBytes { get; set; }
    public double Percent => 100.0 * Differing / Size;

    /// <summary>Compares <paramref name="patched"/>'s section with the truth. Positions compared: every byte of a run (the
    /// kernel changed it) and every byte Altpatch changed; elsewhere both left the (relocated) vmlinux alone.
    /// <paramref name="functionStarts"/>: addresses a static call may go to (text symbols); null: any target.
    /// <paramref name="delta"/>: the truth's KASLR offset when <paramref name="result"/> patched the image relocated for it
    /// (<see cref="KernelImage.Relocate"/>): the section is then read at its runtime address.</summary>
    public static WholeTextComparison Compare(KernelPatchResult result, ElfFile patched, WholeTextTruth.Section truth, IReadOnlySet<ulong>? functionStarts, long delta = 0)
    {
        var img = result.Image;
        ulong address = unchecked(truth.Address + (ulong)delta);
        var v = img.Elf.ReadBytes(address, truth.Size);
        var m = patched.ReadBytes(address, truth.Size);
        var final = v.ToArray();               // the truth, as far as it can be built without the relocation table
        var compare = new bool[truth.Size];
        foreach (var (off, bytes) in truth.Runs)
        {
            bytes.CopyTo(final, off);
            Array.Fill(compare, true, off, bytes.Length);
        }
        for (int i = 0; i < m.Length; i++)
        {
            if (m[i] != v[i])
                compare[i] = true;
        }
        var siteAt = new Dictionary<ulong, KernelTextSite>();
        foreach (var s in result.TextSites)
        {
            for (int k = 0; k < s.Length; k++)
                siteAt.TryAdd(s.Address + (ulong)k, s);
        }
        var c = new WholeTextComparison { Section = truth.Name, Size = truth.Size };
        var judged = new Dictionary<KernelTextSite, bool>();
        for (int i = 0; i < truth.Size; i++)
        {
            if (!compare[i] || m[i] == final[i])
                continue;
            c.Differing++;
            ulong a = address + (ulong)i;
            if (siteAt.TryGetValue(a, out var s) && s.Dynamic)
            {
                if (!judged.TryGetValue(s, out bool legal))
                {
                    // Explained only when both are states the site may be in: Altpatch's (its boot state) and the kernel's
                    // (where the running kernel moved it). Either one illegal is an error.
                    var found = final.AsSpan((int)(s.Address - address), s.Length).ToArray();
                    var mine = m.Slice((int)(s.Address - address), s.Length).ToArray();
                    bool foundLegal = IsLegal(img, s, found, functionStarts), mineLegal = IsLegal(img, s, mine, functionStarts);
                    legal = foundLegal && mineLegal;
                    judged[s] = legal;
                    if (legal && c.DynamicSites.Count < 200)
                        c.DynamicSites.Add($"0x{s.Address:x} {s.Kind} ({s.Detail}): predicted {Convert.ToHexString(mine)}, found {Convert.ToHexString(found)}");
                    if (!legal)
                        c.Unexplained.Add($"0x{s.Address:x} {s.Kind} ({s.Detail}): expected {Convert.ToHexString(mine)}, found {Convert.ToHexString(found)}: "
                            + (mineLegal ? "the kernel's bytes are" : "Altpatch's bytes are") + " not a legal state");
                }
                if (legal)
                {
                    c.Dynamic++;
                    c.DynamicByKind[s.Kind] = c.DynamicByKind.GetValueOrDefault(s.Kind) + 1;
                    continue;
                }
                c.UnexplainedBytes++;
                continue;
            }
            c.UnexplainedBytes++;
            if (c.Unexplained.Count < 20)
                c.Unexplained.Add($"0x{a:x}: expected {m[i]:x2}, found {final[i]:x2} (vmlinux {v[i]:x2}){(s is null ? "" : $" in non-dynamic {s.Kind} site 0x{s.Address:x}")}");
        }
        return c;
    }

    /// <summary>In a legal state: the bytes match one, and a branch to "any function" goes to a function start, a branch
    /// to a run-time trampoline goes outside the image's code.</summary>
    private static bool IsLegal(KernelImage img, KernelTextSite s, byte[] code, IReadOnlySet<ulong>? functionStarts) =>
        s.States.Any(st => st.Matches(code, s, s.Address, img.Bitness) && st.Form switch
        {
            KernelTextStateForm.BranchToFunction => functionStarts is null || functionStarts.Contains(st.BranchTarget(code, s.Address, img.Bitness)),
            KernelTextStateForm.BranchToFunctionThunk => functionStarts is null || functionStarts.Contains(st.BranchTarget(code, s.Address, img.Bitness) + st.Target),
            KernelTextStateForm.BranchToTrampoline => img.Elf.SectionContaining(st.BranchTarget(code, s.Address, img.Bitness)) is not { IsExecutable: true },
            _ => true,
        });

    public override string ToString() =>
        $"{Section}: {Differing} of {Size} bytes differ ({Percent:F4} %): {Dynamic} in dynamic sites in a legal state ("
        + string.Join(", ", DynamicByKind.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}")) + $"), {UnexplainedBytes} unexplained";
}
