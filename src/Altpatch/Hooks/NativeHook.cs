using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Hooks;

/// <summary>
/// A hook of a native function: calls to <see cref="Target"/> go to <see cref="Detour"/>, which can call the
/// function's original behaviour through <see cref="Original"/>. <see cref="Create"/> prepares everything (the
/// checks, the trampoline, the relay) without writing the target; <see cref="Enable"/> and <see cref="Disable"/>
/// switch it live with the <see cref="LivePoker"/>'s int3 protocol (threads may be running the target meanwhile,
/// even stopped inside its first instructions); <see cref="EnableAll"/> and <see cref="DisableAll"/> switch many in
/// one batch. <see cref="Dispose"/> disables it, restores the target's exact bytes and releases the trampoline and
/// relay once no thread is in the detour, in them or returning into them (<see cref="HookReclaimer"/>, docs/hooks.md).
/// </summary>
/// <remarks>
/// The target is overwritten by a <c>jmp rel32</c> to the hook's relay (near the target), which jumps to the detour
/// through an absolute pointer, so any detour address works. When no page within 2 GiB of the target is free, the
/// jump is the 14-byte <c>jmp qword ptr [rip+0]</c> and the relay's address, to a relay anywhere
/// (<see cref="NativeHookOptions.Jump"/>). Two hooks of one target chain when
/// <see cref="NativeHookOptions.Chain"/> is set: the later one runs first; its <see cref="Original"/> reaches the earlier.
/// </remarks>
public sealed unsafe class NativeHook : IDisposable
{
    /// <summary>The site kind of a hook's poke ("hook site #N of 'native hooks'").</summary>
    public static SiteKind SiteKind { get; } = new("hook");

    private static readonly object Gate = new();
    private static readonly Dictionary<ulong, List<NativeHook>> Placed = [];
    private static int created;

    private readonly Prologue prologue;
    private readonly HookArena.Slot slot;
    private readonly byte[] jump;
    private readonly NativeHook? under;
    private readonly HookReclaimer.Entry entry;
    private readonly nint destination;
    private readonly int index;
    private bool placed, enabled, disposed, released;

    private NativeHook(ulong target, ulong detour, Prologue prologue, HookArena.Slot slot, NativeHook? under, NativeHookOptions options,
                       nint destination, ulong[] points)
    {
        this.destination = destination;
        entry = HookReclaimer.Track(slot, points, under?.entry);
        Target = (nint)target;
        Detour = (nint)detour;
        this.prologue = prologue;
        this.slot = slot;
        this.under = under;
        Options = options;
        jump = prologue.Jump(slot.Relay);
        index = Interlocked.Increment(ref created);
    }

    /// <summary>The hooked function.</summary>
    public nint Target { get; }

    /// <summary>Where calls to the target go while the hook is enabled.</summary>
    public nint Detour { get; }

    /// <summary>
    /// The trampoline: call it like the target to run the function's original behaviour (the instructions the
    /// jump overwrote, moved, then a jump back into the function). Valid from <see cref="Create"/> on.
    /// </summary>
    public nint Original => (nint)slot.Trampoline;

    /// <summary>The relay (near the target unless <see cref="IsAbsoluteJump"/>) that the jump at the target reaches; it counts the call in and jumps to <see cref="Detour"/>.</summary>
    public nint Relay => (nint)slot.Relay;

    /// <summary>The settings the hook was created with.</summary>
    public NativeHookOptions Options { get; }

    /// <summary>True while calls to the target go to the detour.</summary>
    public bool IsEnabled
    {
        get
        {
            lock (Gate) return enabled;
        }
    }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed
    {
        get
        {
            lock (Gate) return disposed;
        }
    }

    /// <summary>Threads counted in by the relay and not yet out (in the detour, in the trampoline it called, or returning).</summary>
    public long InFlight => entry.InFlight;

