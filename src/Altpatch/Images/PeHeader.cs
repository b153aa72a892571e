using System.Buffers.Binary;

namespace Altpatch.Images;

/// <summary>
/// The PE/COFF header an EFI-stub bzImage carries (the "MZ" at 0 and the "PE\0\0" at <c>e_lfanew</c>,
/// <c>arch/x86/boot/header.S</c>): only the two fields that signing changes, the optional header's
/// <c>CheckSum</c> and the certificate table data directory entry (<c>IMAGE_DIRECTORY_ENTRY_SECURITY</c>, index 4).
/// The kernel's build leaves both 0; <c>sbsign</c>/<c>pesign</c> append a certificate table to the file, point the
/// entry at it and set the checksum.
/// </summary>
/// <param name="Offset">File offset of the "PE\0\0" signature.</param>
/// <param name="IsPe32Plus">Optional header magic 0x20b (PE32+, x86-64 kernels) rather than 0x10b (PE32).</param>
/// <param name="ChecksumOffset">File offset of the 4-byte <c>CheckSum</c>.</param>
/// <param name="Checksum">The stored checksum (0 when not set).</param>
/// <param name="CertificateEntryOffset">File offset of the 8-byte certificate table entry, or -1 when the
/// optional header has fewer than 5 data directories.</param>
/// <param name="CertificateTableOffset">The entry's first field: for this directory a file offset, not an RVA.</param>
/// <param name="CertificateTableSize">The entry's second field: the table's size in bytes.</param>
public sealed record PeHeader(
    int Offset, bool IsPe32Plus, int ChecksumOffset, uint Checksum,
    int CertificateEntryOffset, uint CertificateTableOffset, uint CertificateTableSize)
{
    /// <summary>Index of the certificate table in the optional header's data directories.</summary>
    public const int CertificateDirectory = 4;

    /// <summary>Whether the certificate table entry names a table (a signed image).</summary>
    public bool HasCertificateTable => CertificateEntryOffset >= 0 && (CertificateTableOffset != 0 || CertificateTableSize != 0);

    /// <summary>Reads the PE header of a file, or null when it has none (no "MZ", no "PE\0\0" where
    /// <c>e_lfanew</c> points, or an optional header too short to hold a checksum).</summary>
    /// <param name="file">The whole file.</param>
    public static PeHeader? TryRead(ReadOnlySpan<byte> file)
    {
        if (file.Length < 0x40 || file[0] != (byte)'M' || file[1] != (byte)'Z')
            return null;
        uint pe = BinaryPrimitives.ReadUInt32LittleEndian(file[0x3c..]);
        // PE signature (4) + COFF header (20) + the optional header up to CheckSum (68).
        if (pe > (uint)file.Length - 24 || !file.Slice((int)pe, 4).SequenceEqual("PE\0\0"u8))
            return null;
        int coff = (int)pe + 4;
        int optSize = BinaryPrimitives.ReadUInt16LittleEndian(file[(coff + 16)..]);
        int opt = coff + 20;
        if (optSize < 68 || opt + 68 > file.Length)
            return null;
        ushort magic = BinaryPrimitives.ReadUInt16LittleEndian(file[opt..]);
        bool plus = magic == 0x20b;
        if (!plus && magic != 0x10b)
            return null;
        int checksumOffset = opt + 64;
        uint checksum = BinaryPrimitives.ReadUInt32LittleEndian(file[checksumOffset..]);
        // NumberOfRvaAndSizes, then the data directories (8 bytes each).
        int countOffset = opt + (plus ? 108 : 92);
        int entry = countOffset + 4 + CertificateDirectory * 8;
        uint offset = 0, size = 0;
        if (entry + 8 > opt + optSize || entry + 8 > file.Length
            || BinaryPrimitives.ReadUInt32LittleEndian(file[countOffset..]) <= CertificateDirectory)
            entry = -1;
        else
        {
            offset = BinaryPrimitives.ReadUInt32LittleEndian(file[entry..]);
            size = BinaryPrimitives.ReadUInt32LittleEndian(file[(entry + 4)..]);
        }
        return new PeHeader((int)pe, plus, checksumOffset, checksum, entry, offset, size);
    }

    /// <summary>
    /// The PE checksum of a file as <c>sbsign</c>, <c>pesign</c> and Windows' <c>CheckSumMappedFile</c> compute it:
    /// the 16-bit little-endian words of the whole file (the checksum field itself skipped, an odd last byte
    /// zero-extended) added with end-around carry, plus the file's length.
    /// </summary>
    /// <param name="file">The whole file.</param>
    /// <param name="checksumOffset">Where the checksum field is (its 4 bytes count as zero).</param>
    public static uint ComputeChecksum(ReadOnlySpan<byte> file, int checksumOffset)
    {
        // A ones' complement sum of 16-bit words may be taken over 32-bit words in a 64-bit register and folded at
        // the end (2^16 = 1 modulo 2^16 - 1); the checksum field is then taken out by adding its complement.
        ulong sum = 0;
        int n = file.Length & ~3;
        for (int i = 0; i < n; i += 4)
            sum += BinaryPrimitives.ReadUInt32LittleEndian(file[i..]);
        for (int i = n; i < file.Length; i++)
            sum += (ulong)file[i] << (8 * (i & 1));
        if (checksumOffset >= 0 && checksumOffset <= file.Length - 4)
        {
            for (int i = checksumOffset; i < checksumOffset + 4; i++)
                sum += 0xffffUL - ((ulong)file[i] << (8 * (i & 1)));
        }
        while (sum >> 16 != 0)
            sum = (sum & 0xffff) + (sum >> 16);
        return (uint)sum + (uint)file.Length;
    }
}
