using System.Buffers.Binary;
using System.Text;

namespace Altpatch.Images;

/// <summary>
/// The x86 boot protocol's real-mode setup header of a bzImage (offset 0x1f1 of the file), the
/// fields Altpatch uses. Layout and protocol versions: <c>Documentation/x86/boot.rst</c> and
/// <c>arch/x86/boot/header.S</c>.
/// </summary>
/// <param name="SetupSects">setup_sects (0x1f1) as the kernel means it: a stored 0 reads as 4.</param>
/// <param name="SysSize">syssize (0x1f4, protocol ≥ 2.04): size of the protected-mode part in 16-byte paragraphs.</param>
/// <param name="ProtocolVersion">version (0x206): major in the high byte, minor in the low byte (0x020f = 2.15).</param>
/// <param name="KernelVersionPointer">kernel_version (0x20e): offset of the version string minus 0x200; 0 when absent.</param>
/// <param name="KernelVersion">The NUL-terminated string that pointer names (e.g. <c>6.1.0-50-cloud-amd64 (debian-kernel@…) #1 SMP …</c>), or null.</param>
/// <param name="LoadFlags">loadflags (0x211); bit 0 LOADED_HIGH means a bzImage.</param>
/// <param name="Code32Start">code32_start (0x214).</param>
/// <param name="KernelAlignment">kernel_alignment (0x230, protocol ≥ 2.05).</param>
/// <param name="RelocatableKernel">relocatable_kernel (0x234, protocol ≥ 2.05).</param>
/// <param name="XLoadFlags">xloadflags (0x236, protocol ≥ 2.12).</param>
/// <param name="PayloadOffset">payload_offset (0x248, protocol ≥ 2.08): payload start, from the start of the protected-mode code.</param>
/// <param name="PayloadLength">payload_length (0x24c, protocol ≥ 2.08).</param>
/// <param name="PrefAddress">pref_address (0x258, protocol ≥ 2.10).</param>
/// <param name="InitSize">init_size (0x260, protocol ≥ 2.10): memory the kernel needs while decompressing and initialising.</param>
public sealed record SetupHeader(
    int SetupSects, uint SysSize, ushort ProtocolVersion, ushort KernelVersionPointer, string? KernelVersion,
    byte LoadFlags, uint Code32Start, uint KernelAlignment, byte RelocatableKernel, ushort XLoadFlags,
    uint PayloadOffset, uint PayloadLength, ulong PrefAddress, uint InitSize)
{
    /// <summary>File offset of the first setup header field (setup_sects).</summary>
    public const int Offset = 0x1f1;

    /// <summary>The "HdrS" signature at 0x202, as a little-endian u32.</summary>
    public const uint Signature = 0x53726448;

    /// <summary>Size of the real-mode part (boot sector + setup) in bytes: (setup_sects + 1) × 512. The
    /// protected-mode code, and <see cref="PayloadOffset"/>'s origin, start here.</summary>
    public int SetupSize => (SetupSects + 1) * 512;

    /// <summary>The protocol as text, e.g. "2.15".</summary>
    public string ProtocolText => $"{ProtocolVersion >> 8}.{ProtocolVersion & 0xff:D2}";

    /// <summary>Whether the file has the bzImage setup signature (0xAA55 boot flag at 0x1fe and "HdrS" at 0x202).</summary>
    public static bool IsPresent(ReadOnlySpan<byte> file) =>
        file.Length >= 0x208
        && BinaryPrimitives.ReadUInt16LittleEndian(file[0x1fe..]) == 0xAA55
        && BinaryPrimitives.ReadUInt32LittleEndian(file[0x202..]) == Signature;

    /// <summary>Parses the setup header of a bzImage file.</summary>
    /// <param name="file">The whole file.</param>
    /// <param name="name">Name for error messages.</param>
    /// <exception cref="ImageFormatException">No setup signature, or the file ends inside the header.</exception>
    public static SetupHeader Parse(ReadOnlySpan<byte> file, string name)
    {
        if (file.Length == 0)
            throw new ImageFormatException($"{name}: empty file");
        if (!IsPresent(file))
            throw new ImageFormatException(file.Length < 0x208
                ? $"{name}: file too short for a bzImage setup header ({file.Length} bytes, the header starts at 0x1f1)"
                : $"{name}: not a bzImage: no 0xAA55 boot flag at 0x1fe and 'HdrS' signature at 0x202");
        ushort version = U16(file, 0x206);
        // The end of the last field read for this protocol: init_size (2.10+), payload_length (2.08+),
        // relocatable_kernel (2.05+), else the 0x230 every bzImage header reaches.
        int need = version >= 0x020a ? 0x264 : version >= 0x0208 ? 0x250 : version >= 0x0205 ? 0x235 : 0x230;
        if (file.Length < need)
            throw new ImageFormatException(
                $"{name}: bzImage truncated inside the setup header ({file.Length} bytes; boot protocol {version >> 8}.{version & 0xff:D2} needs 0x{need:x})");
        int sects = file[0x1f1] == 0 ? 4 : file[0x1f1];
        uint syssize = version >= 0x0204 ? U32(file, 0x1f4) : U16(file, 0x1f4);
        ushort kvPtr = U16(file, 0x20e);
        string? kv = null;
        if (kvPtr != 0 && kvPtr + 0x200 < file.Length)
        {
            var s = file[(kvPtr + 0x200)..];
            int z = s.IndexOf((byte)0);
            if (z > 0 && z < 512)
                kv = Encoding.ASCII.GetString(s[..z]);
        }
        return new SetupHeader(
            sects, syssize, version, kvPtr, kv, file[0x211], U32(file, 0x214),
            version >= 0x0205 ? U32(file, 0x230) : 0, version >= 0x0205 ? file[0x234] : (byte)0,
            version >= 0x020c ? U16(file, 0x236) : (ushort)0,
            version >= 0x0208 ? U32(file, 0x248) : 0, version >= 0x0208 ? U32(file, 0x24c) : 0,
            version >= 0x020a ? U64(file, 0x258) : 0, version >= 0x020a ? U32(file, 0x260) : 0);
    }

    private static ushort U16(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt16LittleEndian(d[o..]);
    private static uint U32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt32LittleEndian(d[o..]);
    private static ulong U64(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt64LittleEndian(d[o..]);
}
