using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Altpatch.Images;

/// <summary>
/// An ELF core file of a machine's memory read in place (never loaded whole): <c>/proc/kcore</c>, or what QEMU's
/// <c>dump-guest-memory -p</c> writes. Its <c>PT_LOAD</c> segments carry kernel virtual addresses
/// (<c>p_vaddr</c>) for the bytes at <c>p_offset</c>; <see cref="TryRead"/> reads a virtual range through them.
/// </summary>
/// <remarks>The file is opened for reading with positioned reads only (<c>pread</c>), so a sparse or endless file such
/// as <c>/proc/kcore</c> works: only the headers and the ranges asked for are read.</remarks>
public sealed class ElfCore : IDisposable
{
    /// <summary>ET_CORE.</summary>
    public const ushort TypeCore = 4;

    private readonly ISource source;
    private readonly ElfSegment[] loadSegments;   // PT_LOADs with file bytes, by virtual address

    private ElfCore(string name, ISource file, bool is64, ushort machine, ElfSegment[] loads, long length)
    {
        Name = name;
        source = file;
        Is64 = is64;
        Machine = machine;
        loadSegments = loads;
        Length = length;
    }

    /// <summary>The file named in messages.</summary>
    public string Name { get; }

    /// <summary>ELFCLASS64 (true) or ELFCLASS32.</summary>
    public bool Is64 { get; }

    /// <summary>e_machine.</summary>
    public ushort Machine { get; }

    /// <summary>The file's length as the file system reports it (<c>/proc/kcore</c>: the size of the address space it covers).</summary>
    public long Length { get; }

    /// <summary>The <c>PT_LOAD</c> segments with file bytes, by virtual address.</summary>
    public IReadOnlyList<ElfSegment> Loads => loadSegments;

