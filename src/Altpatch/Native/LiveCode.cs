using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

/// <summary>
/// The native half of live patching: three routines Altpatch assembles itself (Iced) into one W^X
/// allocation that is never patched, and the data they share with the managed side in one anonymous
/// read-write mapping. Nothing here calls libc or managed code; every OS service is a raw
/// <c>syscall</c>. Allocated once per process and never freed: a thread may still be about to run a
/// handler (a signal frame already set up) after the handlers are uninstalled.
/// <list type="bullet">
/// <item><b>trap handler</b> (SIGTRAP): a trap whose RIP-1 is a site of the batch in flight, or a
/// known site whose <c>int3</c> is already gone, is ours: RIP goes back to the site and the thread
/// runs it again (it spins on the <c>int3</c> until the batch ends). Anything else is chained to the
/// previous disposition.</item>
/// <item><b>probe handler</b> (a real-time signal): reports whether the interrupted thread is at an
/// interior point of a site being rewritten: its RIP, or any word of its stack (return addresses,
/// saved contexts of nested signal handlers).</item>
/// <item><b>batch</b>: the whole write of a plan, with the poker thread's signals blocked: <c>int3</c>
/// on every first byte, serialise, (probe until no thread is inside a site), the other bytes,
/// serialise, the first bytes, serialise.</item>
/// </list>
/// </summary>
internal sealed unsafe class LiveCode
{
    /// <summary>Offsets in the control block (the first page of the data mapping), 8 bytes each.</summary>
    internal static class Ctl
    {
        public const int Readers = 0x00;        // trap handlers between reading Known and deciding
        public const int Known = 0x08;          // -> table { count, 0, addrs[count], gens[count] }
        public const int Inflight = 0x10;       // generation of the batch in flight, 0 when none
        public const int OurTraps = 0x18;
        public const int ChainedTraps = 0x20;
        public const int PrevHandler = 0x28;
        public const int PrevFlags = 0x30;
        public const int Hazards = 0x38;        // -> sorted interior points of the batch in flight
        public const int HazardCount = 0x40;
        public const int HazardMin = 0x48;
        public const int HazardMax = 0x50;
        public const int Slots = 0x58;          // -> { word = gen << 8 | status, detail, tid, last answer } per thread
        public const int SlotCapacity = 0x60;
        public const int ProbeGen = 0x68;
        public const int MainTop = 0x70;        // end of the main thread's [stack]
        public const int MainMax = 0x78;        // RLIMIT_STACK
        public const int TrapStart = 0x80;      // [TrapStart, TrapDecided): RDX still points at the trap's ucontext
        public const int TrapDecided = 0x88;
        public const int ProbesAnswered = 0x90;
        public const int MaxScan = 0x98;        // largest stack a glibc thread may have below its TCB
        public const int DflAction = 0xA0;      // kernel sigaction { SIG_DFL, 0, 0, 0 } (32 bytes)
        public const int TrapSet = 0xC0;        // sigset with SIGTRAP
        public const int BlockSet = 0xC8;       // what the batch blocks
        public const int SavedMask = 0xD0;
        public const int TimeScratch = 0xD8;    // struct timespec
        public const int ProbeSignal = 0xE8;
        public const int Pid = 0xF0;
        public const int SleepTime = 0xF8;      // struct timespec the probe waits between checks
        public const int SigInfo = 0x108;       // siginfo for rt_tgsigqueueinfo (128 bytes)
        public const int Pending = 0x188;
        public const int WaitIterations = 0x190;
        public const int ProbesSent = 0x198;
        public const int InsideAnswers = 0x1A0;   // probes answered "inside a site"
        public const int ProcTaskPath = 0x200;  // "/proc/self/task"
    }

    /// <summary>The batch descriptor the managed poker fills in before calling <see cref="Batch"/>.</summary>
    internal static class Desc
    {
        public const int Count = 0x00;
        public const int Entries = 0x08;
        public const int Flags = 0x10;          // bit 0: probe for threads inside sites before step 3
        public const int TimeoutNs = 0x18;
        public const int SelfTid = 0x20;
        public const int OutTid = 0x28;
        public const int OutDetail = 0x30;
        public const int OutStatus = 0x38;
        public const int OutErrno = 0x40;
        public const int OutThreads = 0x48;
        public const int Size = 0x60;

        // One entry per site, 32 bytes.
        public const int EntrySize = 32;
        public const int Rw = 0x00;             // where the site's first byte is written
        public const int Tail = 0x08;           // source of bytes 1..n-1
        public const int TailLength = 0x10;     // bytes to copy to Rw+1 (0: the tail does not change)
        public const int NewFirst = 0x18;
        public const int OldFirst = 0x19;
        public const int Single = 0x1A;         // 1: a one-byte site, written once without int3
    }

    /// <summary>Results of <see cref="Batch"/>.</summary>
    internal enum BatchResult
    {
        Done = 0,
        SyncFailed = 1,         // membarrier failed after the int3 round: rolled back
        ProbeTimedOut = 2,      // a thread stayed inside a site: rolled back
        ThreadsUnlisted = 3,    // /proc/self/task could not be read: rolled back
        TooManyThreads = 4,     // rolled back
        LateSyncFailed = 5,     // membarrier failed after the write: written, not serialised
    }

    /// <summary>Probe answers (the low byte of a slot's word).</summary>
    internal enum ProbeStatus
    {
        Pending = 0,
        Clear = 1,
        Inside = 2,
        UnknownStack = 3,
    }

    // The probe sleeps between checks (a descheduled thread needs the CPU to answer), 20 µs at first,
    // twice as long each time, up to 1 ms.
    private const int FirstSleepNs = 20_000;
    private const int MaxSleepNs = 1_000_000;

    private const int DirentOffset = 0x1000;
    private const int DirentSize = 0x8000;
    private const int SlotsOffset = 0x10000;
    public const int SlotCapacity = 16384;
    private const int KnownAOffset = 0x100000;
    private const int KnownBOffset = 0x1200000;
    public const int KnownCapacity = 1 << 20;
    private const int HazardsOffset = 0x2300000;
    public const int HazardCapacity = 1 << 21;
    private const int DataSize = 0x3300000;

    /// <summary>Base of the data mapping (control block first).</summary>
    public nint Data { get; }

