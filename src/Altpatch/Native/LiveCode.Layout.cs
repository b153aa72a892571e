using System.Numerics;
using System.Runtime.InteropServices;

namespace Altpatch.Native;

// The data the live poker's native routines share with the managed side, as typed structs (like the kernel's
// struct text_poke_loc and its batch vector): the managed side reads and writes their fields, and the emitters
// take every offset from them (Ctl, Desc, Slot, ...: Marshal.OffsetOf and sizeof, never a number typed by hand).
// LiveCodeLayoutTests checks that the offsets are the fields' real addresses and the sizes what the code assumes.
internal sealed unsafe partial class LiveCode
{
    /// <summary>
    /// The control block, at the start of the data mapping: what the handlers and the batch read and write. 8-byte
    /// fields, read and written by the emitted code with single aligned stores, so <c>Volatile</c> on the managed side
    /// is enough.
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ControlBlock
    {
        /// <summary>Trap handlers between reading <see cref="Known"/> and deciding (a rebuilt table waits for 0).</summary>
        public long Readers;
        /// <summary>The table of sites that ever carried an <c>int3</c> (one of two buffers).</summary>
        public KnownTable* Known;
        /// <summary>Generation of the batch in flight, 0 when none.</summary>
        public ulong Inflight;
        /// <summary>Traps sent back to their site.</summary>
        public long OurTraps;
        /// <summary>Traps given to the previous handler.</summary>
        public long ChainedTraps;
        /// <summary>The previous SIGTRAP handler (<c>SIG_DFL</c> 0, <c>SIG_IGN</c> 1, or a function).</summary>
        public nint PrevHandler;
        /// <summary>Its <c>sa_flags</c>.</summary>
        public ulong PrevFlags;
        /// <summary>The interior points of the batch in flight, sorted.</summary>
        public ulong* Hazards;
        /// <summary>How many (0: no probe).</summary>
        public long HazardCount;
        /// <summary>The lowest (a quick bound before the search).</summary>
        public ulong HazardMin;
        /// <summary>The highest.</summary>
        public ulong HazardMax;
        /// <summary>One slot per probed thread.</summary>
        public ProbeSlot* Slots;
        /// <summary>Number of slots.</summary>
        public long SlotCapacity;
        /// <summary>The last probe generation sent.</summary>
        public ulong ProbeGen;
        /// <summary>End of the main thread's <c>[stack]</c>.</summary>
        public ulong MainTop;
        /// <summary><c>RLIMIT_STACK</c>: how far below <see cref="MainTop"/> the main thread's stack may reach.</summary>
        public ulong MainMax;
        /// <summary>[TrapStart, TrapDecided): the trap handler's code in which RDX still points at the trap's ucontext.</summary>
        public ulong TrapStart;
        /// <summary>End of that range.</summary>
        public ulong TrapDecided;
        /// <summary>Probes answered (stale ones not counted).</summary>
        public long ProbesAnswered;
        /// <summary>The largest stack a glibc thread may have below its TCB.</summary>
        public ulong MaxScan;
        /// <summary><c>{ SIG_DFL }</c>, what the trap handler restores before raising SIGTRAP again.</summary>
        public KernelSigAction DflAction;
        /// <summary>A kernel sigset with SIGTRAP.</summary>
        public ulong TrapSet;
        /// <summary>What the batch blocks: every signal but the synchronous ones.</summary>
        public ulong BlockSet;
        /// <summary>The poking thread's mask, restored after the batch.</summary>
        public ulong SavedMask;
        /// <summary><c>clock_gettime</c>'s answer.</summary>
        public Timespec TimeScratch;
        /// <summary>The probe signal.</summary>
        public long ProbeSignal;
        /// <summary>This process's id.</summary>
        public long Pid;
        /// <summary>How long the probe sleeps between checks.</summary>
        public Timespec SleepTime;
        /// <summary>The <c>siginfo_t</c> a probe is sent with (<see cref="Signals"/> has its layout).</summary>
        public fixed byte SigInfo[128];
        /// <summary>Threads not clear yet in the current round.</summary>
        public long Pending;
        /// <summary>Rounds of the probe's wait.</summary>
        public long WaitIterations;
        /// <summary>Probe signals sent.</summary>
        public long ProbesSent;
        /// <summary>Probes answered "inside a site".</summary>
        public long InsideAnswers;
        /// <summary>Serialisations of every core (<c>membarrier(SYNC_CORE)</c> calls) the batch routine made.</summary>
        public long Syncs;
        /// <summary><c>"/proc/self/task"</c>, NUL-terminated.</summary>
        public fixed byte ProcTaskPath[16];
    }

