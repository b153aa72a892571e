using Altpatch.Emit;
using Altpatch.Native;

namespace Altpatch.Tests;

/// <summary>Calling emitted code and making test mappings.</summary>
internal static unsafe class Run
{
    public static int Call(ulong fn, int a) => ((delegate* unmanaged<int, int>)fn)(a);
    public static int Call(ulong fn) => ((delegate* unmanaged<int>)fn)();
    public static ulong Call64(ulong fn, ulong a) => ((delegate* unmanaged<ulong, ulong>)fn)(a);
    public static ulong Call64(ulong fn) => ((delegate* unmanaged<ulong>)fn)();

    /// <summary>
    /// An address no mapping can hold: inside page zero, below vm.mmap_min_addr (at least 4096), so it
    /// stays unmapped whatever other threads map meanwhile.
    /// </summary>
    public const ulong NeverMapped = 0x800;

    public static byte[] Read(ulong address, int length) => new ReadOnlySpan<byte>((void*)address, length).ToArray();

    /// <summary>What <paramref name="cb"/> has emitted so far: its text from the start up to the cursor.</summary>
    public static byte[] Text(CodeBuilder cb) => Read(cb.TextStart, (int)(cb.Cursor - cb.TextStart));

    /// <summary>An anonymous private mapping with the given protection (not Altpatch-allocated memory).</summary>
    public static ulong Map(int size, int prot)
    {
        nint p = Libc.Mmap(0, (nuint)size, prot, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
        Assert.NotEqual(Libc.MapFailed, p);
        return (ulong)p;
    }

    /// <summary>
    /// Code Altpatch did not allocate: an anonymous private r-x mapping of <paramref name="size"/> bytes with a copy of
    /// <paramref name="function"/> every 64 bytes.
    /// </summary>
    public static ulong MapCode(int size, ReadOnlySpan<byte> function)
    {
        ulong m = Map(size, Libc.ProtRead | Libc.ProtWrite);
        for (int off = 0; off < size; off += 64) Write(m + (ulong)off, function);
        Protect(m, size, Libc.ProtRead | Libc.ProtExec);
        return m;
    }

    public static void Unmap(ulong address, int size) => Assert.Equal(0, Libc.Munmap((nint)address, (nuint)size));

    public static void Protect(ulong address, int size, int prot) => Assert.Equal(0, Libc.Mprotect((nint)address, (nuint)size, prot));

    public static void Write(ulong address, ReadOnlySpan<byte> bytes) => bytes.CopyTo(new Span<byte>((void*)address, bytes.Length));

    /// <summary>The permissions /proc/self/maps shows for the page holding <paramref name="address"/>.</summary>
    public static string Permissions(ulong address)
    {
        Assert.True(MemoryMap.Read().TryFind(address, out var r), $"0x{address:x} not mapped");
        return r.Permissions;
    }
}
