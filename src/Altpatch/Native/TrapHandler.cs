using System.Runtime.InteropServices;
using static Altpatch.Native.LiveCode;

namespace Altpatch.Native;

/// <summary>
/// The process-wide SIGTRAP handler of live patching, and the probe signal the live poker uses to ask
/// threads where they are. Both handlers are native code Altpatch assembles itself (no managed code and
/// no libc runs in them) in an allocation that is never patched.
/// <para>
/// The SIGTRAP handler recognises a trap on an <c>int3</c> the live poker placed (the trap's RIP is
/// the site + 1; the site is looked up in a table the poker publishes before its first write) and sends
/// the thread back to the site, where it runs the <c>int3</c> again until the batch ends, then the new
/// code. Every other SIGTRAP goes to the handler that was installed before (the .NET runtime's, a
/// debugger's, a test's): called as an <c>SA_SIGINFO</c> or plain handler; for <c>SIG_DFL</c> the
/// default disposition is restored and the signal raised again; <c>SIG_IGN</c> ignores sent signals and,
/// like the kernel, treats a trap as <c>SIG_DFL</c>.
/// </para>
/// <para>
/// <see cref="Altpatch.Pokers.LivePoker"/> installs the handlers on first use. <see cref="Uninstall"/> restores the
/// previous dispositions after a grace period (every thread has answered a probe, so no trap on an
/// earlier <c>int3</c> is still waiting to be delivered); it refuses while a batch is in flight.
/// </para>
/// </summary>
public static unsafe class TrapHandler
{
    /// <summary>Serialises installation, removal and live batches (the tables are process-wide).</summary>
    internal static readonly object Gate = new();

    private static LiveCode? code;
    private static volatile bool installed;
    private static SigAction previousTrap;
    private static SigAction previousProbe;
    private static int probeSignal;

    /// <summary>True while Altpatch's handlers are installed (never waits for a batch in flight).</summary>
    public static bool IsInstalled => installed;

    /// <summary>The real-time signal the live poker probes threads with (0 when not installed).</summary>
    public static int ProbeSignal => installed ? Volatile.Read(ref probeSignal) : 0;

    /// <summary>Traps on the live poker's <c>int3</c>s that the handler sent back to their site.</summary>
    public static long TrapsHandled => code is { } c ? Volatile.Read(ref c.Control->OurTraps) : 0;

    /// <summary>SIGTRAPs that were not the live poker's and went to the previous handler.</summary>
    public static long TrapsChained => code is { } c ? Volatile.Read(ref c.Control->ChainedTraps) : 0;

    /// <summary>Probe signals sent to threads by live batches and grace periods.</summary>
    public static long ProbesSent => code is { } c ? Volatile.Read(ref c.Control->ProbesSent) : 0;

    /// <summary>Probe signals threads answered (stale ones not counted).</summary>
    public static long ProbesAnswered => code is { } c ? Volatile.Read(ref c.Control->ProbesAnswered) : 0;

    /// <summary>Probe answers "stopped inside a site" (by RIP or a stack word): each held a batch until the thread left.</summary>
    public static long ProbesInside => code is { } c ? Volatile.Read(ref c.Control->InsideAnswers) : 0;

    /// <summary>
    /// Serialisations of every core (<c>membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)</c> calls) made by live
    /// batches and grace periods: two for a batch whose sites' tails change, one when only first bytes change, one more
    /// when the batch has one-byte sites (docs/live.md).
    /// </summary>
    public static long CoreSyncs => code is { } c ? Volatile.Read(ref c.Control->Syncs) : 0;

    /// <summary>The code and tables of the handlers (first use allocates them).</summary>
    internal static LiveCode? Code => code;

    /// <summary>The address range of the handlers' code (RX view), or an empty range before first use.</summary>
    public static (ulong Start, ulong End) CodeRange => code is null ? (0, 0) : (code.Code.Address, code.Code.Address + (ulong)code.Code.Size);

    /// <summary>
    /// Installs the SIGTRAP handler (chained to the current one) and the probe handler. Does nothing when
    /// already installed. <paramref name="signal"/> picks the probe signal (default: SIGRTMAX-2); it
    /// must have no handler yet.
    /// </summary>
    public static void Install(int signal = 0)
    {
        lock (Gate) InstallLocked(signal);
    }

