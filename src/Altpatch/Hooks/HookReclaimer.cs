using Altpatch.Native;

namespace Altpatch.Hooks;

/// <summary>
/// Gives the slots (trampoline + relay) of removed hooks back to the arena once no thread can be in them or come
/// back to them: a thread may still be inside the detour (and call <see cref="NativeHook.Original"/>), inside the
/// trampoline or the relay, or hold a return address into them. A slot is released when, in this order, its relay's
/// in-flight counter is 0 (no thread between the relay and the exit stub: in the detour, in the trampoline it called
/// or tail-jumped to, or returning), the probe finds no thread whose RIP or stack word is an instruction boundary of
/// the trampoline or the relay (a thread that took the target's jump but is not counted yet, a return address into
/// the trampoline), and the counter is still 0; and when no hook chained onto it is still alive (its trampoline jumps
/// into this relay). Checks run on a background timer, so <see cref="NativeHook.Dispose"/> never waits: a thread that
/// stays in a detour only delays the release. A thread that leaves a detour by <c>longjmp</c> or an exception never
/// counts out, and the slot is then kept for good.
/// </summary>
internal static class HookReclaimer
{
    private static readonly object Gate = new();
    private static readonly List<Entry> Pending = [];
    private static Timer? timer;

    /// <summary>A hook's slot, what it runs and who depends on it.</summary>
    internal sealed unsafe class Entry(HookArena.Slot slot, ulong[] points, Entry? under)
    {
        public HookArena.Slot Slot { get; } = slot;
        public ulong[] Points { get; } = points;
        public Entry? Under { get; } = under;
        public int Keepers { get; set; }
        public bool Released { get; set; }
        public long InFlight => Volatile.Read(ref *Slot.Counter);
    }

    /// <summary>Slots waiting for their release.</summary>
    public static int Waiting
    {
        get
        {
            lock (Gate) return Pending.Count;
        }
    }

    /// <summary>Slots released so far.</summary>
    public static long Released { get; private set; }

    /// <summary>An entry for a new hook; a hook chained onto <paramref name="under"/> keeps it alive.</summary>
    public static Entry Track(HookArena.Slot slot, ulong[] points, Entry? under)
    {
        lock (Gate)
        {
            if (under is not null) under.Keepers++;
            return new Entry(slot, points, under);
        }
    }

    /// <summary>Queues a removed hook's slot for release and tries at once (without waiting on threads).</summary>
    public static void Retire(Entry entry)
    {
        lock (Gate)
        {
            Pending.Add(entry);
            timer ??= new Timer(_ => Sweep(TimeSpan.FromMilliseconds(20)), null, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50));
        }
    }

    /// <summary>Releases every pending slot that is safe to release now; returns how many remain. Probes wait at most <paramref name="probeTimeout"/>.</summary>
    public static int Sweep(TimeSpan probeTimeout)
    {
        lock (Gate)
        {
            bool progress = true;
            while (progress)
            {
                progress = false;
                for (int i = Pending.Count - 1; i >= 0; i--)
                {
                    var e = Pending[i];
                    if (e.Keepers > 0 || e.InFlight != 0) continue;
                    if (!TrapHandler.ProbeClear(e.Points, probeTimeout) || e.InFlight != 0) continue;
                    HookArena.Return(e.Slot);
                    e.Released = true;
                    Released++;
                    Pending.RemoveAt(i);
                    if (e.Under is not null) e.Under.Keepers--;
                    progress = true;
                }
            }
            if (Pending.Count == 0 && timer is not null)
            {
                timer.Dispose();
                timer = null;
            }
            return Pending.Count;
        }
    }
}