    /// <summary>
    /// True once the trampoline and relay went back to the arena (after <see cref="Dispose"/>, when no thread was in
    /// the detour, the trampoline or the relay, or returning into them). Free the detour's own code only then.
    /// </summary>
    public bool IsReleased => entry.Released;

    /// <summary>
    /// After <see cref="Dispose"/>: runs the release checks until the hook <see cref="IsReleased"/> or
    /// <paramref name="timeout"/> passes; returns <see cref="IsReleased"/>. Never needed for safety (the release runs
    /// in the background), only to know when the detour's code may be freed.
    /// </summary>
    public bool WaitUntilReleased(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!entry.Released && DateTime.UtcNow < deadline)
        {
            if (HookReclaimer.Sweep(TimeSpan.FromMilliseconds(50)) > 0 && !entry.Released) Thread.Sleep(5);
        }
        return entry.Released;
    }

    /// <summary>Number of bytes of the target the jump overwrites (whole instructions, at least 5; 14 for the absolute jump).</summary>
    public int PatchLength => prologue.Length;

    /// <summary>True when the target's jump is the 14-byte absolute one (<see cref="HookJump"/>), false for <c>jmp rel32</c>.</summary>
    public bool IsAbsoluteJump => prologue.Absolute;

    /// <summary>The target's bytes the hook overwrites, as they were when it was created (restored exactly).</summary>
    public ReadOnlyMemory<byte> OriginalBytes => prologue.Bytes;

    /// <summary>The bytes the hook writes at the target: <c>jmp rel32</c> to the relay (or the absolute jump), <c>int3</c> after it.</summary>
    public ReadOnlyMemory<byte> PatchBytes => jump;

    /// <summary>The moved instructions, as text.</summary>
    public string MovedInstructions => prologue.Text;

    /// <summary>
    /// Prepares a hook of <paramref name="target"/> that sends its calls to <paramref name="detour"/>, writing nothing
    /// at the target: the checks, the trampoline (<see cref="Original"/>) and the relay are done and built here.
    /// Throws <see cref="HookException"/> with the reason for bad input (null, unmapped or non-executable target or
    /// detour, a target in the middle of an instruction), for a prologue that cannot be moved safely, and for a C
    /// library function that the C library calls with every signal blocked (<see cref="NativeHookOptions.AllowSignalBlockedTargets"/>).
    /// </summary>
    public static NativeHook Create(nint target, nint detour, NativeHookOptions? options = null)
    {
        options ??= NativeHookOptions.Default;
        ulong t = (ulong)target, d = (ulong)detour;
        if (t == 0) throw new HookException(0, "the target is null");
        if (d == 0) throw new HookException(t, "the detour is null");
        var code = Readable(t, out string where);
        if (code.IsEmpty) throw new HookException(t, $"the target is not in readable, executable memory: {where}");
        var detourCode = Readable(d, out string detourWhere);
        if (detourCode.IsEmpty) throw new HookException(t, $"the detour 0x{d:x} is not in readable, executable memory: {detourWhere}");
        if (d == t) throw new HookException(t, "the detour is the target itself");
        CodeSymbols.RefuseMidInstruction(t);
        if (!options.AllowSignalBlockedTargets && SignalBlockedTargets.Reason(t) is { } blocked) throw new HookException(t, blocked);

        lock (Gate)
        {
            NativeHook? top = Placed.TryGetValue(t, out var chain) && chain.Count > 0 ? chain[^1] : null;
            if (top is not null && !options.Chain)
                throw new HookException(t, $"the target is already hooked by Altpatch (detour 0x{top.Detour:x}); set NativeHookOptions.Chain to hook it again");
            var (prologue, slot, farFallback) = Place(code, t, options);
            try
            {
                var tramp = prologue.Trampoline(slot.Trampoline, out string error);
                if (tramp is null) throw new HookException(t, farFallback is null ? error : $"{farFallback}, and {error}; nothing written");
                if (tramp.Length > HookArena.TrampolineCapacity)
                    throw new HookException(t, $"the trampoline for {prologue.Text} takes {tramp.Length} bytes, more than the {HookArena.TrampolineCapacity} a slot holds");
                var w = new Span<byte>((void*)slot.Writable, HookArena.SlotSize);
                tramp.CopyTo(w[HookArena.TrampolineOffset..]);
                var (destOffset, relayPoints) = Relays.Write(w, slot, slot.Counter);
                nint destination = slot.Writable + destOffset;
                *(ulong*)destination = d;
                ulong[] points = [.. Relays.Boundaries(tramp, slot.Trampoline), .. relayPoints];
                Array.Sort(points);
                return new NativeHook(t, d, prologue, slot, top, options, destination, points);
            }
            catch
            {
                HookArena.Return(slot);
                throw;
            }
        }
    }

    /// <summary>
    /// The prologue to move and the slot for its trampoline and relay: <c>jmp rel32</c> to a slot within reach, or the
    /// absolute jump to a slot anywhere (<see cref="NativeHookOptions.Jump"/>). <c>farFallback</c> says why the
    /// absolute jump was taken when the rel32 one was wanted, for the messages of what fails after.
    /// </summary>
    private static (Prologue Prologue, HookArena.Slot Slot, string? FarFallback) Place(ReadOnlySpan<byte> code, ulong t, NativeHookOptions options)
    {
        bool absolute = options.Jump == HookJump.Absolute;
        var prologue = Analysed(code, t, options.Chain, absolute);
        if (absolute) return (prologue, HookArena.RentAnywhere(), null);
        if (HookArena.TryRent(t, prologue.Length, out var slot, out string noRoom)) return (prologue, slot, null);
        string why = $"no room for a trampoline within rel32 reach of the target: {noRoom}";
        if (options.Jump == HookJump.Relative) throw new HookException(t, $"{why}; nothing written");
        try
        {
            prologue = Analysed(code, t, options.Chain, absolute: true);
        }
        catch (HookException e)
        {
            throw new HookException(t, $"{why}, and the {Prologue.AbsoluteJumpSize}-byte absolute jump cannot be used: {e.Problem}; nothing written", e);
        }
        return (prologue, HookArena.RentAnywhere(), $"{why}; the {Prologue.AbsoluteJumpSize}-byte absolute jump was tried");
    }

    private static Prologue Analysed(ReadOnlySpan<byte> code, ulong t, bool chain, bool absolute)
    {
        var prologue = Prologue.Analyse(code, t, chain, absolute);
        if (!prologue.StartsWithJump) prologue.RefuseBranchesInto(code);
        return prologue;
    }

    /// <summary><see cref="Create"/> then <see cref="Enable"/>; on a failure to enable, the hook is disposed and the error thrown.</summary>
    public static NativeHook Install(nint target, nint detour, NativeHookOptions? options = null)
    {
        var hook = Create(target, detour, options);
        try
        {
            hook.Enable();
            return hook;
        }
        catch
        {
            hook.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Creates a hook for every (target, detour) pair and enables them all in one live batch; the hooks come back in
    /// the same order. When one cannot be created or the batch fails, those created are disposed, nothing is written
    /// and the error is thrown.
    /// </summary>
    public static IReadOnlyList<NativeHook> InstallAll(IEnumerable<(nint Target, nint Detour)> hooks, NativeHookOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(hooks);
        var list = new List<NativeHook>();
        try
        {
            foreach (var (target, detour) in hooks) list.Add(Create(target, detour, options));
            EnableAll(list);
            return list;
        }
        catch
        {
            foreach (var h in list) h.Dispose();
            throw;
        }
    }

    /// <summary>Switches the hook live: calls to the target go to the detour. Does nothing when enabled.</summary>
    public void Enable() => EnableAll([this]);

    /// <summary>Switches the hook off live: calls to the target run the function again. Does nothing when disabled.</summary>
    public void Disable() => DisableAll([this]);

    /// <summary>
    /// Enables every hook of <paramref name="hooks"/> in one live batch (one int3 round, two core serialisations: docs/live.md).
    /// Throws <see cref="HookException"/> naming the target, with nothing written, when a hook is disposed, two hooks
    /// of the batch share a target, a target no longer holds the bytes its hook was created on, or the batch fails.
    /// </summary>
    public static void EnableAll(IEnumerable<NativeHook> hooks)
    {
        ArgumentNullException.ThrowIfNull(hooks);
        var list = hooks.Distinct().ToList();
        lock (Gate)
        {
            var writes = new List<(NativeHook Hook, Poke Poke)>();
            var targets = new HashSet<ulong>();
            foreach (var h in list)
            {
                ObjectDisposedException.ThrowIf(h.disposed, h);
                if (h.enabled) continue;
                ulong t = (ulong)h.Target;
                if (h.placed) continue; // placed under a later hook: only its relay changes (below)
                if (!targets.Add(t))
                    throw new HookException(t, "two hooks of one batch hook this target: enable them in separate batches (the later one chains onto the earlier)");
                NativeHook? top = Placed.TryGetValue(t, out var chain) && chain.Count > 0 ? chain[^1] : null;
                if (top != h.under)
                    throw new HookException(t, top is null
                        ? "the hook was created on another hook of this target, which is no longer in place; create it again"
                        : $"the target is hooked by another hook (detour 0x{top.Detour:x}) since this one was created; create this one again with NativeHookOptions.Chain");
                var current = new ReadOnlySpan<byte>((void*)t, h.prologue.Length);
                if (!current.SequenceEqual(h.prologue.Bytes))
                    throw new HookException(t, $"the target holds {Convert.ToHexString(current)}, not the {Convert.ToHexString(h.prologue.Bytes)} the hook was created on: someone changed it; nothing written");
                writes.Add((h, new Poke(t, h.prologue.Bytes, h.jump, new SiteRef(SiteKind, h.index, "native hooks"), $"hook -> 0x{h.Detour:x}")));
            }
            foreach (var (h, _) in writes) Relays.Route(h.destination, (ulong)h.Detour); // made visible by the batch's serialisations
            Write(writes.Select(w => w.Poke), list.Count > 0 ? list[0].Options : NativeHookOptions.Default);
            foreach (var (h, _) in writes)
            {
                h.placed = h.enabled = true;
                ulong t = (ulong)h.Target;
                if (!Placed.TryGetValue(t, out var chain)) Placed[t] = chain = [];
                chain.Add(h);
            }
            foreach (var h in list)
                if (h.placed && !h.enabled)
                {
                    Relays.Route(h.destination, (ulong)h.Detour);
                    h.enabled = true;
                }
        }
    }

    /// <summary>
    /// Disables every hook of <paramref name="hooks"/> in one live batch. The target of a hook that is the last of its
    /// chain gets its bytes back (the original bytes, exactly, when no hook remains); a hook that a later hook chains
    /// onto stays in place and its relay goes straight to its trampoline. Throws <see cref="HookException"/> with
    /// nothing written when the batch fails.
    /// </summary>
    public static void DisableAll(IEnumerable<NativeHook> hooks)
    {
        ArgumentNullException.ThrowIfNull(hooks);
        var list = hooks.Distinct().ToList();
        lock (Gate)
        {
            var byTarget = list.Where(h => h.enabled).GroupBy(h => (ulong)h.Target).ToList();
            if (byTarget.Count == 0) return;
            var pokes = new List<Poke>();
            var popped = new List<(ulong Target, int Keep)>();
            foreach (var g in byTarget)
            {
                var chain = Placed[g.Key];
                var off = new HashSet<NativeHook>(g);
                int keep = chain.Count;
                while (keep > 0 && (off.Contains(chain[keep - 1]) || !chain[keep - 1].enabled)) keep--;
                if (keep == chain.Count) continue; // only hooks under others: relays only
                byte[] want = keep == 0 ? chain[0].prologue.Bytes : chain[keep - 1].jump;
                var current = new ReadOnlySpan<byte>((void*)g.Key, want.Length).ToArray();
                var top = chain[^1];
                pokes.Add(new Poke(g.Key, current, want, new SiteRef(SiteKind, top.index, "native hooks"), keep == 0 ? "unhook: original bytes" : $"unhook: back to 0x{chain[keep - 1].Detour:x}"));
                popped.Add((g.Key, keep));
            }
            Write(pokes, list[0].Options);
            foreach (var h in list.Where(h => h.enabled))
            {
                h.enabled = false;
                Relays.Route(h.destination, (ulong)h.Original); // a thread still reaching the relay (or a chained hook's Original) skips the detour
            }
            foreach (var (target, keep) in popped)
            {
                var chain = Placed[target];
                for (int i = keep; i < chain.Count; i++)
                {
                    chain[i].placed = false;
                    if (chain[i].disposed) chain[i].Release();
                }
                chain.RemoveRange(keep, chain.Count - keep);
                if (chain.Count == 0) Placed.Remove(target);
            }
        }
    }

    /// <summary>
    /// Disables the hook (live, exact original bytes when it was the only one) and hands its trampoline and relay to
    /// <see cref="HookReclaimer"/>, which reuses them only once the relay's in-flight count is 0 and the probe finds
    /// no thread in them or returning into them: a thread still in the detour finishes normally, and Dispose never
    /// waits for one. A hook that a later
    /// hook chains onto stays in place (its relay skipping its detour) until that one is removed too.
    /// </summary>
    public void Dispose()
    {
        lock (Gate)
        {
            if (disposed) return;
            if (enabled) DisableAll([this]);
            disposed = true;
            if (!placed) Release();
        }
    }

    private void Release()
    {
        if (released) return;
        released = true;
        HookReclaimer.Retire(entry);
    }

    /// <summary>Writes the pokes in one live batch, remapping library text first when needed.</summary>
    private static void Write(IEnumerable<Poke> pokes, NativeHookOptions options)
    {
        var plan = new PatchPlan(pokes);
        if (plan.IsEmpty) return;
        if (options.ForeignText == ForeignTextMode.Remap)
            foreach (var p in plan) ForeignText.Adopt(p);
        var poker = new LivePoker(new LivePokerOptions
        {
            QuiescenceTimeout = options.QuiescenceTimeout,
            ForeignCode = options.ForeignText == ForeignTextMode.WritableExecutable ? ForeignCodeMode.WritableExecutable : ForeignCodeMode.Refuse,
        });
        try
        {
            poker.Apply(plan);
        }
        catch (AltpatchException e)
        {
            throw new HookException(plan[0].Address, e.Message, e);
        }
    }

    /// <summary>What is readable and executable from <paramref name="address"/> (up to <see cref="Prologue.ScanWindow"/> bytes), or empty with the reason.</summary>
    private static ReadOnlySpan<byte> Readable(ulong address, out string problem)
    {
        problem = "";
        var mem = ExecutableMemory.Owner(address, 1);
        if (mem is not null)
            return new ReadOnlySpan<byte>((void*)address, (int)Math.Min((ulong)Prologue.ScanWindow, mem.Address + (ulong)mem.Size - address));
        var map = MemoryMap.Read();
        if (!map.Covers(address, 1, MapProtection.Read | MapProtection.Execute, out problem)) return [];
        ulong end = address;
        while (end - address < Prologue.ScanWindow && map.TryFind(end, out var r) && (r.Protection & (MapProtection.Read | MapProtection.Execute)) == (MapProtection.Read | MapProtection.Execute))
            end = r.End;
        return new ReadOnlySpan<byte>((void*)address, (int)Math.Min(Prologue.ScanWindow, end - address));
    }

    /// <summary>"hook of 0xTARGET -> 0xDETOUR (enabled)".</summary>
    public override string ToString() => $"hook of 0x{Target:x} -> 0x{Detour:x} ({(IsDisposed ? "disposed" : IsEnabled ? "enabled" : "disabled")})";
}