    /// <summary>
    /// The batch (the kernel's <c>text_poke_bp_batch()</c> vector): what the managed poker fills in before calling
    /// <see cref="Batch"/>, and what the routine reports back.
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct BatchDescriptor
    {
        /// <summary>Number of entries.</summary>
        public long Count;
        /// <summary>The entries, ascending by address.</summary>
        public BatchEntry* Entries;
        /// <summary>
        /// Bit 0: step 2, probe the other threads until none is inside a site. Bit 1: serialise every core after step 4
        /// (the batch has one-byte sites, whose old byte no int3 fenced off; docs/live.md).
        /// </summary>
        public long Flags;
        /// <summary>How long step 2 may wait.</summary>
        public long TimeoutNs;
        /// <summary>The poking thread (not probed).</summary>
        public long SelfTid;
        /// <summary>Out: the thread a failed probe names.</summary>
        public long OutTid;
        /// <summary>Out: its interior point (or stack pointer).</summary>
        public ulong OutDetail;
        /// <summary>Out: its <see cref="ProbeStatus"/>.</summary>
        public long OutStatus;
        /// <summary>Out: the errno of a failed system call.</summary>
        public long OutErrno;
        /// <summary>Out: threads probed.</summary>
        public long OutThreads;
        /// <summary>
        /// Profiling (benchmarks only, null otherwise): when set, the routine stores a time-stamp counter reading
        /// (<c>rdtsc</c>) here at each <see cref="BatchStamp"/>.
        /// </summary>
        public ulong* Stamps;
    }

    /// <summary>Where the batch routine reads the time-stamp counter when <see cref="BatchDescriptor.Stamps"/> is set (the index into it).</summary>
    internal enum BatchStamp
    {
        /// <summary>On entry.</summary>
        Entry,
        /// <summary>This thread's signals blocked (<c>rt_sigprocmask</c>).</summary>
        Blocked,
        /// <summary>Step 1's <c>int3</c>s written.</summary>
        Int3Written,
        /// <summary>Step 1's serialisation done.</summary>
        Int3Synced,
        /// <summary>Step 2's probe done (or skipped).</summary>
        Probed,
        /// <summary>Step 3's tails written.</summary>
        TailsWritten,
        /// <summary>Step 3's serialisation done (or skipped).</summary>
        TailsSynced,
        /// <summary>Step 4's first bytes written.</summary>
        FirstWritten,
        /// <summary>Step 4's serialisation done (or skipped).</summary>
        FirstSynced,
        /// <summary>This core serialised.</summary>
        SelfSerialised,
        /// <summary>The signal mask restored, just before returning.</summary>
        Restored,
        /// <summary>How many stamps the routine writes.</summary>
        Count,
    }

    /// <summary>One site of a batch (the kernel's <c>struct text_poke_loc</c>).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct BatchEntry
    {
        /// <summary>Where the site's first byte is written (its RW alias, or the site itself for foreign code).</summary>
        public byte* Rw;
        /// <summary>Source of bytes 1..n-1.</summary>
        public byte* Tail;
        /// <summary>Bytes to copy to <see cref="Rw"/> + 1 (0: the tail does not change).</summary>
        public long TailLength;
        /// <summary>The new first byte (step 4).</summary>
        public byte NewFirst;
        /// <summary>The old first byte (put back when the batch rolls back).</summary>
        public byte OldFirst;
        /// <summary>1: a one-byte site, written once in step 4, without <c>int3</c>.</summary>
        public byte Single;
    }

    /// <summary>
    /// The header of a known-site table: <see cref="Count"/> sorted addresses follow it, then as many generations
    /// (the batch that last touched each site).
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct KnownTable
    {
        /// <summary>Number of sites.</summary>
        public long Count;
        /// <summary>Always 0 (keeps the addresses 16-byte aligned).</summary>
        public long Reserved;

        /// <summary>The addresses of table <paramref name="t"/>.</summary>
        public static ulong* Addresses(KnownTable* t) => (ulong*)(t + 1);

        /// <summary>The generations of table <paramref name="t"/> (after its addresses).</summary>
        public static ulong* Generations(KnownTable* t) => (ulong*)(t + 1) + t->Count;
    }

    /// <summary>One probed thread.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ProbeSlot
    {
        /// <summary><c>generation &lt;&lt; 8 | status</c>: the probe handler's answer, by compare-and-swap.</summary>
        public ulong Word;
        /// <summary>The interior point (or stack pointer) of an answer other than clear.</summary>
        public ulong Detail;
        /// <summary>The thread's id.</summary>
        public long Tid;
        /// <summary>The last answer that was not clear (kept for the report while the slot is probed again).</summary>
        public ulong LastAnswer;
    }

