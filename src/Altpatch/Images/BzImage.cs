using System.Buffers.Binary;

namespace Altpatch.Images;

/// <summary>
/// A bzImage file: the real-mode setup (boot sector + setup code, <see cref="SetupHeader"/>), then the
/// protected-mode decompressor whose payload is the compressed kernel <c>vmlinux.bin</c>
/// (<c>vmlinux</c> with <c>objcopy -R .comment -S</c>: an ELF file; relocatable kernels append
/// <c>vmlinux.relocs</c> after it).
/// </summary>
/// <remarks>The payload is found with payload_offset/payload_length (boot protocol ≥ 2.08, Linux
/// 2.6.26+). Older bzImages carried a raw binary rather than an ELF file and have no tables to read;
/// they are rejected with a message saying so.</remarks>
public sealed class BzImage
{
    private BzImage(string name, ReadOnlyMemory<byte> file, SetupHeader header, int payloadFileOffset, int payloadLength,
        PayloadCompression compression, uint decompressedSize)
    {
        Name = name;
        File = file;
        Header = header;
        PayloadFileOffset = payloadFileOffset;
        PayloadLength = payloadLength;
        Compression = compression;
        DecompressedSize = decompressedSize;
    }

    /// <summary>Name for error messages.</summary>
    public string Name { get; }

    /// <summary>The whole bzImage file.</summary>
    public ReadOnlyMemory<byte> File { get; }

    /// <summary>The setup header.</summary>
    public SetupHeader Header { get; }

    /// <summary>Absolute file offset of the payload: setup size + payload_offset.</summary>
    public int PayloadFileOffset { get; }

    /// <summary>payload_length: the compressed stream plus its 4-byte size trailer.</summary>
    public int PayloadLength { get; }

    /// <summary>The payload's compression, from its magic number.</summary>
    public PayloadCompression Compression { get; }

    /// <summary>The decompressed size the payload's last 4 bytes announce.</summary>
    public uint DecompressedSize { get; }

    /// <summary>The payload bytes (a view of <see cref="File"/>).</summary>
    public ReadOnlyMemory<byte> Payload => File.Slice(PayloadFileOffset, PayloadLength);

    /// <summary>Whether the bytes start like a bzImage (0xAA55 at 0x1fe and "HdrS" at 0x202).</summary>
    public static bool IsBzImage(ReadOnlySpan<byte> file) => SetupHeader.IsPresent(file);

    /// <summary>Parses the setup header and locates and identifies the payload (without decompressing it).</summary>
    /// <param name="file">The whole file.</param>
    /// <param name="name">Name for error messages.</param>
    /// <exception cref="ImageFormatException">Not a bzImage, an old boot protocol, a truncated file, or an unknown compression.</exception>
    public static BzImage Parse(ReadOnlyMemory<byte> file, string name)
    {
        var d = file.Span;
        var h = SetupHeader.Parse(d, name);
        if (h.ProtocolVersion < 0x0208)
            throw new ImageFormatException(
                $"{name}: boot protocol {h.ProtocolText} has no payload_offset/payload_length (needs 2.08, Linux 2.6.26+); such bzImages carry no ELF file, open the vmlinux ELF instead");
        long pmStart = h.SetupSize;
        long pmEnd = pmStart + (long)h.SysSize * 16;
        if (d.Length < pmStart)
            throw new ImageFormatException(
                $"{name}: bzImage truncated: the setup code is {pmStart} bytes ({h.SetupSects} + 1 sectors), the file has {d.Length}");
        long start = pmStart + h.PayloadOffset, end = start + h.PayloadLength;
        if (h.PayloadLength == 0)
            throw new ImageFormatException($"{name}: setup header at 0x24c: payload_length is 0");
        if (end > d.Length)
            throw new ImageFormatException(
                $"{name}: bzImage truncated: payload at 0x{start:x} + {h.PayloadLength} bytes (payload_offset 0x{h.PayloadOffset:x} at 0x248) runs past the end of the file (0x{d.Length:x} bytes)");
        if (h.SysSize != 0 && d.Length < pmEnd)
            throw new ImageFormatException(
                $"{name}: bzImage truncated: syssize (0x1f4) says 0x{pmEnd - pmStart:x} bytes of protected-mode code, the file has 0x{d.Length - pmStart:x}");
        var payload = d.Slice((int)start, (int)h.PayloadLength);
        if (!PayloadDecompressor.TryDetect(payload, out var compression))
            throw new ImageFormatException(
                $"{name}: unknown payload compression at file offset 0x{start:x} (magic {Convert.ToHexString(payload[..Math.Min(8, payload.Length)]).ToLowerInvariant()}); known: gzip, bzip2, lzma, xz, lzo, lz4, zstd");
        uint size = payload.Length >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(payload[^4..]) : 0;
        return new BzImage(name, file, h, (int)start, (int)h.PayloadLength, compression, size);
    }

    /// <summary>Decompresses the payload into a new buffer (the <c>vmlinux</c> ELF file, possibly followed by relocations).</summary>
    /// <exception cref="ImageFormatException">The payload is truncated or corrupt, its size does not match its trailer, or the
    /// trailer is above init_size or <see cref="ImageLimits.MaxDecompressedSize"/>.</exception>
    public byte[] Decompress()
    {
        // The kernel decompresses into init_size bytes (header.S: INIT_SIZE >= the output mkpiggy measured): a larger
        // size trailer is no kernel's, and the decoders are not even started for it.
        if (Header.ProtocolVersion >= 0x020a && Header.InitSize != 0 && DecompressedSize > Header.InitSize)
            throw new ImageFormatException(
                $"{Name}: payload size trailer says {DecompressedSize} decompressed bytes, more than init_size (0x260) {Header.InitSize}, the memory the kernel decompresses into; corrupt");
        return PayloadDecompressor.DecompressPayload(Payload, Name).Data;
    }
}
