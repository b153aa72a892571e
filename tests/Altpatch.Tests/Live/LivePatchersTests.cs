using System.Numerics;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Tests.Paravirt;
using Altpatch.Tests.SmpLocks;

namespace Altpatch.Tests.Live;

/// <summary>
/// Every patcher can target the live poker: paravirt backend switches and SMP lock switches are
/// applied while other threads run the sites, and the results stay right throughout.
/// </summary>
[Collection(LiveCollection.Name)]
public class LivePatchersTests
{
    /// <summary>
    /// Runs <paramref name="work"/> on <paramref name="threads"/> threads while <paramref name="patcher"/> runs; returns the
    /// calls made and the first failure seen. The patcher starts only when every worker has made a call: on a loaded
    /// machine a thread may otherwise not be scheduled before the patcher is done, and nothing would run the sites.
    /// </summary>
    private static (long Calls, string? Failure) Hammer(int threads, Func<long, string?> work, Action patcher)
    {
        long calls = 0;
        string? failure = null;
        using var stop = new ManualResetEventSlim();
        using var running = new CountdownEvent(threads);
        var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            long i = t;
            bool first = true;
            while (!stop.IsSet && failure is null)
            {
                var f = work(i++);
                if (f is not null) Interlocked.CompareExchange(ref failure, f, null);
                Interlocked.Increment(ref calls);
                if (first) { running.Signal(); first = false; }
            }
            if (first) running.Signal(); // another worker's failure ended the loop before this one's first call
        }) { IsBackground = true }).ToList();
        workers.ForEach(w => w.Start());
        running.Wait();
        try { patcher(); }
        finally
        {
            stop.Set();
            workers.ForEach(w => w.Join());
        }
        return (calls, failure);
    }

    [Fact]
    public void Paravirt_backend_switches_apply_live_while_threads_call_the_sites()
    {
        using var f = new PvFixture();
        ulong ident = f.Site(ParavirtOps.Ident64, Clobbers.RetReg).Fn;
        ulong mix = f.Site(ParavirtOps.Mix64, Clobbers.Any).Fn;
        ulong popcount = f.Site(ParavirtOps.Popcount, Clobbers.RetReg).Fn;
        f.Cb.Publish();
        var original = f.Text();
        var rt = new ParavirtRuntime(f.Table, f.Cb.ParavirtSites, f.Native, new LivePoker());
        rt.Apply();
        var nativeText = f.Text();

        int switches = 0;
        var (calls, failure) = Hammer(2, i =>
        {
            ulong x = (ulong)i * 0x9E37_79B9_7F4A_7C15UL;
            if (Run.Call64(ident, x) != x) return $"ident({x:x})";
            if (Run.Call64(mix, x) != ParavirtOps.Mix64Reference(x)) return $"mix({x:x})";
            if (Run.Call64(popcount, x) != (ulong)BitOperations.PopCount(x)) return $"popcount({x:x})";
            return null;
        }, () =>
        {
            for (; switches < 200; switches++)
                rt.SwitchTo(switches % 2 == 0 ? f.Hypervisor : f.Native);
        });

        Assert.Null(failure);
        Assert.True(calls > 0);
        Assert.Same(f.Native, rt.Active);
        Assert.Equal(nativeText, f.Text());
        rt.Restore();
        Assert.Equal(original, f.Text());
    }

    [Fact]
    public void Smp_lock_switches_apply_live_while_threads_run_the_locked_instructions()
    {
        using var f = new LockFixture();
        var original = f.Text();
        var registry = new SmpLockRegistry(new LivePoker());
        registry.Add(f.Cb.LockModule("fixture"));
        int switches = 0;
        var (calls, failure) = Hammer(2, _ => { f.Run(100); return null; }, () =>
        {
            for (; switches < 200; switches++)
            {
                if (switches % 2 == 0) registry.SwitchToUp(); else registry.SwitchToSmp();
            }
        });
        Assert.Null(failure);
        Assert.True(calls > 0);
        Assert.Equal(SmpMode.Smp, registry.Mode);
        Assert.Equal(original, f.Text());

        // back on SMP with every F0 in place: concurrent increments are exact again
        f.Reset();
        var (_, after) = Hammer(2, _ => { f.Run(1000); return null; }, () => Thread.Sleep(200));
        Assert.Null(after);
        var v = f.Values;
        Assert.True(v[0] >= 2 * 1000, $"{v[0]} increments: each worker runs count(1000) at least once"); // not vacuous
        Assert.Equal(v[0] * 2, v[1]);
        Assert.Equal(v[0], v[2]);
        Assert.Equal(v[0] * 3, v[3]);
    }
}
