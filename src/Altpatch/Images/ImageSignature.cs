using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Formats.Asn1;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Altpatch.Images;

/// <summary>One <c>WIN_CERTIFICATE</c> of a PE certificate table: what a Secure Boot signer appended.</summary>
/// <param name="Offset">File offset of the entry.</param>
/// <param name="Length"><c>dwLength</c>: the entry's size, header included.</param>
/// <param name="Revision"><c>wRevision</c> (0x0200 = WIN_CERT_REVISION_2_0).</param>
/// <param name="Type"><c>wCertificateType</c> (2 = WIN_CERT_TYPE_PKCS_SIGNED_DATA, Authenticode).</param>
/// <param name="DigestAlgorithm">The signer's digest ("sha256", …) for a readable PKCS#7 signature, else null.</param>
/// <param name="Signer">The signing certificate's subject (e.g. <c>CN=Debian Secure Boot Signer 2022 - linux</c>), else null.</param>
/// <param name="Issuer">The signing certificate's issuer, else null.</param>
/// <param name="Problem">Why the PKCS#7 content could not be read, or null.</param>
public sealed record WinCertificate(
    long Offset, uint Length, ushort Revision, ushort Type, string? DigestAlgorithm, string? Signer, string? Issuer, string? Problem)
{
    /// <summary>WIN_CERT_TYPE_PKCS_SIGNED_DATA.</summary>
    public const ushort TypePkcsSignedData = 2;

    /// <summary>One line: "Authenticode PKCS#7 (sha256), signer CN=…, issued by CN=…".</summary>
    public string Description => Type == TypePkcsSignedData
        ? $"Authenticode PKCS#7{(DigestAlgorithm is { } d ? $" ({d})" : "")}" +
          (Signer is { } s ? $", signer {s}{(Issuer is { } i ? $", issued by {i}" : "")}" : Problem is { } p ? $" (not readable: {p})" : "")
        : $"certificate type {Type} (revision 0x{Revision:x4}), {Length} bytes";
}