    /// <summary>Installs if needed and returns the native code (called with <see cref="Gate"/> held).</summary>
    internal static LiveCode InstallLocked(int signal = 0)
    {
        if (installed) return code!;
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new TrapHandlerException("live patching needs Linux on x86-64");
        int sigrtmax = Libc.CurrentSigrtmax();
        if (signal == 0) signal = sigrtmax - 2;
        if (signal < 32 || signal > sigrtmax)
            throw new TrapHandlerException($"probe signal {signal} is not a real-time signal (32..{sigrtmax})");

        var c = code ??= LiveCode.Create();
        FillProcessFields(c, signal);

        SigAction oldTrap, oldProbe;
        if (Libc.Sigaction(Signals.SigTrap, null, &oldTrap) != 0) throw NativeException.Last("sigaction(SIGTRAP) query");
        if (Libc.Sigaction(signal, null, &oldProbe) != 0) throw NativeException.Last($"sigaction({signal}) query");
        if (oldProbe.Handler != Signals.Default && oldProbe.Handler != Signals.Ignore && oldProbe.Handler != c.Probe)
            throw new TrapHandlerException($"signal {signal} already has a handler (0x{oldProbe.Handler:x}); pass another real-time signal to TrapHandler.Install");
        if (oldTrap.Handler == c.Trap)
            throw new TrapHandlerException("SIGTRAP already runs Altpatch's handler although it is not installed (was it installed by hand?)");

        // The handler reads the previous disposition: publish it before the handler can run.
        Volatile.Write(ref c.Control->PrevFlags, (ulong)(uint)oldTrap.Flags);
        Volatile.Write(ref c.Control->PrevHandler, oldTrap.Handler);

        var probe = new SigAction { Handler = c.Probe, Flags = Signals.SaSigInfo | Signals.SaRestart };
        if (Libc.Sigaction(signal, &probe, null) != 0) throw NativeException.Last($"sigaction({signal}) install");
        // SA_NODEFER: a trap inside a chained handler (which may run patched code) reaches us again.
        // Not SA_ONSTACK: threads spinning on an int3 stay on their own stack, which the probe can scan.
        var trap = new SigAction { Handler = c.Trap, Flags = Signals.SaSigInfo | Signals.SaRestart | Signals.SaNoDefer, Mask = oldTrap.Mask };
        if (Libc.Sigaction(Signals.SigTrap, &trap, null) != 0)
        {
            var err = NativeException.Last("sigaction(SIGTRAP) install");
            Libc.Sigaction(signal, &oldProbe, null);
            throw err;
        }
        previousTrap = oldTrap;
        previousProbe = oldProbe;
        probeSignal = signal;
        installed = true;
        return c;
    }

    private static void FillProcessFields(LiveCode c, int signal)
    {
        var ctl = c.Control;
        int pid = Libc.Getpid();
        ctl->Pid = pid;
        ctl->ProbeSignal = signal;
        byte* info = ctl->SigInfo;
        new Span<byte>(info, 128).Clear();
        *(int*)info = signal;
        *(int*)(info + Signals.SiCodeOffset) = Signals.SiQueue;
        *(int*)(info + Signals.SiPidOffset) = pid;
        *(uint*)(info + Signals.SiUidOffset) = Libc.Getuid();

        // The main thread's stack: [stack] ends at a fixed top; nothing else is mapped within
        // RLIMIT_STACK below it (the kernel keeps mmap_base that far away).
        ulong top = 0;
        foreach (var r in MemoryMap.Read().Regions)
            if (r.Path == "[stack]") top = r.End;
        ulong* limits = stackalloc ulong[2];
        ulong max = Libc.Getrlimit(Libc.RlimitStack, limits) == 0 ? limits[0] : 8UL << 20;
        ctl->MainTop = top;
        ctl->MainMax = Math.Min(max, 1UL << 30);
        ctl->MaxScan = 256UL << 20;
    }

