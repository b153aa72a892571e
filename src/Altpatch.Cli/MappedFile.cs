using System.Buffers;
using System.Runtime.InteropServices;

namespace Altpatch.Cli;

/// <summary>
/// A file mapped read-only (<c>mmap(PROT_READ, MAP_PRIVATE | MAP_POPULATE)</c>) as memory, for the kernel commands' inputs
/// (the image, a text dump): no copy of the file into a fresh image-sized array, whose first touch is expensive (page
/// faults, zeroing; docs/benchmarks.md). Valid until disposed, which the command does when it is done. Off Linux, for an
/// empty file or one above 2 GiB, <see cref="TryOpen"/> returns null and the caller reads the file.
/// </summary>
/// <remarks>A mapped file is read as it is on disk while it is read: replacing it (a new file renamed over it, as package
/// managers do) does not change the mapping, but truncating it in place while a command runs would fault the command.</remarks>
internal sealed unsafe partial class MappedFile : MemoryManager<byte>
{
    private const int ProtRead = 1, MapPrivate = 2, MapPopulate = 0x8000, MadvDontNeed = 4;

    private byte* address;
    private readonly int size;

    private MappedFile(byte* address, int size)
    {
        this.address = address;
        this.size = size;
    }

    /// <summary>The file's length in bytes.</summary>
    public int Length => size;

    /// <summary>Maps <paramref name="path"/>, or returns null where mapping does not apply (then read the file).</summary>
    /// <exception cref="IOException">The file cannot be opened.</exception>
    public static MappedFile? TryOpen(string path)
    {
        if (!OperatingSystem.IsLinux())
            return null;
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long length = RandomAccess.GetLength(handle);
        if (length <= 0 || length > int.MaxValue)
            return null;
        nint p = Mmap(0, (nint)length, ProtRead, MapPrivate | MapPopulate, (int)handle.DangerousGetHandle(), 0);
        return p == -1 ? null : new MappedFile((byte*)p, (int)length);
    }

    /// <summary>Drops the mapping's pages from the process's resident set (they stay in the page cache, and are mapped again
    /// if read): for a file read once, e.g. an image after its payload is decompressed.</summary>
    public void DropResidentPages()
    {
        if (address is not null)
            _ = Madvise((nint)address, size, MadvDontNeed);
    }

    /// <inheritdoc/>
    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(address is null, this);
        return new Span<byte>(address, size);
    }

    /// <inheritdoc/>
    public override MemoryHandle Pin(int elementIndex = 0)
    {
        ObjectDisposedException.ThrowIf(address is null, this);
        return new MemoryHandle(address + elementIndex);
    }

    /// <inheritdoc/>
    public override void Unpin()
    {
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (address is not null)
        {
            _ = Munmap((nint)address, size);
            address = null;
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nint length, int protection, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(nint address, nint length);

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nint length, int advice);
}
