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
    public static ExecutableMemory Allocate(int size, string name = "altpatch") => Allocate(size, name, 0, 0);

    /// <summary>
    /// Like <see cref="Allocate(int, string)"/>, with the executable view placed so that every byte of it is within
    /// rel32 reach (±2 GiB) of every address of [<paramref name="near"/>, <paramref name="near"/> + <paramref name="span"/>):
    /// trampolines and relays that code at <paramref name="near"/> jumps to with a <c>jmp rel32</c>. Throws
    /// <see cref="NativeException"/> when no such place is free.
    /// </summary>
    public static ExecutableMemory AllocateNear(int size, ulong near, long span, string name = "altpatch") =>
        Allocate(size, name, near == 0 ? 1 : near, span);

    private static ExecutableMemory Allocate(int size, string name, ulong near, long span)
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
            if (near == 0)
            {
                rx = Libc.Mmap(0, (nuint)rounded, Libc.ProtRead | Libc.ProtExec, Libc.MapShared, fd, 0);
                if (rx == Libc.MapFailed) throw NativeException.Last($"mmap RX view of {rounded} bytes");
            }
            else rx = (nint)NearMemory.MapNear((int)rounded, near, span, Libc.ProtRead | Libc.ProtExec, Libc.MapShared, fd, $"{rounded} bytes of executable memory '{name}'");
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
        Register(mem);
        return mem;
    }

    /// <summary>
    /// Gives code that Altpatch did not allocate (a page run of a library's text, file-backed and private) a
    /// writable alias without ever making it writable and executable: the pages' current bytes are copied into a
    /// memfd, and the memfd is mapped read-execute <em>over</em> them (<c>MAP_FIXED</c>, one <c>mmap</c> call) plus
    /// read-write elsewhere. The kernel swaps the mapping under its mmap lock, with a TLB shootdown: a thread
    /// running the pages meanwhile runs either the old page or the copy, whose bytes are the same. The result is
    /// registered like any allocation (the live poker finds its alias) and is never unmapped: the code must stay.
    /// What changes: /proc/self/maps shows the run as <c>/memfd:NAME (deleted)</c>, <c>r-xs</c>, instead of the
    /// library file, so tools that symbolise from the maps (perf, some profilers) no longer see the library there;
    /// the dynamic linker's own tables (<c>dladdr</c>, unwinding through <c>.eh_frame</c>) do not change.
    /// Throws <see cref="NativeException"/> when the run is not mapped readable and executable, or a call fails
    /// (nothing changed then).
    /// </summary>
    public static ExecutableMemory AdoptText(ulong start, int size, string name)
    {
        int page = Environment.SystemPageSize;
        if (start % (ulong)page != 0 || size <= 0 || size % page != 0)
            throw new ArgumentException($"0x{start:x}+{size} is not a run of whole pages", nameof(size));
        lock (AdoptLock)
        {
            var existing = Owner(start, size);
            if (existing is not null) return existing;
            var map = MemoryMap.Read();
            if (!map.Covers(start, size, MapProtection.Read | MapProtection.Execute, out string problem))
                throw new NativeException($"cannot remap 0x{start:x}-0x{start + (ulong)size:x} with a writable alias: {problem}", 0);
            map.TryFind(start, out var region);
            int fd = Libc.MemfdCreate(name, Libc.MfdCloexec);
            if (fd < 0) throw NativeException.Last($"memfd_create(\"{name}\")");
            nint rwView = Libc.MapFailed;
            try
            {
                if (Libc.Ftruncate(fd, size) != 0) throw NativeException.Last($"ftruncate(memfd, {size})");
                rwView = Libc.Mmap(0, (nuint)size, Libc.ProtRead | Libc.ProtWrite, Libc.MapShared, fd, 0);
                if (rwView == Libc.MapFailed) throw NativeException.Last($"mmap RW alias of {size} bytes");
                var current = new ReadOnlySpan<byte>((void*)start, size);
                current.CopyTo(new Span<byte>((void*)rwView, size));
                // The swap: same address, same bytes, now a shared mapping of the memfd.
                nint rx = Libc.Mmap((nint)start, (nuint)size, Libc.ProtRead | Libc.ProtExec, Libc.MapShared | Libc.MapFixed, fd, 0);
                if (rx == Libc.MapFailed) throw NativeException.Last($"mmap over 0x{start:x} ({region.Path})");
            }
            catch
            {
                if (rwView != Libc.MapFailed) Libc.Munmap(rwView, (nuint)size);
                Libc.Close(fd);
                throw;
            }
            Libc.Close(fd);
            var mem = new ExecutableMemory((nint)start, rwView, size, name) { Adopted = true };
            AdoptedText.Add(mem);
            Register(mem);
            return mem;
        }
    }

    /// <summary>True for text that <see cref="AdoptText"/> remapped: it is never unmapped.</summary>
    public bool Adopted { get; private init; }

    private static readonly object AdoptLock = new();
    private static readonly List<ExecutableMemory> AdoptedText = [];

    private static void Register(ExecutableMemory mem)
    {
        lock (RegistryLock)
        {
            var list = new List<ExecutableMemory>(registry) { mem };
            list.Sort((a, b) => a.Address.CompareTo(b.Address));
            registry = [.. list];
        }
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
        if (Adopted) return true; // library text: it stays mapped (and registered) for the life of the process
        lock (RegistryLock)
            registry = Array.FindAll(registry, m => !ReferenceEquals(m, this));
        bool ok = Libc.Munmap(handle, (nuint)Size) == 0;
        ok &= Libc.Munmap(rw, (nuint)Size) == 0;
        return ok;
    }
}