    /// <summary>Size of the data mapping.</summary>
    public static int DataLength => DataSize;

    /// <summary>The code: RX view (runs) and RW alias (written once, at creation).</summary>
    public ExecutableMemory Code { get; }

    /// <summary>Entry of the SIGTRAP handler.</summary>
    public nint Trap { get; }

    /// <summary>Entry of the probe signal handler.</summary>
    public nint Probe { get; }

    /// <summary>Entry of <c>int batch(desc*)</c>.</summary>
    public nint Batch { get; }

    /// <summary>The two known-site tables (double-buffered: the handler reads one while the other is rebuilt).</summary>
    public ulong* KnownA => (ulong*)(Data + KnownAOffset);

    /// <inheritdoc cref="KnownA"/>
    public ulong* KnownB => (ulong*)(Data + KnownBOffset);

    /// <summary>The interior points of the batch in flight, sorted.</summary>
    public ulong* Hazards => (ulong*)(Data + HazardsOffset);

    /// <summary>A control-block field.</summary>
    public ulong* Field(int offset) => (ulong*)(Data + offset);

    /// <summary>
    /// Publishes the interior points of the next batch to the probe handler: the first
    /// <paramref name="count"/> entries of <see cref="Hazards"/> (sorted; 0 for none), with their bounds.
    /// </summary>
    public void PublishHazards(int count)
    {
        ulong* hazards = Hazards;
        *Field(Ctl.HazardMin) = count > 0 ? hazards[0] : ulong.MaxValue;
        *Field(Ctl.HazardMax) = count > 0 ? hazards[count - 1] : 0;
        Volatile.Write(ref *Field(Ctl.HazardCount), (ulong)count);
    }

    /// <summary>
    /// Fills the header of a batch descriptor (<see cref="Desc.Size"/> bytes; the outputs cleared):
    /// <paramref name="count"/> entries at <paramref name="entries"/>, whether to probe the other threads
    /// before step 3 and for how long, and the calling thread's id (the one thread not probed).
    /// </summary>
    public static void InitDescriptor(byte* desc, long count, byte* entries, bool probe, TimeSpan timeout)
    {
        new Span<byte>(desc, Desc.Size).Clear();
        *(long*)(desc + Desc.Count) = count;
        *(byte**)(desc + Desc.Entries) = entries;
        *(long*)(desc + Desc.Flags) = probe ? 1 : 0;
        // Bounded so that the routine's "now + timeout" deadline cannot overflow.
        *(long*)(desc + Desc.TimeoutNs) = (long)Math.Min(timeout.TotalMilliseconds * 1_000_000, long.MaxValue / 2);
        *(long*)(desc + Desc.SelfTid) = Libc.Gettid();
    }

    /// <summary>Runs <see cref="Batch"/> on a descriptor filled by <see cref="InitDescriptor"/> and the entries it names.</summary>
    public BatchResult RunBatch(byte* desc) => (BatchResult)((delegate* unmanaged<byte*, int>)Batch)(desc);

    private LiveCode(nint data, ExecutableMemory code, nint trap, nint probe, nint batch)
    {
        Data = data;
        Code = code;
        Trap = trap;
        Probe = probe;
        Batch = batch;
    }

