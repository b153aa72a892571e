using Altpatch.Code;
using Iced.Intel;

namespace Altpatch.Native;

/// <summary>
/// The native half of live patching: three routines Altpatch assembles itself (Iced) into one W^X
/// allocation that is never patched, and the data they share with the managed side in one anonymous
/// read-write mapping. Nothing here calls libc or managed code; every OS service is a raw
/// <c>syscall</c>. Allocated once per process and never freed: a thread may still be about to run a
/// handler (a signal frame already set up) after the handlers are uninstalled.
/// <list type="bullet">
/// <item><b>trap handler</b> (SIGTRAP, <c>LiveCode.Trap.cs</c>): a trap whose RIP-1 is a site of the batch in
/// flight, or a known site whose <c>int3</c> is already gone, is ours: RIP goes back to the site and the thread
/// runs it again (it spins on the <c>int3</c> until the batch ends). Anything else is chained to the
/// previous disposition.</item>
/// <item><b>probe handler</b> (a real-time signal, <c>LiveCode.Probe.cs</c>): reports whether the interrupted
/// thread is at an interior point of a site being rewritten: its RIP, or any word of its stack (return addresses,
/// saved contexts of nested signal handlers).</item>
/// <item><b>batch</b> (<c>LiveCode.Batch.cs</c>, its probe loop in <c>LiveCode.ProbeAll.cs</c>): the whole write
/// of a plan, with the poker thread's signals blocked, in the steps of <c>docs/live.md</c>: 1. <c>int3</c> on every
/// first byte, serialise; 2. probe until no thread is inside a site (only when the sites have interior points);
/// 3. the other bytes, serialise; 4. the first bytes (serialise only for one-byte sites).</item>
/// </list>
/// The data's layout is typed (<c>LiveCode.Layout.cs</c>: <see cref="ControlBlock"/>, <see cref="BatchDescriptor"/>,
/// <see cref="BatchEntry"/>, ...); the known-site table's bookkeeping is in <c>LiveCode.KnownSites.cs</c>.
/// </summary>
internal sealed unsafe partial class LiveCode
{
    // The probe sleeps between checks (a descheduled thread needs the CPU to answer), 20 µs at first,
    // twice as long each time, up to 1 ms.
    private const int FirstSleepNs = 20_000;
    private const int MaxSleepNs = 1_000_000;

    /// <summary>Base of the data mapping (control block first).</summary>
    public nint Data { get; }

    /// <summary>The control block.</summary>
    public ControlBlock* Control => (ControlBlock*)Data;

    /// <summary>The code: RX view (runs) and RW alias (written once, at creation).</summary>
    public ExecutableMemory Code { get; }

    /// <summary>Entry of the SIGTRAP handler.</summary>
    public nint Trap { get; }

    /// <summary>Entry of the probe signal handler.</summary>
    public nint Probe { get; }

    /// <summary>Entry of <c>int batch(BatchDescriptor*)</c>.</summary>
    public nint Batch { get; }

    /// <summary>Entry of <c>ulong tsc()</c>: the time-stamp counter (<c>rdtsc</c>), for profiling a batch beside the stamps the routine writes.</summary>
    public nint Tsc { get; }

    /// <summary>Reads the time-stamp counter (profiling).</summary>
    public ulong ReadTsc() => ((delegate* unmanaged<ulong>)Tsc)();

    /// <summary>The two known-site tables (double-buffered: the handler reads one while the other is rebuilt).</summary>
    public KnownTable* KnownA => (KnownTable*)(Data + DataLayout.KnownAOffset);

    /// <inheritdoc cref="KnownA"/>
    public KnownTable* KnownB => (KnownTable*)(Data + DataLayout.KnownBOffset);

    /// <summary>The interior points of the batch in flight, sorted.</summary>
    public ulong* Hazards => (ulong*)(Data + DataLayout.HazardsOffset);

    /// <summary>
    /// Publishes the interior points of the next batch to the probe handler: the first
    /// <paramref name="count"/> entries of <see cref="Hazards"/> (sorted; 0 for none), with their bounds.
    /// </summary>
    public void PublishHazards(int count)
    {
        ulong* hazards = Hazards;
        Control->HazardMin = count > 0 ? hazards[0] : ulong.MaxValue;
        Control->HazardMax = count > 0 ? hazards[count - 1] : 0;
        Volatile.Write(ref Control->HazardCount, count);
    }

