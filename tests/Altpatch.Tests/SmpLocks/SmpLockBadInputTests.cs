using Altpatch.Code;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using Locks = Altpatch.Patching.SmpLocks;

namespace Altpatch.Tests.SmpLocks;

/// <summary>Bad lock tables are clear errors naming the site or module, and nothing is written.</summary>
public class SmpLockBadInputTests
{
    private static PatchException Fails(LockFixture f, SmpLockModule module, string expected, SmpLockOptions? options = null)
    {
        var before = f.Text();
        var reg = new SmpLockRegistry(new ProtectPoker(), options);
        var e = Assert.Throws<PatchException>(() => reg.Add(module));
        Assert.Contains(expected, e.Message);
        Assert.Contains("lock site #", e.Message);
        Assert.Contains($"of '{module.Name}'", e.Message);
        Assert.Empty(reg.Modules);
        Assert.Equal(before, f.Text());
        // the same through the planner in UP mode: no plan, nothing written
        Assert.Throws<PatchException>(() => new ProtectPoker().Apply(Locks.Plan(module, SmpMode.Up, ProcessMemory.Snapshot(), options)));
        Assert.Equal(before, f.Text());
        return e;
    }

    [Fact]
    public void Lock_site_not_at_F0()
    {
        using var f = new LockFixture();
        var m = f.Cb.LockModule("m");
        var locks = m.Locks.ToList();
        locks[2] += 1; // the opcode after the prefix
        var e = Fails(f, m with { Locks = locks }, "neither a lock prefix (F0) nor the UP byte (3E)");
        Assert.Equal(locks[2], e.Address);
        Assert.Contains("#2", e.Message);
    }

    [Fact]
    public void F0_that_is_not_a_prefix()
    {
        using var f = new LockFixture();
        ulong data = f.Cb.Code(a => a.mov(Iced.Intel.AssemblerRegisters.eax, 0x1122_33F0)); // B8 F0 33 22 11
        f.Cb.Publish();
        var m = f.Cb.LockModule("m");
        Fails(f, m with { Locks = [.. m.Locks, data + 1] }, "does not prefix a lockable instruction");
    }

    [Fact]
    public void Up_byte_other_than_the_one_chosen()
    {
        using var f = new LockFixture();
        var reg = new SmpLockRegistry(new ProtectPoker());
        reg.Add(f.Cb.LockModule("m"));
        reg.SwitchToUp(); // 3E now
        Fails(f, f.Cb.LockModule("other") with { Name = "m2" }, "holds 0x3E, neither a lock prefix (F0) nor the UP byte (90)", new SmpLockOptions { UpByte = UpLockByte.Nop });
        reg.SwitchToSmp();
    }

    [Fact]
    public void Site_outside_its_module()
    {
        using var f = new LockFixture();
        var m = f.Cb.LockModule("m");
        Fails(f, m with { TextStart = m.Locks[1] + 1 }, "is outside the module's text");
    }

    [Fact]
    public void Module_registered_twice()
    {
        using var f = new LockFixture();
        using var g = new LockFixture();
        var reg = new SmpLockRegistry(new ProtectPoker());
        reg.Add(f.Cb.LockModule("m"));
        var e = Assert.Throws<SmpLockException>(() => reg.Add(g.Cb.LockModule("m")));
        Assert.Equal("lock module 'm': is already registered", e.Message);
        var overlap = Assert.Throws<SmpLockException>(() => reg.Add(f.Cb.LockModule("m-again")));
        Assert.Contains("overlaps module 'm'", overlap.Message);
        Assert.Single(reg.Modules);
        reg.SwitchToUp();
        Assert.Equal(0x3E, f.LockByte(0));
        Assert.Equal(X86.LockPrefix, g.LockByte(0)); // never registered: untouched
        reg.SwitchToSmp();
    }

    [Fact]
    public void Same_site_twice_in_a_table()
    {
        using var f = new LockFixture();
        var m = f.Cb.LockModule("m");
        var before = f.Text();
        var e = Assert.Throws<PatchException>(() => Locks.Plan(m with { Locks = [.. m.Locks, m.Locks[0]] }, SmpMode.Up, ProcessMemory.Snapshot()));
        Assert.Contains("overlaps lock site", e.Message);
        Assert.Equal(before, f.Text());
    }
}