    /// <summary><c>struct timespec</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        /// <summary><c>tv_sec</c>.</summary>
        public long Seconds;
        /// <summary><c>tv_nsec</c>.</summary>
        public long Nanoseconds;
    }

    /// <summary>The kernel's <c>struct sigaction</c> for <c>rt_sigaction</c> (x86-64): handler, flags, restorer, mask.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct KernelSigAction
    {
        /// <summary><c>sa_handler</c>.</summary>
        public nint Handler;
        /// <summary><c>sa_flags</c>.</summary>
        public ulong Flags;
        /// <summary><c>sa_restorer</c>.</summary>
        public nint Restorer;
        /// <summary><c>sa_mask</c>.</summary>
        public ulong Mask;
    }

    /// <summary><c>struct iovec</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Iovec
    {
        /// <summary><c>iov_base</c>.</summary>
        public ulong Base;
        /// <summary><c>iov_len</c>.</summary>
        public ulong Length;
    }

    /// <summary><c>stack_t</c> (what <c>sigaltstack</c> reports).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct StackT
    {
        /// <summary><c>ss_sp</c>.</summary>
        public ulong Sp;
        /// <summary><c>ss_flags</c> (<c>SS_ONSTACK</c> = 1).</summary>
        public int Flags;
        /// <summary><c>ss_size</c>.</summary>
        public ulong Size;
    }

    /// <summary><c>struct linux_dirent64</c> (what <c>getdents64</c> fills the buffer with): its fixed part, the name after it.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct Dirent64
    {
        /// <summary><c>d_ino</c>.</summary>
        public ulong Ino;
        /// <summary><c>d_off</c>.</summary>
        public long Off;
        /// <summary><c>d_reclen</c>: the size of this record.</summary>
        public ushort Reclen;
        /// <summary><c>d_type</c>.</summary>
        public byte Type;
        /// <summary><c>d_name</c>: the NUL-terminated name's first byte.</summary>
        public fixed byte Name[1];
    }

    /// <summary>The probe handler's locals while it scans a stack.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct ProbeScan
    {
        /// <summary><c>process_vm_readv</c>'s local iovec (into <see cref="Buffer"/>).</summary>
        public Iovec Local;
        /// <summary>Its remote iovec (the stack word checked).</summary>
        public Iovec Remote;
        /// <summary>8 bytes read (and <c>ARCH_GET_FS</c>'s answer).</summary>
        public ulong Buffer;
        /// <summary>Where the stack ends.</summary>
        public ulong Top;
        /// <summary>Checked readable up to here.</summary>
        public ulong Checked;
    }

    /// <summary>The probe handler's frame below its saved registers: <c>sigaltstack</c>'s answer first, then the scan's locals over it.</summary>
    [StructLayout(LayoutKind.Explicit)]
    internal struct ProbeFrame
    {
        /// <summary>The alternate signal stack, asked before the scan.</summary>
        [FieldOffset(0)] public StackT AltStack;
        /// <summary>The scan's locals.</summary>
        [FieldOffset(0)] public ProbeScan Scan;
    }

    /// <summary>Results of <see cref="Batch"/>.</summary>
    internal enum BatchResult
    {
        /// <summary>Every step done.</summary>
        Done = 0,
        /// <summary>membarrier failed after step 1: the first bytes are back.</summary>
        SyncFailed = 1,
        /// <summary>Step 2: a thread stayed inside a site: the first bytes are back.</summary>
        ProbeTimedOut = 2,
        /// <summary>Step 2: /proc/self/task could not be read: the first bytes are back.</summary>
        ThreadsUnlisted = 3,
        /// <summary>Step 2: more threads than slots: the first bytes are back.</summary>
        TooManyThreads = 4,
        /// <summary>membarrier failed after step 3 or 4: written, not serialised.</summary>
        LateSyncFailed = 5,
    }

    /// <summary>Probe answers (the low byte of a slot's word).</summary>
    internal enum ProbeStatus
    {
        /// <summary>No answer yet.</summary>
        Pending = 0,
        /// <summary>Not inside any site.</summary>
        Clear = 1,
        /// <summary>Its RIP or a word of its stack is an interior point.</summary>
        Inside = 2,
        /// <summary>On a stack the probe cannot bound.</summary>
        UnknownStack = 3,
    }

    /// <summary>Offsets of <see cref="ControlBlock"/>'s fields, for the emitters.</summary>
    internal static class Ctl
    {
        public static readonly int Readers = Of(nameof(ControlBlock.Readers));
        public static readonly int Known = Of(nameof(ControlBlock.Known));
        public static readonly int Inflight = Of(nameof(ControlBlock.Inflight));
        public static readonly int OurTraps = Of(nameof(ControlBlock.OurTraps));
        public static readonly int ChainedTraps = Of(nameof(ControlBlock.ChainedTraps));
        public static readonly int PrevHandler = Of(nameof(ControlBlock.PrevHandler));
        public static readonly int Hazards = Of(nameof(ControlBlock.Hazards));
        public static readonly int HazardCount = Of(nameof(ControlBlock.HazardCount));
        public static readonly int HazardMin = Of(nameof(ControlBlock.HazardMin));
        public static readonly int HazardMax = Of(nameof(ControlBlock.HazardMax));
        public static readonly int Slots = Of(nameof(ControlBlock.Slots));
        public static readonly int SlotCapacity = Of(nameof(ControlBlock.SlotCapacity));
        public static readonly int ProbeGen = Of(nameof(ControlBlock.ProbeGen));
        public static readonly int MainTop = Of(nameof(ControlBlock.MainTop));
        public static readonly int MainMax = Of(nameof(ControlBlock.MainMax));
        public static readonly int TrapStart = Of(nameof(ControlBlock.TrapStart));
        public static readonly int TrapDecided = Of(nameof(ControlBlock.TrapDecided));
        public static readonly int ProbesAnswered = Of(nameof(ControlBlock.ProbesAnswered));
        public static readonly int MaxScan = Of(nameof(ControlBlock.MaxScan));
        public static readonly int DflAction = Of(nameof(ControlBlock.DflAction));
        public static readonly int TrapSet = Of(nameof(ControlBlock.TrapSet));
        public static readonly int BlockSet = Of(nameof(ControlBlock.BlockSet));
        public static readonly int SavedMask = Of(nameof(ControlBlock.SavedMask));
        public static readonly int TimeScratch = Of(nameof(ControlBlock.TimeScratch));
        public static readonly int ProbeSignal = Of(nameof(ControlBlock.ProbeSignal));
        public static readonly int Pid = Of(nameof(ControlBlock.Pid));
        public static readonly int SleepTime = Of(nameof(ControlBlock.SleepTime));
        public static readonly int SigInfo = Of(nameof(ControlBlock.SigInfo));
        public static readonly int Pending = Of(nameof(ControlBlock.Pending));
        public static readonly int WaitIterations = Of(nameof(ControlBlock.WaitIterations));
        public static readonly int ProbesSent = Of(nameof(ControlBlock.ProbesSent));
        public static readonly int InsideAnswers = Of(nameof(ControlBlock.InsideAnswers));
        public static readonly int Syncs = Of(nameof(ControlBlock.Syncs));
        public static readonly int ProcTaskPath = Of(nameof(ControlBlock.ProcTaskPath));

        private static int Of(string field) => (int)Marshal.OffsetOf<ControlBlock>(field);
    }

    /// <summary>Offsets and sizes of <see cref="BatchDescriptor"/> and <see cref="BatchEntry"/>, for the emitters.</summary>
    internal static class Desc
    {
        public static readonly int Count = Of(nameof(BatchDescriptor.Count));
        public static readonly int Entries = Of(nameof(BatchDescriptor.Entries));
        public static readonly int Flags = Of(nameof(BatchDescriptor.Flags));
        public static readonly int TimeoutNs = Of(nameof(BatchDescriptor.TimeoutNs));
        public static readonly int SelfTid = Of(nameof(BatchDescriptor.SelfTid));
        public static readonly int OutTid = Of(nameof(BatchDescriptor.OutTid));
        public static readonly int OutDetail = Of(nameof(BatchDescriptor.OutDetail));
        public static readonly int OutStatus = Of(nameof(BatchDescriptor.OutStatus));
        public static readonly int OutErrno = Of(nameof(BatchDescriptor.OutErrno));
        public static readonly int OutThreads = Of(nameof(BatchDescriptor.OutThreads));
        public static readonly int Stamps = Of(nameof(BatchDescriptor.Stamps));

        public static readonly int EntrySize = sizeof(BatchEntry);
        public static readonly int Rw = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.Rw));
        public static readonly int Tail = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.Tail));
        public static readonly int TailLength = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.TailLength));
        public static readonly int NewFirst = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.NewFirst));
        public static readonly int OldFirst = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.OldFirst));
        public static readonly int Single = (int)Marshal.OffsetOf<BatchEntry>(nameof(BatchEntry.Single));

        private static int Of(string field) => (int)Marshal.OffsetOf<BatchDescriptor>(field);
    }

    /// <summary>Offsets and size of <see cref="ProbeSlot"/> and of a <see cref="KnownTable"/>'s header, for the emitters.</summary>
    internal static class Slot
    {
        /// <summary>log2(sizeof(ProbeSlot)): slot i is at Slots + (i &lt;&lt; Shift).</summary>
        public static readonly byte Shift = (byte)BitOperations.Log2((uint)sizeof(ProbeSlot));
        public static readonly int Word = Of(nameof(ProbeSlot.Word));
        public static readonly int Detail = Of(nameof(ProbeSlot.Detail));
        public static readonly int Tid = Of(nameof(ProbeSlot.Tid));
        public static readonly int LastAnswer = Of(nameof(ProbeSlot.LastAnswer));

        private static int Of(string field) => (int)Marshal.OffsetOf<ProbeSlot>(field);
    }

    /// <summary>A <see cref="KnownTable"/>: where its count is and where its addresses start, for the emitters.</summary>
    internal static class Known
    {
        public static readonly int Count = (int)Marshal.OffsetOf<KnownTable>(nameof(KnownTable.Count));
        public static readonly int Addresses = sizeof(KnownTable);
    }

    /// <summary><c>tv_nsec</c> in a <see cref="Timespec"/>, for the emitters.</summary>
    internal static class Time
    {
        public static readonly int Nanoseconds = (int)Marshal.OffsetOf<Timespec>(nameof(Timespec.Nanoseconds));
    }

    /// <summary>A <see cref="Dirent64"/>'s length and name, for the emitters.</summary>
    internal static class Dirent
    {
        public static readonly int Reclen = (int)Marshal.OffsetOf<Dirent64>(nameof(Dirent64.Reclen));
        public static readonly int Name = (int)Marshal.OffsetOf<Dirent64>(nameof(Dirent64.Name));
    }

    /// <summary>The probe handler's frame (<see cref="ProbeFrame"/>): offsets from RSP, and its size rounded to keep RSP 16-byte aligned.</summary>
    internal static class Frame
    {
        public static readonly int AltStackFlags = (int)Marshal.OffsetOf<StackT>(nameof(StackT.Flags));
        public static readonly int Local = Scan(nameof(ProbeScan.Local));
        public static readonly int Remote = Scan(nameof(ProbeScan.Remote));
        public static readonly int Buffer = Scan(nameof(ProbeScan.Buffer));
        public static readonly int Top = Scan(nameof(ProbeScan.Top));
        public static readonly int Checked = Scan(nameof(ProbeScan.Checked));
        public static readonly int IovLength = (int)Marshal.OffsetOf<Iovec>(nameof(Iovec.Length));
        public static readonly int Size = (sizeof(ProbeFrame) + 15) & ~15;

        private static int Scan(string field) => (int)Marshal.OffsetOf<ProbeScan>(field);
    }

    /// <summary>
    /// The data mapping, region by region, each aligned: the control block, the <c>getdents64</c> buffer, the probe
    /// slots, the two known-site tables and the interior points. One <c>MAP_NORESERVE</c> mapping, touched only as
    /// far as used.
    /// </summary>
    internal static class DataLayout
    {
        /// <summary>Threads a batch can probe.</summary>
        public const int SlotCapacity = 16384;

        /// <summary>Distinct sites ever live-patched.</summary>
        public const int KnownCapacity = 1 << 20;

        /// <summary>Interior points of one batch.</summary>
        public const int HazardCapacity = 1 << 21;

        /// <summary>Size of the <c>getdents64</c> buffer.</summary>
        public const int DirentSize = 0x8000;

        private const int Page = 0x1000, Block = 0x10000, Table = 0x100000;

        public static readonly int DirentOffset = Align(sizeof(ControlBlock), Page);
        public static readonly int SlotsOffset = Align(DirentOffset + DirentSize, Block);
        public static readonly int KnownAOffset = Align(SlotsOffset + SlotCapacity * sizeof(ProbeSlot), Table);
        public static readonly int KnownBOffset = Align(KnownAOffset + KnownTableSize, Table);
        public static readonly int HazardsOffset = Align(KnownBOffset + KnownTableSize, Table);
        public static readonly int Size = Align(HazardsOffset + HazardCapacity * sizeof(ulong), Table);

        private static int KnownTableSize => sizeof(KnownTable) + KnownCapacity * 2 * sizeof(ulong);

        private static int Align(int n, int to) => (n + to - 1) / to * to;
    }
}