    /// <summary>
    /// Fills a batch descriptor (the outputs cleared): <paramref name="count"/> entries at <paramref name="entries"/>,
    /// whether step 2 probes the other threads and for how long, whether step 4 serialises every core (needed when
    /// the batch has one-byte sites), and the calling thread's id (the one thread not probed).
    /// </summary>
    public static void InitDescriptor(BatchDescriptor* desc, long count, BatchEntry* entries, bool probe, TimeSpan timeout, bool finalSync = false)
    {
        *desc = new BatchDescriptor
        {
            Count = count,
            Entries = entries,
            Flags = (probe ? 1 : 0) | (finalSync ? 2 : 0),
            // Bounded so that the routine's "now + timeout" deadline cannot overflow.
            TimeoutNs = (long)Math.Min(timeout.TotalMilliseconds * 1_000_000, long.MaxValue / 2),
            SelfTid = ThisThreadId(),
        };
    }

    [ThreadStatic]
    private static int threadId;

    /// <summary>The calling thread's id, asked of the kernel once per thread (a system call per batch cost 0.9 µs on the PVM guest of docs/benchmarks.md).</summary>
    private static int ThisThreadId() => threadId != 0 ? threadId : threadId = Libc.Gettid();

    /// <summary>Runs <see cref="Batch"/> on a descriptor filled by <see cref="InitDescriptor"/> and the entries it names.</summary>
    public BatchResult RunBatch(BatchDescriptor* desc) => (BatchResult)((delegate* unmanaged<BatchDescriptor*, int>)Batch)(desc);

    private LiveCode(nint data, ExecutableMemory code, nint trap, nint probe, nint batch, nint tsc)
    {
        Data = data;
        Code = code;
        Trap = trap;
        Probe = probe;
        Batch = batch;
        Tsc = tsc;
    }

    /// <summary>Maps the data, fills the constant parts of the control block and assembles the routines.</summary>
    public static LiveCode Create()
    {
        int size = DataLayout.Size;
        nint data = Libc.Mmap(0, (nuint)size, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous | Libc.MapNoReserve, -1, 0);
        if (data == Libc.MapFailed) throw NativeException.Last($"mmap of {size} bytes for the live poker's tables");
        var ctl = (ControlBlock*)data;
        ctl->Slots = (ProbeSlot*)(data + DataLayout.SlotsOffset);
        ctl->SlotCapacity = DataLayout.SlotCapacity;
        ctl->Known = (KnownTable*)(data + DataLayout.KnownAOffset); // count 0
        ctl->Hazards = (ulong*)(data + DataLayout.HazardsOffset);
        ctl->TrapSet = Signals.Bit(Signals.SigTrap);
        // The batch blocks every signal but the synchronous ones (a fault while blocked would kill the process).
        ulong keep = Signals.Bit(4) | Signals.Bit(5) | Signals.Bit(6) | Signals.Bit(7) | Signals.Bit(8) | Signals.Bit(11);
        ctl->BlockSet = ~keep;
        "/proc/self/task\0"u8.CopyTo(new Span<byte>(ctl->ProcTaskPath, 16));

        ExecutableMemory? code = null;
        try
        {
            code = ExecutableMemory.Allocate(16384, "altpatch-live");
            var a = new Assembler(64);
            var trap = a.CreateLabel("trap");
            var decided = a.CreateLabel("decided");
            var probe = a.CreateLabel("probe");
            var batch = a.CreateLabel("batch");
            EmitTrap(a, (ulong)data, ref trap, ref decided);
            EmitProbe(a, (ulong)data, ref probe);
            EmitBatch(a, (ulong)data, ref batch);
            var tsc = a.CreateLabel("tsc");
            a.Label(ref tsc);
            a.rdtsc();
            a.shl(Iced.Intel.AssemblerRegisters.rdx, 32);
            a.or(Iced.Intel.AssemblerRegisters.rax, Iced.Intel.AssemblerRegisters.rdx);
            a.ret();

            var writer = new ArrayCodeWriter();
            var result = a.Assemble(writer, code.Address, BlockEncoderOptions.ReturnNewInstructionOffsets);
            if (writer.Length > code.Size) throw new InvalidOperationException("live poker code does not fit its allocation");
            writer.Written.CopyTo(code.Writable);
            CoreSync.TrySyncAllCores();
            ctl->TrapStart = result.GetLabelRIP(trap);
            ctl->TrapDecided = result.GetLabelRIP(decided);
            return new LiveCode(data, code, (nint)result.GetLabelRIP(trap), (nint)result.GetLabelRIP(probe), (nint)result.GetLabelRIP(batch), (nint)result.GetLabelRIP(tsc));
        }
        catch
        {
            // Nothing runs this code yet: give the memory back (a later Install tries again from scratch).
            code?.Dispose();
            Libc.Munmap(data, (nuint)size);
            throw;
        }
    }

    private ulong generation;

    /// <summary>A new batch generation (never 0).</summary>
    public ulong NextGeneration() => ++generation;
}
