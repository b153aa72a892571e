using System.Buffers.Binary;

namespace Altpatch.Tests.Verify;

/// <summary>
/// Writes small ELF core files like /proc/kcore and QEMU's dump-guest-memory -p: ET_CORE, a PT_NOTE, and one PT_LOAD per
/// segment given (virtual address, bytes), the data after the headers in the order given.
/// </summary>
internal static class SyntheticCore
{
    public static byte[] Build(bool is64, IReadOnlyList<(ulong VirtualAddress, byte[] Data)> segments, ushort type = 4)
    {
        int eh = is64 ? 64 : 52, ph = is64 ? 56 : 32;
        int count = segments.Count + 1;
        long dataStart = eh + (long)ph * count;
        var ms = new MemoryStream();
        var header = new byte[eh];
        header[0] = 0x7f; header[1] = (byte)'E'; header[2] = (byte)'L'; header[3] = (byte)'F';
        header[4] = (byte)(is64 ? 2 : 1);
        header[5] = 1;
        header[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(16), type);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(18), (ushort)(is64 ? 62 : 3));
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(20), 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(32), (ulong)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(52), (ushort)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(54), (ushort)ph);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(56), (ushort)count);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(28), (uint)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(40), (ushort)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(42), (ushort)ph);
            BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(44), (ushort)count);
        }
        ms.Write(header);
        long offset = dataStart;
        ms.Write(Phdr(is64, 4, 0, dataStart, 0, 0));   // PT_NOTE, empty
        foreach (var (va, data) in segments)
        {
            ms.Write(Phdr(is64, 1, va, offset, (ulong)data.Length, va & 0x3fff_ffff));
            offset += data.Length;
        }
        foreach (var (_, data) in segments)
            ms.Write(data);
        return ms.ToArray();
    }

    private static byte[] Phdr(bool is64, uint type, ulong va, long offset, ulong size, ulong pa)
    {
        var p = new byte[is64 ? 56 : 32];
        BinaryPrimitives.WriteUInt32LittleEndian(p, type);
        if (is64)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 7);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), (ulong)offset);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(16), va);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(24), pa);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(32), size);
            BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(40), size);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), (uint)offset);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(8), (uint)va);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(12), (uint)pa);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(16), (uint)size);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(20), (uint)size);
            BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(24), 7);
        }
        return p;
    }
}
