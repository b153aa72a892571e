using System.Runtime.InteropServices;
using Altpatch.Code;

namespace Altpatch.Native;

/// <summary>
/// Executable memory that is never writable and executable at once (W^X), the way dotnet/runtime's
/// executable allocator does it: one memfd mapped twice, an RX view that runs and an RW alias that
/// writes the same physical pages. <see cref="Address"/> is where code runs; <see cref="Writable"/>
/// is where it is written. Disposing unmaps both views.
/// </summary>
public sealed unsafe class ExecutableMemory : SafeHandle
{
    private static readonly object RegistryLock = new();
    private static ExecutableMemory[] registry = [];

    private readonly nint rw;

    /// <summary>Start of the executable (RX) view.</summary>
    public ulong Address { get; }

    /// <summary>Size of each view in bytes (a whole number of pages).</summary>
    public int Size { get; }

    /// <summary>Start of the writable (RW) alias of the same pages.</summary>
    public nint WritableAddress => rw;

    /// <summary>A name shown in /proc/self/maps (memfd:NAME).</summary>
    public string Name { get; }

    private ExecutableMemory(nint rx, nint rw, int size, string name) : base(0, ownsHandle: true)
    {
        SetHandle(rx);
        this.rw = rw;
        Address = (ulong)rx;
        Size = size;
        Name = name;
    }

    /// <inheritdoc />
    public override bool IsInvalid => handle == 0;

    /// <summary>The RW alias as a span: writing here changes the code at <see cref="Address"/>.</summary>
    public Span<byte> Writable
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return new Span<byte>((void*)rw, Size);
        }
    }

    /// <summary>The RX view as a read-only span.</summary>
    public ReadOnlySpan<byte> Code
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsClosed, this);
            return new ReadOnlySpan<byte>((void*)Address, Size);
        }
    }

    /// <summary>True when [address, address+length) lies inside the RX view.</summary>
    public bool Contains(ulong address, int length) =>
        address >= Address && length >= 0 && address - Address <= (ulong)Size && (ulong)length <= (ulong)Size - (address - Address);

    /// <summary>
    /// Allocates <paramref name="size"/> bytes (rounded up to pages) of W^X executable memory,
    /// initially filled with <c>int3</c> (0xCC) so that a stray jump traps.
    /// </summary>
    public static ExecutableMemory Allocate(int size, string name = "altpatch")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        int page = Environment.SystemPageSize;
        long rounded = ((long)size + page - 1) / page * page;
        if (rounded > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(size), size, "executable memory is limited to 2 GiB per allocation");

        int fd = Libc.MemfdCreate(name, Libc.MfdCloexec);
        if (fd < 0) throw NativeException.Last($"memfd_create(\"{name}\")");
        nint rx = Libc.MapFailed, rwView = Libc.MapFailed;
        try
        {
            if (Libc.Ftruncate(fd, rounded) != 0) throw NativeException.Last($"ftruncate(memfd, {rounded})");
            rwView = Libc.Mmap(0, (nuint)rounded, Libc.ProtRead | Libc.ProtWrite, Libc.MapShared, fd, 0);
            if (rwView == Libc.MapFailed) throw NativeException.Last($"mmap RW view of {rounded} bytes");
            rx = Libc.Mmap(0, (nuint)rounded, Libc.ProtRead | Libc.ProtExec, Libc.MapShared, fd, 0);
            if (rx == Libc.MapFailed) throw NativeException.Last($"mmap RX view of {rounded} bytes");
        }
        catch
        {
            if (rwView != Libc.MapFailed) Libc.Munmap(rwView, (nuint)rounded);
            Libc.Close(fd);
            throw;
        }
        Libc.Close(fd); // the two mappings keep the memory alive
        var mem = new ExecutableMemory(rx, rwView, (int)rounded, name);
        mem.Writable.Fill(X86.Int3);
        lock (RegistryLock)
        {
            var list = new List<ExecutableMemory>(registry) { mem };
            list.Sort((a, b) => a.Address.CompareTo(b.Address));
            registry = [.. list];
        }
        return mem;
    }

    /// <summary>
    /// Finds the live allocation whose RX view holds [address, address+length) and returns the
    /// matching address in its RW alias. Lock-free for readers.
    /// </summary>
    public static bool TryGetWritableAlias(ulong address, int length, out nint writable)
    {
        var m = Owner(address, length);
        writable = m is null ? 0 : m.rw + (nint)(address - m.Address);
        return m is not null;
    }

    /// <summary>The live allocation whose RX view holds [address, address+length), or null. Lock-free.</summary>
    internal static ExecutableMemory? Owner(ulong address, int length)
    {
        var snapshot = Volatile.Read(ref registry);
        int lo = 0, hi = snapshot.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            var m = snapshot[mid];
            if (address < m.Address) hi = mid - 1;
            else if (address >= m.Address + (ulong)m.Size) lo = mid + 1;
            else return !m.IsClosed && m.Contains(address, length) ? m : null;
        }
        return null;
    }

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        lock (RegistryLock)
            registry = Array.FindAll(registry, m => !ReferenceEquals(m, this));
        bool ok = Libc.Munmap(handle, (nuint)Size) == 0;
        ok &= Libc.Munmap(rw, (nuint)Size) == 0;
        return ok;
    }
}
