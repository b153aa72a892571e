using System.Buffers.Binary;
using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>
/// The kernel's patch site tables as its build lays them out (<c>.altinstructions</c> in every
/// <see cref="AltInstrFormat"/>, <c>.parainstructions</c>, <c>.smp_locks</c>, the s32 tables of
/// <c>.retpoline_sites</c>, <c>.return_sites</c> and <c>.ibt_endbr_seal</c>) and the code at the sites (the
/// <c>call *pv_ops[type]</c> of a paravirt site, rel32 branches). Shared by the two synthetic kernels:
/// <see cref="SyntheticKernel"/> (table readers) and <c>KernelPatch.BootImageBuilder</c> (boot-time passes).
/// </summary>
internal static class SyntheticTables
{
    /// <summary>
    /// One <c>alt_instr</c>: <paramref name="Flags"/> is relative-14's ft_flags, <paramref name="PadLen"/> relative-13's
    /// padlen; <paramref name="Not"/> is encoded only by the relative formats (bit 15 of the cpuid).
    /// </summary>
    public readonly record struct Alt(ulong Instr, ulong Repl, ushort Cpuid, bool Not, byte InstrLen, byte ReplLen, ushort Flags = 0, byte PadLen = 0);

    /// <summary>One <c>paravirt_patch_site</c>.</summary>
    public readonly record struct Para(ulong Instr, byte Type, byte Len, ushort Clobbers);

    /// <summary>A pointer of <paramref name="pointerSize"/> bytes, little-endian.</summary>
    public static void WritePointer(Span<byte> d, int pointerSize, ulong value)
    {
        if (pointerSize == 8) BinaryPrimitives.WriteUInt64LittleEndian(d, value);
        else BinaryPrimitives.WriteUInt32LittleEndian(d, (uint)value);
    }

    /// <summary>The s32 that leads from <paramref name="from"/> to <paramref name="to"/>.</summary>
    public static int Rel(ulong from, ulong to) => unchecked((int)(uint)(to - from));

