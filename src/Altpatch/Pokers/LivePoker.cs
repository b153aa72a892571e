using System.Runtime.InteropServices;
using Altpatch.Code;
using Altpatch.Native;
using Altpatch.Text;
using static Altpatch.Native.LiveCode;

namespace Altpatch.Pokers;

/// <summary>What the live poker does with sites in memory Altpatch did not allocate.</summary>
public enum ForeignCodeMode
{
    /// <summary>
    /// Refuse them (the default). Only <see cref="ExecutableMemory"/> has a writable alias, so only it
    /// can be written while it runs without a page that is writable and executable at once.
    /// </summary>
    Refuse,

    /// <summary>
    /// Make their pages read-write-execute (<c>mprotect</c>) for the duration of the batch and restore
    /// their protection afterwards: the non-W^X fallback. Threads keep running the pages meanwhile;
    /// the int3 protocol still protects them. A page is writable and executable during the batch.
    /// </summary>
    WritableExecutable,
}

/// <summary>Settings of a <see cref="LivePoker"/>.</summary>
public sealed record LivePokerOptions
{
    /// <summary>The defaults.</summary>
    public static LivePokerOptions Default { get; } = new();

    /// <summary>
    /// How long a batch waits for threads to leave the inside of the sites it rewrites before it gives
    /// up, restores the first bytes and throws (default 5 s). Only batches whose old code has interior
    /// points wait (see <see cref="LiveBatchReport.InteriorPoints"/>).
    /// </summary>
    public TimeSpan QuiescenceTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Sites outside <see cref="ExecutableMemory"/>: refused by default.</summary>
    public ForeignCodeMode ForeignCode { get; init; } = ForeignCodeMode.Refuse;
}

/// <summary>What the last batch of a <see cref="LivePoker"/> did.</summary>
/// <param name="Sites">Sites written.</param>
/// <param name="InteriorPoints">Instruction boundaries of the old code inside the sites where a thread could not continue into the new code; 0 means no probe was needed.</param>
/// <param name="ThreadsProbed">Threads asked where they were (0 without interior points).</param>
/// <param name="ProbeSignals">Probe signals sent (a thread found inside a site is asked again).</param>
public readonly record struct LiveBatchReport(int Sites, int InteriorPoints, int ThreadsProbed, long ProbeSignals);

/// <summary>
/// Writes a plan into code that other threads may be running, with the Linux kernel's
/// <c>text_poke_bp</c> batch protocol: after validating the whole plan, the steps of <c>docs/live.md</c>,
/// <list type="number">
/// <item>an <c>int3</c> over the first byte of every site, then every core serialised
/// (<c>membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)</c>); a thread reaching a site traps, and
/// the <see cref="TrapHandler"/> sends it back to the site until the batch ends;</item>
/// <item>when the old code of a site has interior points (more than one instruction), every other
/// thread is probed until none is stopped inside a site, by its RIP or a return address or saved
/// context on its stack: the kernel only patches single instructions this way, user code may be
/// preempted anywhere;</item>
/// <item>bytes 1..n-1 of every site, serialise;</item>
/// <item>every first byte; serialise only when the batch has one-byte sites (a late trap on an int3 is sent back to
/// the site, which then holds the new code: docs/live.md).</item>
/// </list>
/// One-byte sites get no <c>int3</c>: they are written once in step 4 (an aligned byte store is atomic).
/// The write runs in native code Altpatch emitted, with this thread's signals blocked, calling no libc
/// and no managed code: nothing it runs can be a site of the plan. Sites in <see cref="ExecutableMemory"/>
/// are written through its RW alias, so no page is ever writable and executable. The poker refuses
/// sites in its own code and tables, and (by default) sites in memory Altpatch did not allocate.
/// Throws <see cref="PatchException"/> naming the site, with nothing written, for a stale plan, a
/// refused site, a kernel without core-serialising membarrier, or a thread that stays inside a site
/// longer than <see cref="LivePokerOptions.QuiescenceTimeout"/>.
/// </summary>
/// <remarks>
/// Sites must be entered at their first byte: no code outside a site may jump into its middle.
/// Batches are serialised process-wide.
/// </remarks>
public sealed unsafe class LivePoker : ITextPoker
{
    private static byte* buffer;
    private static nuint bufferSize;
    // Per-batch scratch, reused (batches hold TrapHandler.Gate): where each site is written, and the sites that get
    // an int3 or whose new first byte is one.
    private static nint[] aliasBuffer = [];
    private static readonly List<ulong> Trappable = [];
    private static readonly List<ulong> Untrappable = [];

