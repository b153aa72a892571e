using System.IO.Hashing;

namespace Altpatch.Images;

/// <summary>
/// The CRC-32 the x86 kernel build writes into the last four bytes of a bzImage
/// (<c>arch/x86/boot/tools/build.c</c>: <c>partial_crc32</c> over the setup sectors and the protected-mode
/// image, starting from 0xffffffff, <b>without</b> the final inversion of the usual CRC-32).
/// </summary>
/// <remarks>
/// <para>The table in <c>build.c</c> (<c>crctab32</c>) is the reflected IEEE 802.3 polynomial 0xEDB88320, the
/// same as zlib's and <see cref="Crc32"/>'s; they invert the register at the end and the kernel does not, so the
/// kernel's value is the bitwise complement of the usual CRC-32. <see cref="Append"/> keeps the register as
/// <c>partial_crc32</c> does, so ranges can be chained.</para>
/// <para>The computation runs through <see cref="Crc32"/> (System.IO.Hashing, vectorised with carry-less
/// multiplication where the CPU has it); <see cref="AppendBytewise"/> is <c>build.c</c>'s own byte-at-a-time loop,
/// kept as the reference the tests and the benchmark compare with.</para>
/// </remarks>
public static class KernelCrc32
{
    /// <summary>The register's starting value in <c>build.c</c>.</summary>
    public const uint Initial = 0xffffffff;

    private static readonly uint[] Table = BuildTable();

    /// <summary><c>build.c</c>'s <c>crctab32</c>: entry n is the CRC of the byte n, reflected polynomial 0xEDB88320.</summary>
    public static ReadOnlySpan<uint> TableEntries => Table;

    /// <summary>The kernel's CRC of <paramref name="data"/> (what <c>build.c</c> writes after it).</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => Append(Initial, data);

    /// <summary>Continues a CRC over more bytes, like <c>partial_crc32(data, len, crc)</c>.</summary>
    /// <param name="crc">The register so far (<see cref="Initial"/> to start).</param>
    /// <param name="data">The next bytes.</param>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
            return crc;
        // Crc32's register is the kernel's; it only inverts it when asked for the hash.
        var h = new Crc32();
        if (crc != Initial)
        {
            // Crc32 takes no starting value: feed it 4 bytes that bring its register from 0xffffffff to crc.
            Span<byte> prefix = stackalloc byte[4];
            SeedPrefix(crc, prefix);
            h.Append(prefix);
        }
        h.Append(data);
        return ~h.GetCurrentHashAsUInt32();
    }

    /// <summary><c>build.c</c>'s <c>partial_crc32</c> exactly: one table lookup per byte. The reference for
    /// <see cref="Append"/>; about 35 times slower (docs/benchmarks.md).</summary>
    /// <param name="crc">The register so far.</param>
    /// <param name="data">The next bytes.</param>
    public static uint AppendBytewise(uint crc, ReadOnlySpan<byte> data)
    {
        var t = Table;
        foreach (byte c in data)
            crc = t[(int)((crc ^ c) & 0xff)] ^ (crc >> 8);
        return crc;
    }

    private static uint[] BuildTable()
    {
        var t = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++)
                c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
            t[n] = c;
        }
        return t;
    }

    /// <summary>
    /// Four bytes that take the register from <see cref="Initial"/> to <paramref name="target"/>. The CRC of a
    /// 4-byte message is an invertible function of it (the register after four steps is the message XOR the start,
    /// multiplied through the table): run the table backwards from the target.
    /// </summary>
    private static void SeedPrefix(uint target, Span<byte> prefix)
    {
        // One step is reg' = T[i] ^ (reg >> 8) with i = (reg ^ byte) & 0xff; the top byte of reg' is the top byte
        // of T[i], and those 256 top bytes are distinct, so each step's index is read off the top byte of the register
        // after it. Going back from the target, the register's top byte stays known for four steps (the unknown
        // bits enter from the bottom, 8 per step): that gives the four indices. Going forward from 0xffffffff, each
        // byte is then its index XOR the register's low byte.
        uint reg = target;
        Span<int> idx = stackalloc int[4];
        for (int step = 3; step >= 0; step--)
        {
            int i = TopByteIndex[(int)(reg >> 24)];
            idx[step] = i;
            reg = (reg ^ Table[i]) << 8;
        }
        uint crc = Initial;
        for (int step = 0; step < 4; step++)
        {
            prefix[step] = (byte)(idx[step] ^ (int)(crc & 0xff));
            crc = Table[idx[step]] ^ (crc >> 8);
        }
    }

    private static readonly int[] TopByteIndex = BuildTopByteIndex();

    private static int[] BuildTopByteIndex()
    {
        var r = new int[256];
        for (int i = 0; i < 256; i++)
            r[(int)(Table[i] >> 24)] = i;
        return r;
    }
}