    /// <summary>Opens a core file and reads its headers.</summary>
    /// <param name="path">The file (e.g. <c>/proc/kcore</c>).</param>
    /// <exception cref="ImageFormatException">Not a little-endian ELF core file, or its program headers are malformed.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    /// <exception cref="UnauthorizedAccessException">Not allowed to read it (<c>/proc/kcore</c> needs root).</exception>
    public static ElfCore Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var file = new FileSource(File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
        try
        {
            return Read(file, path);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>A core file already in memory (a test's, a fuzzer's).</summary>
    /// <param name="bytes">The file's bytes (not copied).</param>
    /// <param name="name">Name for messages.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open"/>.</exception>
    public static ElfCore FromBytes(ReadOnlyMemory<byte> bytes, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return Read(new MemorySource(bytes), name);
    }

    private static ElfCore Read(ISource file, string name)
    {
        long length = file.Length;
        Span<byte> eh = stackalloc byte[64];
        int got = file.Read(eh, 0);
        if (got < 52 || !ElfFile.HasElfMagic(eh))
            throw new ImageFormatException($"{name}: not an ELF core file (no 7f 45 4c 46 magic{(got < 52 ? $", {got} bytes" : "")})");
        bool is64 = eh[4] switch
        {
            1 => false,
            2 => true,
            _ => throw new ImageFormatException($"{name}: ELF header: unknown class {eh[4]} (want 1 = ELF32 or 2 = ELF64)"),
        };
        if (eh[5] != 1)
            throw new ImageFormatException($"{name}: ELF header: not little-endian (data encoding {eh[5]})");
        if (is64 && got < 64)
            throw new ImageFormatException($"{name}: ELF64 header truncated ({got} bytes)");
        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(eh[16..]);
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(eh[18..]);
        if (type != TypeCore)
            throw new ImageFormatException($"{name}: an ELF file of type {type}, not a core file (ET_CORE = 4): give a memory dump such as /proc/kcore or QEMU's dump-guest-memory output");
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(eh[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(eh[28..]);
        int o = is64 ? 54 : 42;
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(eh[o..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(eh[(o + 2)..]);
        int want = is64 ? 56 : 32;
        if (phnum == 0)
            throw new ImageFormatException($"{name}: no program headers: a core file describes memory with PT_LOAD segments");
        if (phentsize < want)
            throw new ImageFormatException($"{name}: ELF header: e_phentsize {phentsize} is smaller than {want}");
        long table = (long)phnum * phentsize;     // up to 65535 x 65535: checked before anything is allocated
        if (phoff > long.MaxValue || table > int.MaxValue || (length > 0 && (long)phoff > length - table))
            throw new ImageFormatException($"{name}: program header table at offset 0x{phoff:x} ({phnum} x {phentsize} bytes) runs past the end of the file");
        var ph = new byte[table];
        if (file.Read(ph, (long)phoff) != ph.Length)
            throw new ImageFormatException($"{name}: program header table at offset 0x{phoff:x} ({phnum} x {phentsize} bytes) runs past the end of the file");
        var loads = new List<ElfSegment>();
        for (int i = 0; i < phnum; i++)
        {
            var p = ph.AsSpan(i * phentsize, phentsize);
            var seg = is64
                ? new ElfSegment(i, U32(p, 0), U32(p, 4), U64(p, 8), U64(p, 16), U64(p, 24), U64(p, 32), U64(p, 40), U64(p, 48))
                : new ElfSegment(i, U32(p, 0), U32(p, 24), U32(p, 4), U32(p, 8), U32(p, 12), U32(p, 16), U32(p, 20), U32(p, 28));
            if (!seg.IsLoad || seg.FileSize == 0)
                continue;
            if (seg.FileOffset > long.MaxValue || seg.FileSize > long.MaxValue - seg.FileOffset)
                throw new ImageFormatException($"{name}: program header [{i}]: offset 0x{seg.FileOffset:x} + size 0x{seg.FileSize:x} overflows");
            // /proc/kcore reports a length that covers every segment; a file (QEMU's) must hold them.
            if (length > 0 && (long)(seg.FileOffset + seg.FileSize) > length)
                throw new ImageFormatException(
                    $"{name}: program header [{i}] (vaddr 0x{seg.VirtualAddress:x}, offset 0x{seg.FileOffset:x}, size 0x{seg.FileSize:x}) runs past the end of the file (0x{length:x} bytes); truncated?");
            if (seg.VirtualAddress + seg.FileSize < seg.VirtualAddress && seg.VirtualAddress + seg.FileSize != 0)
                throw new ImageFormatException($"{name}: program header [{i}]: vaddr 0x{seg.VirtualAddress:x} + size 0x{seg.FileSize:x} wraps");
            loads.Add(seg);
        }
        loads.Sort((a, b) => a.VirtualAddress.CompareTo(b.VirtualAddress));
        return new ElfCore(name, file, is64, machine, [.. loads], length);
    }

    /// <summary>Whether every byte of [address, address + length) is in a segment's file bytes.</summary>
    public bool Covers(ulong address, ulong length)
    {
        ulong a = address, left = length;
        while (left > 0)
        {
            int i = Find(a);
            if (i < 0)
                return false;
            var s = loadSegments[i];
            ulong n = Math.Min(left, s.VirtualAddress + s.FileSize - a);
            a += n;
            left -= n;
        }
        return true;
    }

    /// <summary>Reads the bytes at virtual addresses [address, address + destination.Length), across adjacent segments.</summary>
    /// <returns>False when a byte of the range is in no segment (nothing useful is in <paramref name="destination"/> then).</returns>
    /// <exception cref="IOException">The file cannot be read there (e.g. a hole of <c>/proc/kcore</c>).</exception>
    public bool TryRead(ulong address, Span<byte> destination)
    {
        ulong a = address;
        var left = destination;
        while (!left.IsEmpty)
        {
            int i = Find(a);
            if (i < 0)
                return false;
            var s = loadSegments[i];
            int n = (int)Math.Min((ulong)left.Length, s.VirtualAddress + s.FileSize - a);
            long off = (long)(s.FileOffset + (a - s.VirtualAddress));
            var chunk = left[..n];
            while (!chunk.IsEmpty)
            {
                int r = source.Read(chunk, off);
                if (r <= 0)
                    throw new IOException($"{Name}: cannot read 0x{chunk.Length:x} bytes at offset 0x{off:x} (vaddr 0x{a:x}): end of file");
                chunk = chunk[r..];
                off += r;
            }
            a += (ulong)n;
            left = left[n..];
        }
        return true;
    }

    /// <summary>The runs of virtual addresses the segments cover, adjacent segments merged: (start, length), ascending.</summary>
    public IReadOnlyList<(ulong Start, ulong Length)> Ranges()
    {
        var r = new List<(ulong Start, ulong Length)>();
        foreach (var s in loadSegments)
        {
            if (r.Count > 0 && r[^1].Start + r[^1].Length == s.VirtualAddress)
                r[^1] = (r[^1].Start, r[^1].Length + s.FileSize);
            else if (r.Count > 0 && s.VirtualAddress < r[^1].Start + r[^1].Length)
            {
                ulong end = Math.Max(r[^1].Start + r[^1].Length, s.VirtualAddress + s.FileSize);
                r[^1] = (r[^1].Start, end - r[^1].Start);
            }
            else
                r.Add((s.VirtualAddress, s.FileSize));
        }
        return r;
    }

    private int Find(ulong address)
    {
        // The last segment starting at or below the address that holds it (segments may overlap: scan back a little).
        int lo = 0, hi = loadSegments.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (loadSegments[mid].VirtualAddress <= address) { found = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        for (int i = found; i >= 0 && i > found - 8; i--)
        {
            var s = loadSegments[i];
            if (address - s.VirtualAddress < s.FileSize)
                return i;
        }
        return -1;
    }

    /// <inheritdoc />
    public void Dispose() => source.Dispose();

    /// <summary>Where the file's bytes come from: positioned reads of a file, or a buffer.</summary>
    private interface ISource : IDisposable
    {
        long Length { get; }

        /// <summary>Reads up to destination.Length bytes at offset; 0 at or past the end.</summary>
        int Read(Span<byte> destination, long offset);
    }

    private sealed class FileSource(SafeFileHandle handle) : ISource
    {
        public long Length => RandomAccess.GetLength(handle);

        public int Read(Span<byte> destination, long offset) => RandomAccess.Read(handle, destination, offset);

        public void Dispose() => handle.Dispose();
    }

    private sealed class MemorySource(ReadOnlyMemory<byte> bytes) : ISource
    {
        public long Length => bytes.Length;

        public int Read(Span<byte> destination, long offset)
        {
            if (offset < 0 || offset >= bytes.Length)
                return 0;
            int n = (int)Math.Min(destination.Length, bytes.Length - offset);
            bytes.Span.Slice((int)offset, n).CopyTo(destination);
            return n;
        }

        public void Dispose()
        {
        }
    }

    private static uint U32(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt32LittleEndian(d[o..]);
    private static ulong U64(ReadOnlySpan<byte> d, int o) => BinaryPrimitives.ReadUInt64LittleEndian(d[o..]);
}