/// <summary>
/// A Secure Boot signature of a bzImage: the PE certificate table that <c>sbsign</c> or <c>pesign</c> appended
/// after the image the kernel's build wrote, and the PE checksum they set. Only read and described: whether the
/// signature is valid for a key is for the firmware (or <c>sbverify</c>) to say; Altpatch checks the build's
/// CRC-32 of the image under it (<see cref="BzImageIntegrity"/>).
/// </summary>
public sealed record ImageSignature(
    long Offset, long Size, ImmutableArray<WinCertificate> Certificates, uint PeChecksum, uint ComputedPeChecksum)
{
    /// <summary>Whether the stored PE checksum equals the one computed over the whole signed file.</summary>
    public bool PeChecksumMatches => PeChecksum == ComputedPeChecksum;

    /// <summary>One line: the table's place and size, each certificate's description, the checksum's state.</summary>
    public string Description =>
        $"{string.Join("; ", Certificates.Select(c => c.Description))} (certificate table at 0x{Offset:x}, {Size} bytes; " +
        $"PE checksum 0x{PeChecksum:x} {(PeChecksumMatches ? "matches" : $"does not match the file's 0x{ComputedPeChecksum:x}")})";

    /// <summary>Reads the certificate table a PE header points at.</summary>
    /// <param name="file">The whole file.</param>
    /// <param name="pe">Its PE header, with a certificate table entry.</param>
    /// <param name="problem">Why the table is malformed (outside the file, entries that do not fit), or null.</param>
    /// <returns>The signature, or null when the table is malformed.</returns>
    public static ImageSignature? Read(ReadOnlySpan<byte> file, PeHeader pe, out string? problem)
    {
        ArgumentNullException.ThrowIfNull(pe);
        problem = null;
        long start = pe.CertificateTableOffset, size = pe.CertificateTableSize;
        if (size < 8 || start < 0x40 || start + size > file.Length)
        {
            problem = $"its certificate table entry (0x{pe.CertificateEntryOffset:x}) names 0x{start:x} + {size} bytes, which is not inside the file (0x{file.Length:x} bytes)";
            return null;
        }
        var certs = ImmutableArray.CreateBuilder<WinCertificate>();
        long p = start, end = start + size;
        while (p < end)
        {
            if (end - p < 8)
            {
                problem = $"its certificate table at 0x{start:x} ends inside the entry header at 0x{p:x}";
                return null;
            }
            var e = file[(int)p..];
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(e);
            if (length < 8 || length > end - p)
            {
                problem = $"its certificate table entry at 0x{p:x} has dwLength {length}, which does not fit the table (0x{start:x} + {size})";
                return null;
            }
            ushort revision = BinaryPrimitives.ReadUInt16LittleEndian(e[4..]), type = BinaryPrimitives.ReadUInt16LittleEndian(e[6..]);
            var content = e.Slice(8, (int)length - 8);
            string? digest = null, signer = null, issuer = null, why = null;
            if (type == WinCertificate.TypePkcsSignedData)
                why = ReadSignedData(content, out digest, out signer, out issuer);
            certs.Add(new WinCertificate(p, length, revision, type, digest, signer, issuer, why));
            p += (length + 7) & ~7L;   // entries are 8-byte aligned
        }
        return new ImageSignature(start, size, certs.ToImmutable(), pe.Checksum, PeHeader.ComputeChecksum(file, pe.ChecksumOffset));
    }

    /// <summary>The signer of a PKCS#7 SignedData (RFC 2315 / 5652): the certificate its first SignerInfo names by
    /// issuer and serial number. Returns why it could not be read, or null.</summary>
    private static string? ReadSignedData(ReadOnlySpan<byte> der, out string? digest, out string? signer, out string? issuer)
    {
        digest = signer = issuer = null;
        try
        {
            var contentInfo = new AsnReader(der.ToArray(), AsnEncodingRules.BER).ReadSequence();
            if (contentInfo.ReadObjectIdentifier() != "1.2.840.113549.1.7.2")
                return "not PKCS#7 signed data";
            var signedData = contentInfo.ReadSequence(new Asn1Tag(TagClass.ContextSpecific, 0)).ReadSequence();
            signedData.ReadInteger();                         // version
            signedData.ReadSetOf();                           // digestAlgorithms
            signedData.ReadSequence();                        // contentInfo (SpcIndirectDataContent)
            var certificates = new List<ReadOnlyMemory<byte>>();
            if (signedData.HasData && signedData.PeekTag().HasSameClassAndValue(new Asn1Tag(TagClass.ContextSpecific, 0)))
            {
                var set = signedData.ReadSetOf(skipSortOrderValidation: true, new Asn1Tag(TagClass.ContextSpecific, 0));
                while (set.HasData)
                    certificates.Add(set.ReadEncodedValue());
            }
            if (signedData.HasData && signedData.PeekTag().HasSameClassAndValue(new Asn1Tag(TagClass.ContextSpecific, 1)))
                signedData.ReadEncodedValue();                // crls
            var signerInfos = signedData.ReadSetOf(skipSortOrderValidation: true);
            if (!signerInfos.HasData)
                return "no signer";
            var si = signerInfos.ReadSequence();
            si.ReadInteger();                                 // version
            var sid = si.ReadSequence();                      // issuerAndSerialNumber
            var sidIssuer = sid.ReadEncodedValue();
            var sidSerial = sid.ReadIntegerBytes();
            digest = DigestName(si.ReadSequence().ReadObjectIdentifier());
            foreach (var cert in certificates)
            {
                var tbs = new AsnReader(cert, AsnEncodingRules.BER).ReadSequence().ReadSequence();
                if (tbs.PeekTag().HasSameClassAndValue(new Asn1Tag(TagClass.ContextSpecific, 0)))
                    tbs.ReadEncodedValue();                   // [0] version
                var serial = tbs.ReadIntegerBytes();
                tbs.ReadSequence();                           // signature algorithm
                var certIssuer = tbs.ReadEncodedValue();
                tbs.ReadSequence();                           // validity
                var subject = tbs.ReadEncodedValue();
                if (serial.Span.SequenceEqual(sidSerial.Span) && certIssuer.Span.SequenceEqual(sidIssuer.Span))
                {
                    signer = new X500DistinguishedName(subject.Span).Name;
                    issuer = new X500DistinguishedName(certIssuer.Span).Name;
                    return null;
                }
            }
            issuer = new X500DistinguishedName(sidIssuer.Span).Name;
            return "the signer's certificate is not included";
        }
        catch (Exception e) when (e is AsnContentException or CryptographicException or ArgumentException or InvalidOperationException)
        {
            return e.Message.ReplaceLineEndings(" ");
        }
    }

    private static string DigestName(string oid) => oid switch
    {
        "2.16.840.1.101.3.4.2.1" => "sha256",
        "2.16.840.1.101.3.4.2.2" => "sha384",
        "2.16.840.1.101.3.4.2.3" => "sha512",
        "1.3.14.3.2.26" => "sha1",
        _ => oid,
    };
}
