using System.Buffers.Binary;

namespace Altpatch.Images;

/// <summary>
/// Whether a bzImage is the file the kernel's build wrote: its CRC-32 (<see cref="KernelCrc32"/>), which
/// <c>arch/x86/boot/tools/build.c</c> computes over everything before the last four bytes and stores there (boot
/// protocol 2.08 and later, Linux 2.6.26+). A flipped bit anywhere in the setup code, the decompressor or the
/// compressed payload changes it, whatever the compression (the LZ4 legacy frame, for one, has no checksum of its own).
/// </summary>
/// <remarks>
/// <para><b>Signed images.</b> A Secure Boot signer (<c>sbsign</c>, <c>pesign</c>) appends a certificate table to the
/// file, points the PE header's certificate table entry at it and sets the PE checksum; the build left both fields 0
/// (<c>header.S</c>). The CRC is computed over the image as built: the bytes before the certificate table, with those
/// two fields read as 0. A signer that padded the image to 8 bytes before the table left zeros after the built
/// image's end (setup + syssize × 16), which are skipped.</para>
/// <para>The payload must lie in the bytes the CRC covers: a payload reaching the CRC (or the certificate table) is
/// refused, so nothing that is read escapes the check.</para>
/// </remarks>
public sealed record BzImageIntegrity
{
    /// <summary>The CRC stored in the image's last four bytes (before a certificate table).</summary>
    public uint StoredCrc { get; init; }

    /// <summary>The CRC computed over the bytes before it.</summary>
    public uint ComputedCrc { get; init; }

    /// <summary>File offset of the stored CRC: the built image's length − 4.</summary>
    public long CrcOffset { get; init; }

    /// <summary>The length of the image as the build wrote it (the file's length, or where a signature starts).</summary>
    public long BuiltLength { get; init; }

    /// <summary>The Secure Boot signature, or null when the image is not signed.</summary>
    public ImageSignature? Signature { get; init; }

    /// <summary>Why the CRC could not be checked as built (a malformed certificate table, a payload outside the
    /// covered bytes), or null.</summary>
    public string? Problem { get; init; }

    /// <summary>Whether the stored and computed CRCs agree.</summary>
    public bool CrcMatches => Problem is null && StoredCrc == ComputedCrc;

    /// <summary>One line for a summary: "CRC32 0x… matches" or what is wrong.</summary>
    public string Status => Problem is { } p ? $"not checked: {p}"
        : CrcMatches ? $"0x{StoredCrc:x8} matches (over 0x{CrcOffset:x} bytes{(Signature is null ? "" : ", the image as built, without its signature")})"
        : $"MISMATCH: stored 0x{StoredCrc:x8} at 0x{CrcOffset:x}, computed 0x{ComputedCrc:x8}";

    /// <summary>The one-line error for an image that fails the check.</summary>
    /// <param name="name">The image's name.</param>
    public string FailureMessage(string name) => Problem is { } p
        ? $"{name}: bzImage integrity cannot be checked: {p}; the file is corrupt (--ignore-crc reads it anyway)"
        : $"{name}: bzImage CRC32 mismatch: the image stores 0x{StoredCrc:x8} (at file offset 0x{CrcOffset:x}), its bytes give 0x{ComputedCrc:x8}; the file is corrupt or was changed after the build (--ignore-crc reads it anyway)";

    /// <summary>Checks a parsed bzImage.</summary>
    /// <param name="bz">The bzImage.</param>
    public static BzImageIntegrity Check(BzImage bz)
    {
        ArgumentNullException.ThrowIfNull(bz);
        var file = bz.File.Span;
        long builtEnd = file.Length;
        ImageSignature? signature = null;
        var pe = PeHeader.TryRead(file);
        if (pe is { HasCertificateTable: true })
        {
            signature = ImageSignature.Read(file, pe, out var problem);
            if (signature is null)
                return new BzImageIntegrity { Problem = $"the image's PE header is signed but {problem}" };
            builtEnd = signature.Offset;
            // A signer aligning the table to 8 bytes pads with zeros past the built image (setup + syssize × 16).
            long pmEnd = bz.Header.SetupSize + (long)bz.Header.SysSize * 16;
            if (bz.Header.SysSize != 0 && pmEnd < builtEnd && pmEnd >= 4 && !file[(int)pmEnd..(int)builtEnd].ContainsAnyExcept((byte)0))
                builtEnd = pmEnd;
        }
        if (builtEnd < 0x208 + 4)
            return new BzImageIntegrity { Signature = signature, Problem = $"the image as built is only {builtEnd} bytes" };
        long crcOffset = builtEnd - 4;
        long payloadEnd = (long)bz.PayloadFileOffset + bz.PayloadLength;
        if (payloadEnd > crcOffset)
        {
            return new BzImageIntegrity
            {
                Signature = signature,
                Problem = $"the payload (0x{bz.PayloadFileOffset:x} + {bz.PayloadLength}) runs into the CRC at 0x{crcOffset:x}{(signature is null ? "" : " before the signature")}",
            };
        }
        uint computed;
        if (signature is null)
            computed = KernelCrc32.Compute(file[..(int)crcOffset]);
        else
        {
            // As built: the checksum and the certificate table entry were 0.
            Span<byte> zeros = stackalloc byte[8];
            zeros.Clear();
            var fields = new List<(int Offset, int Length)> { (pe!.ChecksumOffset, 4), (pe.CertificateEntryOffset, 8) };
            fields.Sort();
            uint crc = KernelCrc32.Initial;
            int at = 0;
            foreach (var (offset, length) in fields)
            {
                if (offset < at || offset + length > crcOffset)
                    continue;
                crc = KernelCrc32.Append(crc, file[at..offset]);
                crc = KernelCrc32.Append(crc, zeros[..length]);
                at = offset + length;
            }
            computed = KernelCrc32.Append(crc, file[at..(int)crcOffset]);
        }
        return new BzImageIntegrity
        {
            StoredCrc = BinaryPrimitives.ReadUInt32LittleEndian(file[(int)crcOffset..]),
            ComputedCrc = computed,
            CrcOffset = crcOffset,
            BuiltLength = builtEnd,
            Signature = signature,
        };
    }
}