    /// <summary>Creates a live poker.</summary>
    public LivePoker(LivePokerOptions? options = null) => Options = options ?? LivePokerOptions.Default;

    /// <summary>The settings.</summary>
    public LivePokerOptions Options { get; }

    /// <summary>What the last <see cref="Apply"/> of this poker did.</summary>
    public LiveBatchReport LastBatch { get; private set; }

    /// <summary>Test seam: returns why core-serialising membarrier is unavailable, or null when it is available.</summary>
    internal Func<string?>? SyncCoreCheck { get; set; }

    /// <summary>
    /// Test seam: false skips the probe for threads stopped inside sites, leaving exactly the kernel's
    /// <c>text_poke_bp</c> protocol, which is only right for single-instruction sites. The torture's
    /// control uses it to show what the probe is for.
    /// </summary>
    internal bool ProbeInteriorPoints { get; set; } = true;

    /// <summary>
    /// Profiling seam (benchmarks only; null otherwise): when set, <see cref="Apply"/> stores time-stamp counter
    /// readings here, at the <see cref="ApplyStamp"/> indices, and the batch routine its own from
    /// <see cref="ApplyStamp.Native"/> on (<see cref="BatchStamp"/>). At least <see cref="ApplyStamp.Size"/> entries.
    /// </summary>
    internal ulong* ProfileStamps { get; set; }

    /// <summary>Where <see cref="Apply"/> reads the time-stamp counter when <see cref="ProfileStamps"/> is set.</summary>
    internal enum ApplyStamp
    {
        /// <summary>The gate taken and the handlers installed.</summary>
        Locked,
        /// <summary>The plan validated (own code, registry or maps, old bytes).</summary>
        Validated,
        /// <summary>Interior points found, the known-site table and hazards published.</summary>
        Prepared,
        /// <summary>The descriptor and entries built: the batch routine is called next.</summary>
        Described,
        /// <summary>The batch routine returned and the report is made.</summary>
        Returned,
        /// <summary>The batch routine's own stamps start here.</summary>
        Native = 8,
        /// <summary>Entries <see cref="ProfileStamps"/> must have.</summary>
        Size = Native + BatchStamp.Count,
    }

    private void Stamp(LiveCode live, ApplyStamp k)
    {
        if (ProfileStamps != null) ProfileStamps[(int)k] = live.ReadTsc();
    }

    private static string? DefaultSyncCoreCheck() => CoreSync.IsAllCoresSyncAvailable ? null : CoreSync.UnavailableReason;

    /// <inheritdoc />
    public void Apply(PatchPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.IsEmpty) return;
        var pokes = plan.AsSpan();
        string? noSync = (SyncCoreCheck ?? DefaultSyncCoreCheck)();
        if (noSync is not null)
            throw new PatchException(pokes[0].Site, pokes[0].Address,
                $"live patching needs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) to serialise the other cores, and {noSync}; nothing written");

