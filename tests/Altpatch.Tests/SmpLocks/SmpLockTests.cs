using Altpatch.Code;
using Altpatch.Patching;
using Altpatch.Pokers;
using Locks = Altpatch.Patching.SmpLocks;

namespace Altpatch.Tests.SmpLocks;

public class SmpLockTests
{
    private static long[] Expected(long n) => [n, 2 * n, n, 3 * n];

    [Theory]
    [InlineData(UpLockByte.DsPrefix)]
    [InlineData(UpLockByte.Nop)]
    public void Up_form_counts_right_single_threaded_and_smp_restores_every_byte(UpLockByte up)
    {
        using var f = new LockFixture();
        var original = f.Text();
        var reg = new SmpLockRegistry(new ProtectPoker(), new SmpLockOptions { UpByte = up });
        Assert.True(reg.Add(f.Cb.LockModule("m")).IsEmpty); // SMP mode: nothing to do
        Assert.Equal(4, f.Cb.LockSites.Count);

        var toUp = reg.SwitchToUp();
        Assert.Equal(SmpMode.Up, reg.Mode);
        Assert.Equal(4, toUp.Count);
        Assert.All(toUp, p => Assert.Equal(1, p.Length));
        for (int i = 0; i < 4; i++) Assert.Equal((byte)up, f.LockByte(i));
        f.Reset();
        Assert.Equal(999, f.Run(1000)); // xadd returns the value before the last add
        Assert.Equal(Expected(1000), f.Values);
        Assert.True(reg.SwitchToUp().IsEmpty);

        var toSmp = reg.SwitchToSmp();
        Assert.Equal(SmpMode.Smp, reg.Mode);
        Assert.Equal(4, toSmp.Count);
        Assert.Equal(original, f.Text());
        f.Reset();
        Assert.Equal(99, f.Run(100));
        Assert.Equal(Expected(100), f.Values);
    }

    [Fact]
    public void Back_on_smp_several_threads_lose_no_increment()
    {
        using var f = new LockFixture();
        var reg = new SmpLockRegistry(new ProtectPoker());
        reg.Add(f.Cb.LockModule("m"));
        reg.SwitchToUp();
        reg.SwitchToSmp();
        Assert.All(Enumerable.Range(0, 4), i => Assert.Equal(X86.LockPrefix, f.LockByte(i)));

        f.Reset();
        const int Threads = 4;
        const long N = 200_000;
        using var start = new Barrier(Threads);
        var threads = Enumerable.Range(0, Threads).Select(_ => new Thread(() => { start.SignalAndWait(); f.Run(N); })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Equal(Expected(Threads * N), f.Values);
    }

    [Fact]
    public void A_module_added_in_up_mode_is_patched_at_once_and_removal_forgets_it()
    {
        using var a = new LockFixture();
        using var b = new LockFixture();
        var reg = new SmpLockRegistry(new ProtectPoker());
        reg.Add(a.Cb.LockModule("a"));
        reg.SwitchToUp();
        var added = reg.Add(b.Cb.LockModule("b"));
        Assert.Equal(4, added.Count);
        Assert.All(added, p => Assert.Equal("b", p.Site.Table));
        Assert.Equal(0x3E, b.LockByte(0));
        Assert.Equal(["a", "b"], reg.Modules.Select(m => m.Name));

        Assert.True(reg.Remove("b"));
        Assert.False(reg.Remove("b"));
        var toSmp = reg.SwitchToSmp();
        Assert.Equal(4, toSmp.Count); // only module a's sites
        Assert.Equal(X86.LockPrefix, a.LockByte(0));
        Assert.Equal(0x3E, b.LockByte(0)); // b was forgotten while UP: left as it was
        b.Reset();
        b.Run(10);
        Assert.Equal(Expected(10), b.Values);
    }

    [Fact]
    public void Noreplace_smp_gives_empty_plans()
    {
        using var f = new LockFixture();
        var original = f.Text();
        var log = new StringWriter();
        var reg = new SmpLockRegistry(new ProtectPoker(), new SmpLockOptions { NoReplace = true, Log = log });
        Assert.True(reg.Add(f.Cb.LockModule("m")).IsEmpty);
        Assert.True(reg.SwitchToUp().IsEmpty);
        Assert.Equal(SmpMode.Smp, reg.Mode);
        Assert.True(Locks.Plan(f.Cb.LockModule("m"), SmpMode.Up, Native.ProcessMemory.Snapshot(), reg.Options).IsEmpty);
        Assert.Equal(original, f.Text());
        Assert.Contains("noreplace-smp", log.ToString());
    }

    [Fact]
    public void Debug_switch_logs_every_site_before_and_after()
    {
        using var f = new LockFixture();
        var log = new StringWriter();
        var plan = Locks.Plan(f.Cb.LockModule("m"), SmpMode.Up, Native.ProcessMemory.Snapshot(), new SmpLockOptions { Log = log });
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, lines.Length);
        Assert.Contains("lock site #0 of 'm'", lines[0]);
        Assert.Contains("F0 -> 3E", lines[0]);
        Assert.Equal(4, plan.Count);
    }

    [Fact]
    public void Emitted_lock_sites_point_at_F0_prefixes_of_locked_instructions()
    {
        using var f = new LockFixture();
        foreach (ulong site in f.Cb.LockSites)
        {
            var bytes = Run.Read(site, 8);
            Assert.Equal(X86.LockPrefix, bytes[0]);
            var d = Iced.Intel.Decoder.Create(64, new Iced.Intel.ByteArrayCodeReader(bytes), site);
            d.Decode(out var insn);
            Assert.True(insn.HasLockPrefix);
        }
        var m = f.Cb.LockModule("m");
        Assert.Equal(f.Cb.TextStart, m.TextStart);
        Assert.Equal(f.Cb.LockSites, m.Locks);
    }
}