    /// <summary>
    /// Restores the SIGTRAP and probe-signal dispositions that were in place before <see cref="Install"/>,
    /// after a grace period: every thread answers a probe, so a trap on an earlier <c>int3</c> that the
    /// kernel had not delivered yet has been delivered to Altpatch's handler. The handlers' code stays
    /// mapped (a frame may still return into it). Throws <see cref="TrapHandlerException"/> while a live
    /// batch is in flight, when SIGTRAP's handler was replaced after installation, or when a thread does
    /// not answer within <paramref name="timeout"/> (default 5 s); the handlers then stay installed.
    /// </summary>
    public static void Uninstall(TimeSpan? timeout = null)
    {
        if (!Monitor.TryEnter(Gate))
            throw new TrapHandlerException("cannot uninstall the SIGTRAP handler while a live batch is in flight");
        try
        {
            if (!installed) return;
            var c = code!;
            if (Volatile.Read(ref c.Control->Inflight) != 0)
                throw new TrapHandlerException("cannot uninstall the SIGTRAP handler while a live batch is in flight");
            SigAction current;
            if (Libc.Sigaction(Signals.SigTrap, null, &current) != 0) throw NativeException.Last("sigaction(SIGTRAP) query");
            if (current.Handler != c.Trap)
                throw new TrapHandlerException($"SIGTRAP's handler was replaced (now 0x{current.Handler:x}) after Altpatch installed its own; restore that one first");

            GracePeriod(c, timeout ?? TimeSpan.FromSeconds(5));

            var trap = previousTrap;
            if (Libc.Sigaction(Signals.SigTrap, &trap, null) != 0) throw NativeException.Last("sigaction(SIGTRAP) restore");
            var probe = previousProbe;
            if (Libc.Sigaction(probeSignal, &probe, null) != 0) throw NativeException.Last($"sigaction({probeSignal}) restore");
            installed = false;
        }
        finally { Monitor.Exit(Gate); }
    }

    /// <summary>
    /// Asks every other thread, with the live poker's probe, whether its RIP or any word of its stack equals one of
    /// <paramref name="points"/> (ascending): true once every thread answers clear, false when some thread still does
    /// after <paramref name="timeout"/> (or cannot answer). Installs the handlers if needed. What native hooks use to
    /// know that no thread is in, or will return into, code they are about to release.
    /// </summary>
    public static bool ProbeClear(ReadOnlySpan<ulong> points, TimeSpan timeout)
    {
        if (points.Length > DataLayout.HazardCapacity)
            throw new ArgumentOutOfRangeException(nameof(points), points.Length, $"more than {DataLayout.HazardCapacity} points");
        lock (Gate)
        {
            var c = InstallLocked();
            points.CopyTo(new Span<ulong>(c.Hazards, points.Length));
            c.PublishHazards(points.Length);
            BatchDescriptor desc;
            LiveCode.InitDescriptor(&desc, 0, null, probe: true, timeout);
            var r = c.RunBatch(&desc);
            c.PublishHazards(0);
            return r == BatchResult.Done;
        }
    }

    /// <summary>An empty batch with a probe: returns when every other thread has answered.</summary>
    private static void GracePeriod(LiveCode c, TimeSpan timeout)
    {
        BatchDescriptor desc;
        LiveCode.InitDescriptor(&desc, 0, null, probe: true, timeout);
        c.PublishHazards(0);
        var r = c.RunBatch(&desc);
        if (r == BatchResult.Done) return;
        string errno = Libc.ErrorText((int)desc.OutErrno);
        string why = r switch
        {
            BatchResult.ThreadsUnlisted => $"cannot list this process's threads (/proc/self/task): {errno}",
            BatchResult.TooManyThreads => $"more than {DataLayout.SlotCapacity} threads to probe",
            BatchResult.SyncFailed or BatchResult.LateSyncFailed => $"membarrier(SYNC_CORE) failed: {errno}",
            _ => $"thread {desc.OutTid} did not answer probe signal {probeSignal} within {timeout.TotalSeconds:0.###} s",
        };
        throw new TrapHandlerException($"grace period failed ({r}): {why}; the handlers stay installed");
    }
}
