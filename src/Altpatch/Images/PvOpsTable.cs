using System.Collections.Immutable;
using Altpatch.Code;
using Iced.Intel;

namespace Altpatch.Images;

/// <summary>
/// The kernel's <c>pv_ops</c> (6.1: <c>struct paravirt_patch_template pv_ops</c> in <c>.data</c>): an array of
/// function pointers, slot <i>type</i> holding the function paravirt site type <i>type</i> calls. Its initial
/// contents are the native implementations the image was linked with.
/// </summary>
/// <remarks>
/// <para>The images are stripped, so the symbol is found through the sites that use it: in an unpatched
/// image every <c>.parainstructions</c> site is <c>PARAVIRT_CALL</c>, an indirect call through its slot —
/// <c>call *pv_ops+type*8(%rip)</c> (ff 15 disp32) on x86-64, <c>call *pv_ops+type*4</c> (ff 15 abs32) on
/// i386. Each site's memory operand minus type × pointer size gives the table's address; the value most
/// sites agree on is taken, and how many agree, disagree or are not such a call is recorded.</para>
/// </remarks>
public sealed class PvOpsTable
{
    private PvOpsTable(ulong address, int pointerSize, ImmutableArray<ulong> slots, int agreeing, int disagreeing, int skipped, string section)
    {
        Address = address;
        PointerSize = pointerSize;
        Slots = slots;
        SitesAgreeing = agreeing;
        SitesDisagreeing = disagreeing;
        SitesSkipped = skipped;
        Section = section;
    }

    /// <summary>Link-time address of <c>pv_ops</c>.</summary>
    public ulong Address { get; }

    /// <summary>Bytes per slot (4 on i386, 8 on x86-64).</summary>
    public int PointerSize { get; }

    /// <summary>Initial value (function address) of slots 0 … highest site type; a slot the file has no bytes
    /// for reads as 0. The table may have more slots than sites use.</summary>
    public ImmutableArray<ulong> Slots { get; }

    /// <summary>Number of slots known: highest site type + 1.</summary>
    public int SlotCount => Slots.Length;

    /// <summary>Sites whose call operand gives <see cref="Address"/>.</summary>
    public int SitesAgreeing { get; }

    /// <summary>Sites whose call operand gives another address (0 in an unmodified image).</summary>
    public int SitesDisagreeing { get; }

    /// <summary>Sites that are not an indirect call through memory (e.g. already patched).</summary>
    public int SitesSkipped { get; }

    /// <summary>The section holding <c>pv_ops</c> (".data" in Linux 6.1).</summary>
    public string Section { get; }

    /// <summary>Address of slot <paramref name="type"/>: <see cref="Address"/> + type × <see cref="PointerSize"/>.</summary>
    public ulong SlotAddress(int type) => Address + (ulong)type * (ulong)PointerSize;

    /// <summary>Finds <c>pv_ops</c> through the paravirt sites' call operands.</summary>
    /// <param name="elf">The vmlinux ELF file.</param>
    /// <param name="sites">The <c>.parainstructions</c> sites.</param>
    /// <returns>The table, or null when no site is an indirect call through memory.</returns>
    public static PvOpsTable? Find(ElfFile elf, IReadOnlyList<KernelParavirtSite> sites)
    {
        ArgumentNullException.ThrowIfNull(elf);
        ArgumentNullException.ThrowIfNull(sites);
        if (sites.Count == 0)
            return null;
        int ptr = elf.PointerSize;
        var votes = new Dictionary<ulong, (int Count, int MaxType)>();
        int skipped = 0;
        foreach (var s in sites)
        {
            if (!elf.TryReadBytes(s.Address, s.Len, out var code))
            {
                skipped++;
                continue;
            }
            DecoderCache.Current.Start(code, s.Address, ptr * 8).Decode(out var insn);
            if (insn.IsInvalid || insn.Length > s.Len || insn.Mnemonic != Mnemonic.Call || insn.Op0Kind != OpKind.Memory)
            {
                skipped++;
                continue;
            }
            ulong operand;
            if (insn.IsIPRelativeMemoryOperand)
                operand = insn.IPRelativeMemoryAddress;
            else if (insn.MemoryBase == Register.None && insn.MemoryIndex == Register.None)
                operand = ptr == 8 ? insn.MemoryDisplacement64 : insn.MemoryDisplacement32;
            else
            {
                skipped++;
                continue;
            }
            ulong baseAddress = elf.AddressPlus(operand, -(long)s.Type * ptr);
            votes.TryGetValue(baseAddress, out var v);
            votes[baseAddress] = (v.Count + 1, Math.Max(v.MaxType, s.Type));
        }
        if (votes.Count == 0)
            return null;
        var best = votes.MaxBy(kv => kv.Value.Count);
        int total = votes.Values.Sum(v => v.Count);
        var slots = new ulong[best.Value.MaxType + 1];
        for (int i = 0; i < slots.Length; i++)
        {
            ulong a = best.Key + (ulong)(i * ptr);
            elf.TryReadPointer(a, out slots[i]);   // 0 when the file has no bytes there
        }
        string section = elf.SectionContaining(best.Key)?.Name ?? "";
        return new PvOpsTable(best.Key, ptr, [.. slots], best.Value.Count, total - best.Value.Count, skipped, section);
    }
}
