using System.Buffers.Binary;
using System.Text;

namespace Altpatch.Tests.Images;

/// <summary>Wraps a payload in a bzImage-shaped file: a 4-sector setup with a boot protocol header, a
/// little stand-in decompressor, then the payload at payload_offset, and the build's CRC-32 in the last 4 bytes
/// (<c>arch/x86/boot/tools/build.c</c>).</summary>
internal static class SyntheticBzImage
{
    public const int SetupSects = 3;
    public const int SetupSize = (SetupSects + 1) * 512;
    public const int PayloadOffset = 0x180;
    public const string Version = "6.1.0-synthetic (test@altpatch) #1 SMP PREEMPT_DYNAMIC";

    /// <summary>The kernel's size_append: the payload stream followed by the decompressed size (LE u32).</summary>
    public static byte[] WithSize(byte[] compressed, int decompressedSize)
    {
        var p = new byte[compressed.Length + 4];
        compressed.CopyTo(p, 0);
        BinaryPrimitives.WriteInt32LittleEndian(p.AsSpan(compressed.Length), decompressedSize);
        return p;
    }

    public static byte[] Build(byte[] payload, ushort protocol = 0x020f, bool crc = true, uint? initSize = null)
    {
        int pmLength = (PayloadOffset + payload.Length + 4 + 15) / 16 * 16;
        var f = new byte[SetupSize + pmLength];
        var d = f.AsSpan();
        d[0x1f1] = SetupSects;
        BinaryPrimitives.WriteUInt32LittleEndian(d[0x1f4..], (uint)(pmLength / 16));
        BinaryPrimitives.WriteUInt16LittleEndian(d[0x1fe..], 0xAA55);
        d[0x200] = 0xeb;
        d[0x201] = 0x6a;
        "HdrS"u8.CopyTo(d[0x202..]);
        BinaryPrimitives.WriteUInt16LittleEndian(d[0x206..], protocol);
        BinaryPrimitives.WriteUInt16LittleEndian(d[0x20e..], 0x300 - 0x200);
        d[0x211] = 1;
        BinaryPrimitives.WriteUInt32LittleEndian(d[0x214..], 0x100000);
        BinaryPrimitives.WriteUInt32LittleEndian(d[0x248..], PayloadOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(d[0x24c..], (uint)payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(d[0x260..], initSize ?? DefaultInitSize(payload));
        Encoding.ASCII.GetBytes(Version).CopyTo(d[0x300..]);
        d.Slice(SetupSize, PayloadOffset).Fill(0xcc);
        payload.CopyTo(d[(SetupSize + PayloadOffset)..]);
        if (crc)
            WriteCrc(f);
        return f;
    }

    /// <summary>As the kernel's header.S makes it: room for the decompressed size the trailer says, and some (capped at 4 GiB).</summary>
    private static uint DefaultInitSize(byte[] payload) =>
        payload.Length < 4 ? 0x10000 : (uint)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(payload.AsSpan(payload.Length - 4)) + 0x10000L, uint.MaxValue);

    /// <summary>Stores the kernel's CRC-32 of everything before the last 4 bytes in them, as build.c does.</summary>
    public static byte[] WriteCrc(byte[] f)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(f.Length - 4), Altpatch.Images.KernelCrc32.AppendBytewise(0xffffffff, f.AsSpan(0, f.Length - 4)));
        return f;
    }
}