    /// <summary>
    /// A rel32 branch at <paramref name="at"/> to <paramref name="target"/>: <c>call</c>/<c>jmp</c> (e8/e9, 5 bytes) or,
    /// with <paramref name="length"/> 6, the two-byte <c>0f 8x</c> jcc.
    /// </summary>
    public static byte[] Branch(byte opcode, ulong at, ulong target, int length = 5)
    {
        var b = new byte[length];
        int op = length - 4;
        if (length == 6)
        {
            b[0] = 0x0f;
            b[1] = opcode;
        }
        else
            b[0] = opcode;
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(op), (int)(long)(target - (at + (ulong)length)));
        return b;
    }

    /// <summary>
    /// A paravirt site's <c>call *pv_ops+type*ptr</c> (ff 15): RIP-relative on x86-64, absolute on i386; a site shorter
    /// than the 6-byte call keeps only its opcode bytes.
    /// </summary>
    public static byte[] ParavirtCall(bool is64, ulong pvOps, ulong at, byte type, int length = 6)
    {
        var call = new byte[length];
        call[0] = 0xff;
        call[1] = 0x15;
        ulong slot = pvOps + (ulong)type * (ulong)(is64 ? 8 : 4);
        uint operand = is64 ? (uint)(int)(long)(slot - (at + 6)) : (uint)slot;
        if (length >= 6)
            BinaryPrimitives.WriteUInt32LittleEndian(call.AsSpan(2), operand);
        return call;
    }

    /// <summary><c>.altinstructions</c> at <paramref name="table"/> in <paramref name="format"/>.</summary>
    public static byte[] AltEntries(AltInstrFormat format, int pointerSize, ulong table, IReadOnlyList<Alt> alts)
    {
        int es = format.EntrySize(pointerSize);
        var t = new byte[alts.Count * es];
        for (int i = 0; i < alts.Count; i++)
        {
            var a = alts[i];
            var e = t.AsSpan(i * es, es);
            ulong ea = table + (ulong)(i * es);
            switch (format)
            {
                case AltInstrFormat.Relative12:
                case AltInstrFormat.Relative13:
                    BinaryPrimitives.WriteInt32LittleEndian(e, Rel(ea, a.Instr));
                    BinaryPrimitives.WriteInt32LittleEndian(e[4..], Rel(ea + 4, a.Repl));
                    BinaryPrimitives.WriteUInt16LittleEndian(e[8..], (ushort)(a.Cpuid | (a.Not ? 0x8000 : 0)));
                    e[10] = a.InstrLen;
                    e[11] = a.ReplLen;
                    if (format == AltInstrFormat.Relative13) e[12] = a.PadLen;
                    break;
                case AltInstrFormat.Relative14:
                    BinaryPrimitives.WriteInt32LittleEndian(e, Rel(ea, a.Instr));
                    BinaryPrimitives.WriteInt32LittleEndian(e[4..], Rel(ea + 4, a.Repl));
                    BinaryPrimitives.WriteUInt32LittleEndian(e[8..], a.Cpuid | ((uint)a.Flags << 16));
                    e[12] = a.InstrLen;
                    e[13] = a.ReplLen;
                    break;
                default:
                    WritePointer(e, pointerSize, a.Instr);
                    WritePointer(e[pointerSize..], pointerSize, a.Repl);
                    int o = 2 * pointerSize;
                    if (format == AltInstrFormat.AbsoluteByteCpuid)
                    {
                        e[o] = (byte)a.Cpuid;
                        e[o + 1] = a.InstrLen;
                        e[o + 2] = a.ReplLen;
                    }
                    else
                    {
                        BinaryPrimitives.WriteUInt16LittleEndian(e[o..], a.Cpuid);
                        e[o + 2] = a.InstrLen;
                        e[o + 3] = a.ReplLen;
                    }
                    break;
            }
        }
        return t;
    }

    /// <summary><c>.parainstructions</c>: instr pointer, type, len, clobbers.</summary>
    public static byte[] ParaEntries(int pointerSize, IReadOnlyList<Para> paras)
    {
        int es = 2 * pointerSize;
        var t = new byte[paras.Count * es];
        for (int i = 0; i < paras.Count; i++)
        {
            var e = t.AsSpan(i * es, es);
            WritePointer(e, pointerSize, paras[i].Instr);
            e[pointerSize] = paras[i].Type;
            e[pointerSize + 1] = paras[i].Len;
            BinaryPrimitives.WriteUInt16LittleEndian(e[(pointerSize + 2)..], paras[i].Clobbers);
        }
        return t;
    }

    /// <summary>
    /// <c>.smp_locks</c> at <paramref name="table"/>: s32 offsets, or the 2.6 era's absolute pointers; followed by
    /// <paramref name="padding"/> zero entries (the section's alignment padding).
    /// </summary>
    public static byte[] LockEntries(bool absolute, int pointerSize, ulong table, IReadOnlyList<ulong> locks, int padding)
    {
        int es = absolute ? pointerSize : 4;
        var t = new byte[(locks.Count + padding) * es];
        for (int i = 0; i < locks.Count; i++)
        {
            if (absolute) WritePointer(t.AsSpan(i * es), pointerSize, locks[i]);
            else BinaryPrimitives.WriteInt32LittleEndian(t.AsSpan(i * 4), Rel(table + (ulong)(i * 4), locks[i]));
        }
        return t;
    }

    /// <summary>A table of s32 offsets at <paramref name="table"/> to <paramref name="targets"/>.</summary>
    public static byte[] RelativeEntries(ulong table, IReadOnlyList<ulong> targets)
    {
        var t = new byte[targets.Count * 4];
        for (int i = 0; i < targets.Count; i++)
            BinaryPrimitives.WriteInt32LittleEndian(t.AsSpan(i * 4), Rel(table + (ulong)(i * 4), targets[i]));
        return t;
    }
}