        using var lease = MemoryLease.For(plan);
        lock (TrapHandler.Gate)
        {
            var live = TrapHandler.InstallLocked();
            Stamp(live, ApplyStamp.Locked);
            RefuseOwnCode(plan, live);
            if (aliasBuffer.Length < pokes.Length) aliasBuffer = new nint[Math.Max(pokes.Length, aliasBuffer.Length * 2)];
            var aliases = aliasBuffer.AsSpan(0, pokes.Length);
            var map = PlanValidation.Validate(plan, aliases);
            Stamp(live, ApplyStamp.Validated);
            List<PageProtection.PageRun>? opened = null;
            try
            {
                if (map is not null) opened = OpenForeign(plan, aliases, map);
                Write(plan, aliases, live);
            }
            finally
            {
                if (opened is not null) PageProtection.Restore(opened, opened.Count);
            }
        }
    }

    private static void RefuseOwnCode(PatchPlan plan, LiveCode live)
    {
        const ulong Page = 4096;
        Span<(ulong Start, ulong End, string What)> own =
        [
            (live.Code.Address, live.Code.Address + (ulong)live.Code.Size, "SIGTRAP and probe handlers and batch routine"),
            ((ulong)live.Code.WritableAddress, (ulong)live.Code.WritableAddress + (ulong)live.Code.Size, "code (its writable alias)"),
            ((ulong)live.Data, (ulong)live.Data + (ulong)DataLayout.Size, "site tables"),
            ((ulong)buffer, (ulong)buffer + bufferSize, "batch buffer"),
        ];
        foreach (var p in plan.AsSpan())
        {
            ulong first = p.Address & ~(Page - 1), last = (p.End + Page - 1) & ~(Page - 1);
            foreach (var (start, end, what) in own)
                if (first < end && start < last)
                    throw new PatchException(p.Site, p.Address,
                        $"lies in a page of the live poker's own {what} (0x{start:x}-0x{end:x}): the poker never patches the code it patches with");
        }
    }

    private List<PageProtection.PageRun> OpenForeign(PatchPlan plan, Span<nint> aliases, MemoryMap map)
    {
        var pokes = plan.AsSpan();
        var foreign = new List<Poke>();
        for (int i = 0; i < pokes.Length; i++)
        {
            if (aliases[i] != 0) continue;
            if (Options.ForeignCode == ForeignCodeMode.Refuse)
                throw new PatchException(pokes[i].Site, pokes[i].Address,
                    "is not in memory Altpatch allocated (ExecutableMemory), which alone has a writable alias: writing it live would need a writable and executable page; set LivePokerOptions.ForeignCode = WritableExecutable to allow that (not W^X); nothing written");
            foreign.Add(pokes[i]);
            aliases[i] = (nint)pokes[i].Address;
        }
        var runs = PageProtection.Runs(foreign, map);
        PageProtection.Open(runs, Libc.ProtRead | Libc.ProtWrite | Libc.ProtExec);
        return runs;
    }

    private void Write(PatchPlan plan, Span<nint> aliases, LiveCode live)
    {
        var pokes = plan.AsSpan();
        // Interior points (sorted: pokes ascend and do not overlap) and the sites that get an int3.
        var trappable = Trappable;
        var untrappable = Untrappable;
        trappable.Clear();
        untrappable.Clear();
        ulong* hazards = live.Hazards;
        int hazardCount = 0;
        long tailBytes = 0;
        // Plans repeat one patch over many sites: the points' offsets depend only on the bytes, and the
        // site before usually had the same ones (no cache lookup then).
        ReadOnlySpan<byte> lastOld = [], lastNew = [];
        ulong[] offsets = [];
        foreach (var p in pokes)
        {
            if (p.Length == 1) continue;
            ReadOnlySpan<byte> oldBytes = p.Old.Span, newBytes = p.New.Span;
            (newBytes[0] == X86.Int3 ? untrappable : trappable).Add(p.Address);
            if (!oldBytes.SequenceEqual(lastOld) || !newBytes.SequenceEqual(lastNew))
            {
                offsets = InteriorPoints.Offsets(p.Old, p.New);
                lastOld = oldBytes;
                lastNew = newBytes;
            }
            if (hazardCount + offsets.Length > DataLayout.HazardCapacity)
                throw new PatchException(p.Site, p.Address, $"the batch has more than {DataLayout.HazardCapacity} interior points; split the plan");
            foreach (ulong offset in offsets) hazards[hazardCount++] = p.Address + offset;
            tailBytes += p.Length - 1;
        }
        ulong gen = live.NextGeneration();
        if (!live.PrepareBatch(CollectionsMarshal.AsSpan(trappable), CollectionsMarshal.AsSpan(untrappable), gen))
            throw new PatchException(pokes[0].Site, pokes[0].Address, $"the live poker already tracks {DataLayout.KnownCapacity} distinct sites; nothing written");
        live.PublishHazards(hazardCount);
        Stamp(live, ApplyStamp.Prepared);

        // One buffer: the descriptor, the entries (the kernel's text_poke_loc vector), then the new tails.
        var desc = (BatchDescriptor*)Buffer((nuint)(sizeof(BatchDescriptor) + pokes.Length * sizeof(BatchEntry) + tailBytes));
        var entries = (BatchEntry*)(desc + 1);
        byte* tails = (byte*)(entries + pokes.Length);
        bool oneByte = false;
        for (int i = 0; i < pokes.Length; i++)
        {
            var p = pokes[i];
            BatchEntry* e = entries + i;
            *e = new BatchEntry { Rw = (byte*)aliases[i], NewFirst = p.New.Span[0], OldFirst = p.Old.Span[0] };
            if (p.Length == 1) { e->Single = 1; oneByte = true; continue; }
            var newTail = p.New.Span[1..];
            if (!newTail.SequenceEqual(p.Old.Span[1..]))
            {
                newTail.CopyTo(new Span<byte>(tails, newTail.Length));
                e->Tail = tails;
                e->TailLength = newTail.Length;
                tails += newTail.Length;
            }
        }
        bool probe = hazardCount > 0 && ProbeInteriorPoints;
        LiveCode.InitDescriptor(desc, pokes.Length, entries, probe, Options.QuiescenceTimeout, finalSync: oneByte);
        if (ProfileStamps != null) desc->Stamps = ProfileStamps + (int)ApplyStamp.Native;
        Stamp(live, ApplyStamp.Described);

        long probesBefore = TrapHandler.ProbesSent;
        Volatile.Write(ref live.Control->Inflight, gen);
        BatchResult result;
        try { result = live.RunBatch(desc); }
        finally { Volatile.Write(ref live.Control->Inflight, 0UL); }
        LastBatch = new LiveBatchReport(pokes.Length, hazardCount, probe ? (int)desc->OutThreads : 0, TrapHandler.ProbesSent - probesBefore);
        Stamp(live, ApplyStamp.Returned);
        if (result != BatchResult.Done) throw Failure(plan, result, desc);
    }

    private PatchException Failure(PatchPlan plan, BatchResult result, BatchDescriptor* desc)
    {
        var first = plan[0];
        long errno = desc->OutErrno;
        switch (result)
        {
            case BatchResult.SyncFailed:
                return new PatchException(first.Site, first.Address, $"membarrier(SYNC_CORE) failed after the int3 round: {Libc.ErrorText((int)errno)}; nothing written (the first bytes are back)");
            case BatchResult.ThreadsUnlisted:
                return new PatchException(first.Site, first.Address, $"cannot list this process's threads (/proc/self/task): {Libc.ErrorText((int)errno)}; nothing written");
            case BatchResult.TooManyThreads:
                return new PatchException(first.Site, first.Address, $"more than {DataLayout.SlotCapacity} threads to probe; nothing written");
            case BatchResult.LateSyncFailed:
                return new PatchException(first.Site, first.Address, $"the plan was written but membarrier(SYNC_CORE) failed: {Libc.ErrorText((int)errno)}; other cores may still run the old bytes");
        }
        long tid = desc->OutTid;
        string thread = ThreadName(tid);
        ulong detail = desc->OutDetail;
        var status = (ProbeStatus)desc->OutStatus;
        var site = first;
        foreach (var p in plan.AsSpan())
            if (detail >= p.Address && detail < p.End) site = p;
        string what = status switch
        {
            ProbeStatus.Inside => $"thread {thread} is stopped inside the site: its RIP or a word on its stack (a return address, a saved context) is 0x{detail:x}, an instruction boundary of the old code at +{detail - site.Address} where the new bytes differ",
            ProbeStatus.UnknownStack => $"thread {thread} runs on a stack the probe cannot bound (rsp 0x{detail:x}: an alternate signal stack, or not a thread stack glibc made)",
            _ => $"thread {thread} did not answer probe signal {TrapHandler.ProbeSignal} (does it block the signal?)",
        };
        return new PatchException(site.Site, site.Address,
            $"{what}, for longer than {Options.QuiescenceTimeout.TotalSeconds:0.###} s; nothing written (the first bytes are back)");
    }

    /// <summary>"1234 ('name')" from /proc/self/task/TID/comm, or just the id.</summary>
    private static string ThreadName(long tid)
    {
        try { return $"{tid} ('{File.ReadAllText($"/proc/self/task/{tid}/comm").Trim()}')"; }
        catch (IOException) { return tid.ToString(System.Globalization.CultureInfo.InvariantCulture); }
        catch (UnauthorizedAccessException) { return tid.ToString(System.Globalization.CultureInfo.InvariantCulture); }
    }

    private static byte* Buffer(nuint size)
    {
        if (size > bufferSize)
        {
            nuint grown = Math.Max(size, Math.Max(bufferSize * 2, 4096));
            buffer = (byte*)NativeMemory.Realloc(buffer, grown);
            bufferSize = grown;
        }
        return buffer;
    }
}
