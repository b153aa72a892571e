using System.Runtime.InteropServices;

namespace Altpatch.Images;

/// <summary>
/// The image-sized byte arrays (the file, the decompressed payload, the patched and the relocated copies): allocated
/// uninitialized and pinned, with their pages advised to the kernel as transparent huge pages (<c>madvise(MADV_HUGEPAGE)</c>)
/// before they are first written. Touching a fresh 57 MB array 4 KiB page after 4 KiB page costs ~14,000 page
/// faults, which took as long as decompressing the payload on the benchmark VM; with 2 MiB pages it is a few dozen
/// (docs/benchmarks.md). The advice is only a hint: without transparent huge pages (or off Linux) the arrays are
/// ordinary ones. Every caller writes the whole array before reading it.
/// </summary>
internal static partial class LargeBuffer
{
    /// <summary>Arrays below this size are ordinary GC arrays (the advice would not pay for itself).</summary>
    public const int Threshold = 4 << 20;

    private const int MadvHugePage = 14;
    private const int PageSize = 4096;

    /// <summary>An uninitialized array of <paramref name="length"/> bytes, the whole of which the caller writes.</summary>
    public static byte[] Allocate(int length)
    {
        if (length < Threshold || !OperatingSystem.IsLinux())
            return GC.AllocateUninitializedArray<byte>(length);
        var array = GC.AllocateUninitializedArray<byte>(length, pinned: true);
        AdviseHugePages(array);
        return array;
    }

    /// <summary>A copy of <paramref name="source"/> in a new array (<see cref="Allocate"/>).</summary>
    public static byte[] Copy(ReadOnlySpan<byte> source)
    {
        var array = Allocate(source.Length);
        source.CopyTo(array);
        return array;
    }

    /// <summary>The whole file, like <see cref="File.ReadAllBytes"/>, into a new array (<see cref="Allocate"/>).</summary>
    /// <exception cref="IOException">The file cannot be read, is larger than an array, or changed size while read.</exception>
    public static byte[] ReadFile(string path)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        long size = RandomAccess.GetLength(handle);
        if (size > Array.MaxLength)
            throw new IOException($"{path}: {size} bytes is more than an array holds");
        var array = Allocate((int)size);
        int total = 0;
        while (total < array.Length)
        {
            int n = RandomAccess.Read(handle, array.AsSpan(total), total);
            if (n <= 0)
                throw new IOException($"{path}: ended after {total} of its {size} bytes (changed while read?)");
            total += n;
        }
        return array;
    }

    private static unsafe void AdviseHugePages(byte[] array)
    {
        // The array is pinned (POH); advise the whole pages inside it. A failure (no THP) changes nothing.
        fixed (byte* p = array)
        {
            nint start = ((nint)p + PageSize - 1) & ~(nint)(PageSize - 1);
            nint end = ((nint)p + array.Length) & ~(nint)(PageSize - 1);
            if (end > start)
                _ = Madvise(start, end - start, MadvHugePage);
        }
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nint length, int advice);
}