    /// <summary>Maps the data, fills the constant parts of the control block and assembles the routines.</summary>
    public static LiveCode Create()
    {
        nint data = Libc.Mmap(0, DataSize, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous | Libc.MapNoReserve, -1, 0);
        if (data == Libc.MapFailed) throw NativeException.Last($"mmap of {DataSize} bytes for the live poker's tables");
        ulong* ctl = (ulong*)data;
        ctl[Ctl.Slots / 8] = (ulong)(data + SlotsOffset);
        ctl[Ctl.SlotCapacity / 8] = SlotCapacity;
        ctl[Ctl.Known / 8] = (ulong)(data + KnownAOffset); // count 0
        ctl[Ctl.Hazards / 8] = (ulong)(data + HazardsOffset);
        ctl[Ctl.TrapSet / 8] = Signals.Bit(Signals.SigTrap);
        // The batch blocks every signal but the synchronous ones (a fault while blocked would kill the process).
        ulong keep = Signals.Bit(4) | Signals.Bit(5) | Signals.Bit(6) | Signals.Bit(7) | Signals.Bit(8) | Signals.Bit(11);
        ctl[Ctl.BlockSet / 8] = ~keep;
        "/proc/self/task\0"u8.CopyTo(new Span<byte>((void*)(data + Ctl.ProcTaskPath), 16));

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

            var writer = new ArrayCodeWriter();
            var result = a.Assemble(writer, code.Address, BlockEncoderOptions.ReturnNewInstructionOffsets);
            if (writer.Length > code.Size) throw new InvalidOperationException("live poker code does not fit its allocation");
            writer.Written.CopyTo(code.Writable);
            CoreSync.TrySyncAllCores();
            ctl[Ctl.TrapStart / 8] = result.GetLabelRIP(trap);
            ctl[Ctl.TrapDecided / 8] = result.GetLabelRIP(decided);
            return new LiveCode(data, code, (nint)result.GetLabelRIP(trap), (nint)result.GetLabelRIP(probe), (nint)result.GetLabelRIP(batch));
        }
        catch
        {
            // Nothing runs this code yet: give the memory back (a later Install tries again from scratch).
            code?.Dispose();
            Libc.Munmap(data, DataSize);
            throw;
        }
    }

    private ulong generation;

    /// <summary>A new batch generation (never 0).</summary>
    public ulong NextGeneration() => ++generation;

    private ulong* CurrentKnown => (ulong*)Volatile.Read(ref *Field(Ctl.Known));

    private static long IndexOf(ulong* table, ulong address)
    {
        long i = LowerBound(table + 2, (long)table[0], address, 0);
        return i < (long)table[0] && table[2 + i] == address ? i : -1;
    }

    /// <summary>First index at or after <paramref name="from"/> whose address is not below <paramref name="x"/> (galloping, then binary search).</summary>
    private static long LowerBound(ulong* addrs, long count, ulong x, long from)
    {
        long lo = from, step = 1, hi = from;
        while (hi < count && addrs[hi] < x)
        {
            lo = hi + 1;
            hi += step;
            step <<= 1;
        }
        if (hi > count) hi = count;
        while (lo < hi)
        {
            long mid = (lo + hi) >>> 1;
            if (addrs[mid] < x) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    /// <summary>
    /// Makes the trap handler's table of known sites hold every address of <paramref name="add"/> and
    /// none of <paramref name="remove"/> (both ascending), then marks the <paramref name="add"/> sites
    /// as part of batch <paramref name="gen"/>. When the table must change, the new one is built in
    /// the spare buffer, published with one pointer store, and the old one is not reused before every
    /// handler that may be reading it has finished. Returns false when the table would be full.
    /// </summary>
    public bool PrepareBatch(ReadOnlySpan<ulong> add, ReadOnlySpan<ulong> remove, ulong gen)
    {
        ulong* cur = CurrentKnown;
        bool change = false;
        var indices = add.Length <= 1024 ? stackalloc long[add.Length] : new long[add.Length];
        long count = (long)cur[0], at = 0;
        for (int k = 0; k < add.Length; k++)
        {
            at = LowerBound(cur + 2, count, add[k], at);
            if (at >= count || cur[2 + at] != add[k]) { change = true; break; }
            indices[k] = at;
        }
        if (!change) foreach (ulong x in remove) if (IndexOf(cur, x) >= 0) { change = true; break; }
        if (change)
        {
            if (!Rebuild(cur, add, remove)) return false;
            cur = CurrentKnown;
            count = (long)cur[0];
            at = 0;
            for (int k = 0; k < add.Length; k++) indices[k] = at = LowerBound(cur + 2, count, add[k], at);
        }
        ulong* gens = cur + 2 + count;
        foreach (long i in indices) Volatile.Write(ref gens[i], gen);
        return true;
    }

    private bool Rebuild(ulong* cur, ReadOnlySpan<ulong> add, ReadOnlySpan<ulong> remove)
    {
        long count = (long)cur[0];
        ulong* curAddrs = cur + 2, curGens = cur + 2 + count;
        ulong* next = cur == KnownA ? KnownB : KnownA;
        ulong* addrs = next + 2;
        // Merge into addrs; gens are written after (their offset depends on the final count).
        var gens = new ulong[count + add.Length];
        long n = 0, i = 0, j = 0, r = 0;
        while (i < count || j < add.Length)
        {
            ulong x; ulong g = 0;
            if (j >= add.Length || (i < count && curAddrs[i] <= add[(int)j]))
            {
                x = curAddrs[i]; g = curGens[i];
                if (j < add.Length && add[(int)j] == x) j++;
                i++;
            }
            else x = add[(int)j++];
            while (r < remove.Length && remove[(int)r] < x) r++;
            if (r < remove.Length && remove[(int)r] == x) continue;
            if (n > 0 && addrs[n - 1] == x) continue;
            if (n >= KnownCapacity) return false;
            addrs[n] = x;
            gens[n] = g;
            n++;
        }
        for (long k = 0; k < n; k++) next[2 + n + k] = gens[k];
        next[0] = (ulong)n;
        next[1] = 0;
        Volatile.Write(ref *Field(Ctl.Known), (ulong)next);
        Interlocked.MemoryBarrier();
        var spin = new SpinWait();
        while (Volatile.Read(ref *Field(Ctl.Readers)) != 0) spin.SpinOnce();
        return true;
    }

    /// <summary>The System V callee-saved registers, which the probe handler and the batch keep for their caller.</summary>
    private static readonly AssemblerRegister64[] CalleeSaved = [rbx, rbp, r12, r13, r14, r15];

    // ---------------------------------------------------------------- SIGTRAP handler
    //
    // void trap(int sig /*rdi*/, siginfo_t* info /*rsi*/, ucontext_t* uc /*rdx*/)
    // Until the decision it touches only rax, rcx, r8-r11 and memory, and never moves RSP or RDX, so
    // a probe that interrupts it finds the trap's saved RIP at [RDX + UcRip] and can ignore it.
    private static void EmitTrap(Assembler a, ulong ctl, ref Label entry, ref Label decided)
    {
        var search = a.CreateLabel();
        var left = a.CreateLabel();
        var found = a.CreateLabel();
        var retry = a.CreateLabel();
        var checkByte = a.CreateLabel();
        var ours = a.CreateLabel();
        var inFlight = a.CreateLabel();
        var notOurs = a.CreateLabel();
        var ignore = a.CreateLabel();
        var justReturn = a.CreateLabel();
        var reraise = a.CreateLabel();

        a.Label(ref entry);
        a.mov(r11, ctl);
        a.@lock.inc(__qword_ptr[r11 + Ctl.Readers]);
        a.cmp(__dword_ptr[rsi + Signals.SiCodeOffset], Signals.SiKernel);
        a.jne(notOurs);
        a.mov(r8, __qword_ptr[rdx + Signals.UcRip]);
        a.dec(r8);                                        // x: the int3's address
        a.mov(r9, __qword_ptr[r11 + Ctl.Known]);
        a.mov(rcx, __qword_ptr[r9]);                      // hi = count
        a.xor(eax, eax);                                  // lo = 0
        a.Label(ref search);
        a.cmp(rax, rcx);
        a.jae(notOurs);
        a.lea(r10, __[rax + rcx]);
        a.shr(r10, 1);
        a.cmp(r8, __qword_ptr[r9 + r10 * 8 + 16]);
        a.je(found);
        a.jb(left);
        a.lea(rax, __[r10 + 1]);
        a.jmp(search);
        a.Label(ref left);
        a.mov(rcx, r10);
        a.jmp(search);

        a.Label(ref found);                               // r10 = index
        a.mov(rcx, __qword_ptr[r9]);
        a.lea(r9, __[r9 + rcx * 8 + 16]);                 // gens[]
        a.Label(ref retry);
        a.mov(rax, __qword_ptr[r11 + Ctl.Inflight]);
        a.mov(rcx, __qword_ptr[r9 + r10 * 8]);
        a.test(rax, rax);
        a.jz(checkByte);
        a.cmp(rax, rcx);
        a.je(inFlight);                                   // a site of the batch in flight
        a.Label(ref checkByte);
        a.cmp(__byte_ptr[r8], X86.Int3);
        a.jne(ours);                                      // our int3 is gone: run what is there now
        a.cmp(rax, __qword_ptr[r11 + Ctl.Inflight]);
        a.jne(retry);                                     // a batch started or ended meanwhile
        a.cmp(rcx, __qword_ptr[r9 + r10 * 8]);
        a.jne(retry);
        a.jmp(notOurs);                                   // an int3 that is not ours

        a.Label(ref ours);
        a.mov(__qword_ptr[rdx + Signals.UcRip], r8);      // back to the site
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);
        a.@lock.inc(__qword_ptr[r11 + Ctl.OurTraps]);
        a.ret();

        a.Label(ref inFlight);                            // the same, and give the CPU away before trapping
        a.mov(__qword_ptr[rdx + Signals.UcRip], r8);      // again: the batch (and the threads it probes)
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);      // needs it more than a thread spinning on an int3
        a.@lock.inc(__qword_ptr[r11 + Ctl.OurTraps]);
        a.mov(eax, Sys.SchedYield);
        a.syscall();                                      // clobbers rax, rcx, r11 only: RDX stays
        a.ret();

        a.Label(ref notOurs);
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);
        a.Label(ref decided);
        a.@lock.inc(__qword_ptr[r11 + Ctl.ChainedTraps]);
        a.mov(rax, __qword_ptr[r11 + Ctl.PrevHandler]);
        a.cmp(rax, 1);
        a.je(ignore);
        a.test(rax, rax);
        a.jz(reraise);
        a.sub(rsp, 8);                                    // 16-byte alignment for the call
        a.call(rax);                                      // edi, rsi, rdx: as we received them
        a.add(rsp, 8);
        a.ret();

        a.Label(ref ignore);                              // SIG_IGN: the kernel ignores sent signals,
        a.cmp(__dword_ptr[rsi + Signals.SiCodeOffset], 0);
        a.jle(justReturn);                                // but a trap it raises itself kills (force_sig)
        a.jmp(reraise);
        a.Label(ref justReturn);
        a.ret();

        a.Label(ref reraise);                             // SIG_DFL: restore it and raise the signal again
        a.mov(eax, Sys.RtSigaction);
        a.mov(edi, Signals.SigTrap);
        a.mov(rsi, ctl + Ctl.DflAction);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, Sys.RtSigprocmask);
        a.mov(edi, 1);                                    // SIG_UNBLOCK
        a.mov(rsi, ctl + Ctl.TrapSet);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, Sys.Getpid);
        a.syscall();
        a.mov(r8, rax);
        a.mov(eax, Sys.Gettid);
        a.syscall();
        a.mov(rsi, rax);
        a.mov(rdi, r8);
        a.mov(edx, Signals.SigTrap);
        a.mov(eax, Sys.Tgkill);
        a.syscall();
        a.ret();
    }

    // ---------------------------------------------------------------- probe handler
    //
    // void probe(int sig, siginfo_t* info, ucontext_t* uc). si_value = gen << 20 | slot index.
    // Answers Clear, Inside (RIP or a stack word is an interior point) or UnknownStack (on an
    // alternate signal stack, or a stack it cannot bound) by a compare-and-swap on the slot, which
    // fails harmlessly when the probe is stale (the poker has moved the slot to a newer generation).
    private static void EmitProbe(Assembler a, ulong ctl, ref Label entry)
    {
        var isHazard = a.CreateLabel();
        var ihLoop = a.CreateLabel();
        var ihLeft = a.CreateLabel();
        var ihYes = a.CreateLabel();
        var ihNo = a.CreateLabel();
        var outLabel = a.CreateLabel();
        var noSkip = a.CreateLabel();
        var tryFs = a.CreateLabel();
        var scan = a.CreateLabel();
        var loop = a.CreateLabel();
        var read = a.CreateLabel();
        var next = a.CreateLabel();
        var vmFail = a.CreateLabel();
        var clear = a.CreateLabel();
        var busyRip = a.CreateLabel();
        var busyStack = a.CreateLabel();
        var unknown = a.CreateLabel();
        var done = a.CreateLabel();
        var counted = a.CreateLabel();

        // locals at [rsp]: 0 local iovec, 16 remote iovec, 32 buffer, 40 top, 48 checked-up-to
        const int LIov = 0, RIov = 16, Buf = 32, Top = 40, Checked = 48, Locals = 64;

        a.Label(ref entry);
        a.PushAll(CalleeSaved);
        a.sub(rsp, Locals);
        a.mov(r15, ctl);
        a.mov(rax, __qword_ptr[rsi + Signals.SiValueOffset]);
        a.mov(r14, rax);
        a.and(r14d, 0xFFFFF);
        a.shr(rax, 20);
        a.cmp(r14, __qword_ptr[r15 + Ctl.SlotCapacity]);
        a.jae(outLabel);
        a.shl(r14, 5);
        a.add(r14, __qword_ptr[r15 + Ctl.Slots]);        // r14 = slot
        a.shl(rax, 8);
        a.mov(r12, rax);                                  // r12 = expected word (pending)
        a.cmp(__qword_ptr[r14], r12);
        a.jne(outLabel);                                  // stale probe
        a.@lock.inc(__qword_ptr[r15 + Ctl.ProbesAnswered]);
        a.mov(rbx, __qword_ptr[rdx + Signals.UcRip]);
        a.mov(rbp, __qword_ptr[rdx + Signals.UcRsp]);
        a.mov(rdi, rbx);
        a.call(isHazard);
        a.test(eax, eax);
        a.jnz(busyRip);
        // No interior points (the uninstall grace period): no stack word can be one, so the answer is
        // Clear whatever the stack, even one the checks below could not bound.
        a.cmp(__qword_ptr[r15 + Ctl.HazardCount], 0);
        a.je(clear);

        // Interrupted inside the trap handler before its decision: the trap frame's saved RIP (site+1
        // of a trap the handler is about to send back to the site) is not a position to wait for.
        a.xor(r13d, r13d);
        a.cmp(rbx, __qword_ptr[r15 + Ctl.TrapStart]);
        a.jb(noSkip);
        a.cmp(rbx, __qword_ptr[r15 + Ctl.TrapDecided]);
        a.jae(noSkip);
        a.mov(r13, __qword_ptr[rdx + Signals.UcRdx]);
        a.add(r13, Signals.UcRip);
        a.Label(ref noSkip);

        // On an alternate signal stack? (We are not SA_ONSTACK, so we run on the interrupted stack.)
        a.xor(edi, edi);
        a.mov(rsi, rsp);
        a.mov(eax, Sys.Sigaltstack);
        a.syscall();
        a.test(__dword_ptr[rsp + 8], 1);                  // ss_flags & SS_ONSTACK
        a.jnz(unknown);

        // Bound the stack: the main thread's [stack], else a glibc thread's TCB (fs:0) above its stack.
        a.mov(rax, __qword_ptr[r15 + Ctl.MainTop]);
        a.cmp(rbp, rax);
        a.jae(tryFs);
        a.mov(rcx, rax);
        a.sub(rcx, rbp);
        a.cmp(rcx, __qword_ptr[r15 + Ctl.MainMax]);
        a.jbe(scan);
        a.Label(ref tryFs);
        a.mov(eax, Sys.ArchPrctl);                        // the thread pointer (glibc's TCB, at the top of
        a.mov(edi, 0x1003);                               // the thread's stack block): ARCH_GET_FS, which
        a.lea(rsi, __[rsp + Buf]);                        // cannot fault where fs:[0] could
        a.syscall();
        a.test(rax, rax);
        a.jnz(unknown);
        a.mov(rax, __qword_ptr[rsp + Buf]);
        a.test(rax, rax);
        a.jz(unknown);
        a.cmp(rbp, rax);
        a.jae(unknown);
        a.mov(rcx, rax);
        a.sub(rcx, rbp);
        a.cmp(rcx, __qword_ptr[r15 + Ctl.MaxScan]);
        a.ja(unknown);

        a.Label(ref scan);
        a.mov(__qword_ptr[rsp + Top], rax);
        a.and(rbp, -8);
        a.mov(__qword_ptr[rsp + Checked], 0);
        a.Label(ref loop);
        a.cmp(rbp, __qword_ptr[rsp + Top]);
        a.jae(clear);
        a.cmp(rbp, __qword_ptr[rsp + Checked]);
        a.jb(read);
        // First word of a page: check it is readable without touching it (process_vm_readv on
        // ourselves fails with EFAULT instead of faulting).
        a.lea(rax, __[rsp + Buf]);
        a.mov(__qword_ptr[rsp + LIov], rax);
        a.mov(__qword_ptr[rsp + LIov + 8], 8);
        a.mov(__qword_ptr[rsp + RIov], rbp);
        a.mov(__qword_ptr[rsp + RIov + 8], 8);
        a.mov(eax, Sys.ProcessVmReadv);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.lea(rsi, __[rsp + LIov]);
        a.mov(edx, 1);
        a.lea(r10, __[rsp + RIov]);
        a.mov(r8d, 1);
        a.xor(r9d, r9d);
        a.syscall();
        a.cmp(rax, 8);
        a.jne(vmFail);
        a.mov(rax, rbp);
        a.or(rax, 0xFFF);
        a.inc(rax);
        a.mov(__qword_ptr[rsp + Checked], rax);
        a.Label(ref read);
        a.cmp(rbp, r13);
        a.je(next);
        a.mov(rdi, __qword_ptr[rbp]);
        a.cmp(rdi, __qword_ptr[r15 + Ctl.HazardMin]);
        a.jb(next);
        a.cmp(rdi, __qword_ptr[r15 + Ctl.HazardMax]);
        a.ja(next);
        a.call(isHazard);
        a.test(eax, eax);
        a.jnz(busyStack);
        a.Label(ref next);
        a.add(rbp, 8);
        a.jmp(loop);

        a.Label(ref vmFail);
        a.cmp(rax, -Sys.Efault);
        a.je(clear);                                      // the readable stack ends here
        a.jmp(unknown);                                   // cannot check (process_vm_readv refused)

        a.Label(ref clear);
        a.mov(ecx, (int)ProbeStatus.Clear);
        a.xor(ebx, ebx);
        a.jmp(done);
        a.Label(ref busyRip);
        a.mov(ecx, (int)ProbeStatus.Inside);
        a.jmp(done);
        a.Label(ref busyStack);
        a.mov(ecx, (int)ProbeStatus.Inside);
        a.mov(rbx, rdi);
        a.jmp(done);
        a.Label(ref unknown);
        a.mov(ecx, (int)ProbeStatus.UnknownStack);
        a.mov(rbx, rbp);
        a.Label(ref done);
        a.cmp(ecx, (int)ProbeStatus.Inside);
        a.jne(counted);
        a.@lock.inc(__qword_ptr[r15 + Ctl.InsideAnswers]);
        a.Label(ref counted);
        a.mov(__qword_ptr[r14 + 8], rbx);
        a.or(rcx, r12);
        a.mov(rax, r12);
        a.@lock.cmpxchg(__qword_ptr[r14], rcx);
        a.Label(ref outLabel);
        a.add(rsp, Locals);
        a.PopAll(CalleeSaved);
        a.ret();

        // bool isHazard(rdi): binary search of the interior points; uses rax, rcx, r8-r10.
        a.Label(ref isHazard);
        a.mov(r9, __qword_ptr[r15 + Ctl.Hazards]);
        a.mov(rcx, __qword_ptr[r15 + Ctl.HazardCount]);
        a.xor(r8d, r8d);
        a.Label(ref ihLoop);
        a.cmp(r8, rcx);
        a.jae(ihNo);
        a.lea(r10, __[r8 + rcx]);
        a.shr(r10, 1);
        a.cmp(rdi, __qword_ptr[r9 + r10 * 8]);
        a.je(ihYes);
        a.jb(ihLeft);
        a.lea(r8, __[r10 + 1]);
        a.jmp(ihLoop);
        a.Label(ref ihLeft);
        a.mov(rcx, r10);
        a.jmp(ihLoop);
        a.Label(ref ihYes);
        a.mov(eax, 1);
        a.ret();
        a.Label(ref ihNo);
        a.xor(eax, eax);
        a.ret();
    }

    // ---------------------------------------------------------------- batch
    //
    // int batch(desc* rdi). rbx = desc, r15 = control block throughout.
    private static void EmitBatch(Assembler a, ulong ctl, ref Label entry)
    {
        var sync = a.CreateLabel();
        var probeAll = a.CreateLabel();
        var step2 = a.CreateLabel();
        var step2Next = a.CreateLabel();
        var step2Done = a.CreateLabel();
        var step3 = a.CreateLabel();
        var step3Loop = a.CreateLabel();
        var step3Next = a.CreateLabel();
        var step3Done = a.CreateLabel();
        var step4 = a.CreateLabel();
        var step4Loop = a.CreateLabel();
        var step4Write = a.CreateLabel();
        var step4Next = a.CreateLabel();
        var step4Done = a.CreateLabel();
        var finish = a.CreateLabel();
        var syncFailed = a.CreateLabel();
        var probeFailed = a.CreateLabel();
        var rollback = a.CreateLabel();
        var rbLoop = a.CreateLabel();
        var rbNext = a.CreateLabel();
        var rbDone = a.CreateLabel();
        var restore = a.CreateLabel();

        a.Label(ref entry);
        a.PushAll(CalleeSaved);
        a.sub(rsp, 8);
        a.mov(rbx, rdi);
        a.mov(r15, ctl);
        // Block signals on this thread: no handler may run here (it could run a site being patched).
        a.mov(eax, Sys.RtSigprocmask);
        a.xor(edi, edi);                                  // SIG_BLOCK
        a.lea(rsi, __[r15 + Ctl.BlockSet]);
        a.lea(rdx, __[r15 + Ctl.SavedMask]);
        a.mov(r10d, 8);
        a.syscall();

        // Step 2: int3 over every first byte.
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step2);
        a.test(rcx, rcx);
        a.jz(step2Done);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(step2Next);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], X86.Int3);
        a.Label(ref step2Next);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(step2);
        a.Label(ref step2Done);
        a.call(sync);
        a.test(eax, eax);
        a.jnz(syncFailed);

        // Step 2b: wait until no thread is at an interior point of a site.
        a.test(__qword_ptr[rbx + Desc.Flags], 1);
        a.jz(step3);
        a.call(probeAll);
        a.test(eax, eax);
        a.jnz(probeFailed);

        // Step 3: bytes 1..n-1.
        a.Label(ref step3);
        a.xor(r12d, r12d);
        a.mov(r13, __qword_ptr[rbx + Desc.Count]);
        a.mov(r14, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step3Loop);
        a.test(r13, r13);
        a.jz(step3Done);
        a.mov(rcx, __qword_ptr[r14 + Desc.TailLength]);
        a.test(rcx, rcx);
        a.jz(step3Next);
        a.mov(rdi, __qword_ptr[r14 + Desc.Rw]);
        a.inc(rdi);
        a.mov(rsi, __qword_ptr[r14 + Desc.Tail]);
        a.rep.movsb();
        a.mov(r12d, 1);
        a.Label(ref step3Next);
        a.add(r14, Desc.EntrySize);
        a.dec(r13);
        a.jmp(step3Loop);
        a.Label(ref step3Done);
        a.xor(ebp, ebp);
        a.test(r12, r12);
        a.jz(step4);
        a.call(sync);
        a.test(eax, eax);
        a.jz(step4);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(ebp, (int)BatchResult.LateSyncFailed);

        // Step 4: the first bytes (and the one-byte sites).
        a.Label(ref step4);
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step4Loop);
        a.test(rcx, rcx);
        a.jz(step4Done);
        a.mov(al, __byte_ptr[rsi + Desc.NewFirst]);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(step4Write);
        a.cmp(al, X86.Int3);
        a.je(step4Next);                                  // the new first byte is our int3 already
        a.Label(ref step4Write);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], al);
        a.Label(ref step4Next);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(step4Loop);
        a.Label(ref step4Done);
        a.call(sync);
        a.test(eax, eax);
        a.jz(finish);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(ebp, (int)BatchResult.LateSyncFailed);
        a.Label(ref finish);
        a.mov(r12d, ebp);
        a.jmp(restore);

        a.Label(ref syncFailed);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(r12d, (int)BatchResult.SyncFailed);
        a.jmp(rollback);
        a.Label(ref probeFailed);
        a.mov(r12d, eax);
        a.Label(ref rollback);                            // only first bytes were written: put them back
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref rbLoop);
        a.test(rcx, rcx);
        a.jz(rbDone);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(rbNext);
        a.mov(al, __byte_ptr[rsi + Desc.OldFirst]);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], al);
        a.Label(ref rbNext);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(rbLoop);
        a.Label(ref rbDone);
        a.call(sync);

        a.Label(ref restore);
        a.mov(eax, Sys.RtSigprocmask);
        a.mov(edi, 2);                                    // SIG_SETMASK
        a.lea(rsi, __[r15 + Ctl.SavedMask]);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, r12d);
        a.add(rsp, 8);
        a.PopAll(CalleeSaved);
        a.ret();

        // int sync(): cpuid here, membarrier(PRIVATE_EXPEDITED_SYNC_CORE) for every other core
        // running a thread of this process. Returns 0 or errno.
        a.Label(ref sync);
        a.push(rbx);
        a.xor(eax, eax);
        a.xor(ecx, ecx);
        a.cpuid();
        a.pop(rbx);
        a.mov(eax, Sys.Membarrier);
        a.mov(edi, Sys.MembarrierPrivateExpeditedSyncCore);
        a.xor(esi, esi);
        a.xor(edx, edx);
        a.syscall();
        a.neg(rax);
        a.ret();

        EmitProbeAll(a, probeAll);
    }

    // int probeAll(): lists the threads (twice: a thread exiting during a listing can hide another),
    // probes every other thread, and probes again the ones inside a site until all are clear or the
    // timeout passes. Uses rbp, r12-r14 (saved), rbx = desc, r15 = control block.
    private static void EmitProbeAll(Assembler a, Label entry)
    {
        ReadOnlySpan<AssemblerRegister64> saved = [rbp, r12, r13, r14];
        var enumerate = a.CreateLabel();
        var sendOne = a.CreateLabel();
        var nowNs = a.CreateLabel();
        var sendLoop = a.CreateLabel();
        var waitStart = a.CreateLabel();
        var wait = a.CreateLabel();
        var check = a.CreateLabel();
        var pending = a.CreateLabel();
        var slotNext = a.CreateLabel();
        var checkedAll = a.CreateLabel();
        var timeout = a.CreateLabel();
        var tLoop = a.CreateLabel();
        var tFound = a.CreateLabel();
        var tNone = a.CreateLabel();
        var tNext = a.CreateLabel();
        var tKeep = a.CreateLabel();
        var tOut = a.CreateLabel();
        var ok = a.CreateLabel();
        var ret = a.CreateLabel();
        var sleepSet = a.CreateLabel();

        a.Label(ref entry);
        a.PushAll(saved);
        a.mov(r14, __qword_ptr[r15 + Ctl.Slots]);
        a.xor(r13d, r13d);                                // thread count
        a.call(enumerate);
        a.test(eax, eax);
        a.jnz(ret);
        a.call(enumerate);
        a.test(eax, eax);
        a.jnz(ret);
        a.mov(__qword_ptr[rbx + Desc.OutThreads], r13);
        a.xor(r12d, r12d);
        a.Label(ref sendLoop);
        a.cmp(r12, r13);
        a.jae(waitStart);
        a.mov(rdi, r12);
        a.call(sendOne);
        a.inc(r12);
        a.jmp(sendLoop);

        a.Label(ref waitStart);
        a.call(nowNs);
        a.add(rax, __qword_ptr[rbx + Desc.TimeoutNs]);
        a.mov(rbp, rax);                                  // deadline
        a.mov(__qword_ptr[r15 + Ctl.WaitIterations], 0);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime], 0);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime + 8], FirstSleepNs);
        a.Label(ref wait);
        a.xor(r12d, r12d);
        a.mov(__qword_ptr[r15 + Ctl.Pending], 0);
        a.Label(ref check);
        a.cmp(r12, r13);
        a.jae(checkedAll);
        a.mov(rax, r12);
        a.shl(rax, 5);
        a.movzx(eax, __byte_ptr[r14 + rax]);
        a.cmp(eax, (int)ProbeStatus.Clear);
        a.je(slotNext);
        a.inc(__qword_ptr[r15 + Ctl.Pending]);
        a.test(eax, eax);
        a.jz(pending);
        a.mov(rcx, r12);                                  // inside a site (or stack unknown): remember
        a.shl(rcx, 5);                                    // the answer for the report, then ask again
        a.mov(__qword_ptr[r14 + rcx + 24], rax);
        a.mov(rdi, r12);
        a.call(sendOne);
        a.jmp(slotNext);
        a.Label(ref pending);                             // no answer yet: is the thread still alive?
        a.test(__qword_ptr[r15 + Ctl.WaitIterations], 15);
        a.jnz(slotNext);
        a.mov(rax, r12);
        a.shl(rax, 5);
        a.mov(rsi, __qword_ptr[r14 + rax + 16]);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.xor(edx, edx);
        a.mov(eax, Sys.Tgkill);
        a.syscall();
        a.cmp(rax, -Sys.Esrch);
        a.jne(slotNext);
        a.mov(rax, r12);
        a.shl(rax, 5);
        a.mov(__byte_ptr[r14 + rax], (int)ProbeStatus.Clear); // it exited
        a.dec(__qword_ptr[r15 + Ctl.Pending]);
        a.Label(ref slotNext);
        a.inc(r12);
        a.jmp(check);
        a.Label(ref checkedAll);
        a.cmp(__qword_ptr[r15 + Ctl.Pending], 0);
        a.je(ok);
        a.inc(__qword_ptr[r15 + Ctl.WaitIterations]);
        a.call(nowNs);
        a.cmp(rax, rbp);
        a.ja(timeout);
        a.mov(eax, Sys.Nanosleep);
        a.lea(rdi, __[r15 + Ctl.SleepTime]);
        a.xor(esi, esi);
        a.syscall();
        a.mov(rax, __qword_ptr[r15 + Ctl.SleepTime + 8]); // sleep twice as long next time, up to 1 ms:
        a.add(rax, rax);                                  // a thread stuck inside a site is not flooded
        a.cmp(rax, MaxSleepNs);                           // with probes while it tries to leave
        a.jbe(sleepSet);
        a.mov(eax, MaxSleepNs);
        a.Label(ref sleepSet);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime + 8], rax);
        a.jmp(wait);

        // Report a thread that is not clear: one that said it was inside if there is one (its slot may
        // be pending again, re-probed), else one that never answered.
        a.Label(ref timeout);
        a.mov(r12, -1);                                   // first not-clear slot
        a.xor(edx, edx);
        a.Label(ref tLoop);
        a.cmp(rdx, r13);
        a.jae(tNone);
        a.mov(rax, rdx);
        a.shl(rax, 5);
        a.movzx(ecx, __byte_ptr[r14 + rax]);
        a.cmp(ecx, (int)ProbeStatus.Clear);
        a.je(tNext);
        a.cmp(r12, -1);
        a.jne(tKeep);
        a.mov(r12, rdx);
        a.Label(ref tKeep);
        a.test(ecx, ecx);
        a.jnz(tFound);
        a.mov(rcx, __qword_ptr[r14 + rax + 24]);
        a.test(rcx, rcx);
        a.jnz(tFound);
        a.Label(ref tNext);
        a.inc(rdx);
        a.jmp(tLoop);
        a.Label(ref tNone);                               // nobody said inside: report the first silent one
        a.cmp(r12, -1);
        a.je(tOut);
        a.mov(rax, r12);
        a.shl(rax, 5);
        a.xor(ecx, ecx);
        a.Label(ref tFound);
        a.mov(__qword_ptr[rbx + Desc.OutStatus], rcx);
        a.mov(rdx, __qword_ptr[r14 + rax + 16]);
        a.mov(__qword_ptr[rbx + Desc.OutTid], rdx);
        a.mov(rdx, __qword_ptr[r14 + rax + 8]);
        a.mov(__qword_ptr[rbx + Desc.OutDetail], rdx);
        a.Label(ref tOut);
        a.mov(eax, (int)BatchResult.ProbeTimedOut);
        a.jmp(ret);
        a.Label(ref ok);
        a.xor(eax, eax);
        a.Label(ref ret);
        a.PopAll(saved);
        a.ret();

        EmitEnumerate(a, enumerate);
        EmitSendOne(a, sendOne);

        // long nowNs(): CLOCK_MONOTONIC in nanoseconds.
        a.Label(ref nowNs);
        a.mov(eax, Sys.ClockGettime);
        a.mov(edi, 1);
        a.lea(rsi, __[r15 + Ctl.TimeScratch]);
        a.syscall();
        a.mov(rax, __qword_ptr[r15 + Ctl.TimeScratch]);
        a.imul(rax, rax, 1_000_000_000);
        a.add(rax, __qword_ptr[r15 + Ctl.TimeScratch + 8]);
        a.ret();
    }

    // int enumerate(): adds the tids in /proc/self/task (but this thread's) to the slots r14[0..r13),
    // skipping ones already there. 0, ThreadsUnlisted (errno in the desc) or TooManyThreads.
    private static void EmitEnumerate(Assembler a, Label entry)
    {
        ReadOnlySpan<AssemblerRegister64> saved = [rbp, r12];
        var read = a.CreateLabel();
        var entryLoop = a.CreateLabel();
        var digits = a.CreateLabel();
        var parsed = a.CreateLabel();
        var dedupe = a.CreateLabel();
        var add = a.CreateLabel();
        var next = a.CreateLabel();
        var closeOk = a.CreateLabel();
        var readFailed = a.CreateLabel();
        var openFailed = a.CreateLabel();
        var tooMany = a.CreateLabel();

        a.Label(ref entry);
        a.PushAll(saved);
        a.mov(eax, Sys.Openat);
        a.mov(edi, -100);                                 // AT_FDCWD
        a.lea(rsi, __[r15 + Ctl.ProcTaskPath]);
        a.mov(edx, 0x90000);                              // O_RDONLY | O_DIRECTORY | O_CLOEXEC
        a.xor(r10d, r10d);
        a.syscall();
        a.test(rax, rax);
        a.js(openFailed);
        a.mov(r12, rax);
        a.Label(ref read);
        a.mov(eax, Sys.Getdents64);
        a.mov(rdi, r12);
        a.lea(rsi, __[r15 + DirentOffset]);
        a.mov(edx, DirentSize);
        a.syscall();
        a.test(rax, rax);
        a.jz(closeOk);
        a.js(readFailed);
        a.lea(rbp, __[r15 + DirentOffset]);
        a.lea(r9, __[rbp + rax]);
        a.Label(ref entryLoop);
        a.cmp(rbp, r9);
        a.jae(read);
        a.movzx(r10d, __word_ptr[rbp + 16]);              // d_reclen
        a.lea(rsi, __[rbp + 19]);                         // d_name
        a.movzx(eax, __byte_ptr[rsi]);
        a.sub(eax, '0');
        a.cmp(eax, 9);
        a.ja(next);                                       // "." and ".."
        a.xor(edi, edi);
        a.Label(ref digits);
        a.movzx(eax, __byte_ptr[rsi]);
        a.sub(eax, '0');
        a.cmp(eax, 9);
        a.ja(parsed);
        a.imul(rdi, rdi, 10);
        a.add(rdi, rax);
        a.inc(rsi);
        a.jmp(digits);
        a.Label(ref parsed);
        a.cmp(rdi, __qword_ptr[rbx + Desc.SelfTid]);
        a.je(next);
        a.xor(ecx, ecx);
        a.Label(ref dedupe);
        a.cmp(rcx, r13);
        a.jae(add);
        a.mov(rax, rcx);
        a.shl(rax, 5);
        a.cmp(__qword_ptr[r14 + rax + 16], rdi);
        a.je(next);
        a.inc(rcx);
        a.jmp(dedupe);
        a.Label(ref add);
        a.cmp(r13, __qword_ptr[r15 + Ctl.SlotCapacity]);
        a.jae(tooMany);
        a.mov(rax, r13);
        a.shl(rax, 5);
        a.mov(__qword_ptr[r14 + rax], 0);
        a.mov(__qword_ptr[r14 + rax + 8], 0);
        a.mov(__qword_ptr[r14 + rax + 16], rdi);
        a.mov(__qword_ptr[r14 + rax + 24], 0);
        a.inc(r13);
        a.Label(ref next);
        a.add(rbp, r10);
        a.jmp(entryLoop);

        a.Label(ref closeOk);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.xor(eax, eax);
        a.PopAll(saved);
        a.ret();
        a.Label(ref readFailed);
        a.neg(rax);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.mov(eax, (int)BatchResult.ThreadsUnlisted);
        a.PopAll(saved);
        a.ret();
        a.Label(ref openFailed);
        a.neg(rax);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(eax, (int)BatchResult.ThreadsUnlisted);
        a.PopAll(saved);
        a.ret();
        a.Label(ref tooMany);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.mov(eax, (int)BatchResult.TooManyThreads);
        a.PopAll(saved);
        a.ret();
    }

    // void sendOne(rdi = slot index): a new generation for the slot, then rt_tgsigqueueinfo with
    // si_value = gen << 20 | index. A thread that no longer exists counts as clear.
    private static void EmitSendOne(Assembler a, Label entry)
    {
        var done = a.CreateLabel();
        a.Label(ref entry);
        a.mov(rax, __qword_ptr[r15 + Ctl.ProbeGen]);
        a.inc(rax);
        a.mov(__qword_ptr[r15 + Ctl.ProbeGen], rax);
        a.mov(rcx, rdi);
        a.shl(rcx, 5);
        a.lea(r8, __[r14 + rcx]);
        a.mov(rdx, rax);
        a.shl(rdx, 8);
        a.mov(__qword_ptr[r8], rdx);
        a.shl(rax, 20);
        a.or(rax, rdi);
        a.mov(__qword_ptr[r15 + Ctl.SigInfo + Signals.SiValueOffset], rax);
        a.inc(__qword_ptr[r15 + Ctl.ProbesSent]);
        a.mov(rsi, __qword_ptr[r8 + 16]);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.mov(rdx, __qword_ptr[r15 + Ctl.ProbeSignal]);
        a.lea(r10, __[r15 + Ctl.SigInfo]);
        a.mov(eax, Sys.RtTgsigqueueinfo);
        a.syscall();
        a.cmp(rax, -Sys.Esrch);
        a.jne(done);
        a.mov(__byte_ptr[r8], (int)ProbeStatus.Clear);
        a.Label(ref done);
        a.ret();
    }
}
