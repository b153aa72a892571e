using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Iced.Intel.AssemblerRegisters;
using Pv = Altpatch.Patching.Paravirt;

namespace Altpatch.Tests.Paravirt;

/// <summary>Every kind of bad paravirt input is a clear error naming the site, and memory stays as it was.</summary>
public class ParavirtBadInputTests
{
    private static PvFixture Module()
    {
        var f = new PvFixture();
        f.Site(ParavirtOps.Ident64, Clobbers.RetReg);
        f.Site(ParavirtOps.Mix64, Clobbers.Any);
        f.Cb.Publish();
        return f;
    }

    private static PatchException Fails(PvFixture f, IReadOnlyList<ParavirtSite> sites, ParavirtBackend backend, string expected)
    {
        var before = f.Text();
        var e = Assert.Throws<PatchException>(() => new ProtectPoker().Apply(
            Pv.Plan(sites, backend, ProcessMemory.Snapshot(), new ParavirtOptions { TableName = "bad" })));
        Assert.Contains(expected, e.Message);
        Assert.Contains("paravirt site #", e.Message);
        Assert.Contains("of 'bad'", e.Message);
        Assert.Equal(SiteKind.Paravirt, e.Site.Kind);
        Assert.Equal(before, f.Text());
        return e;
    }

    [Fact]
    public void Unknown_op_type()
    {
        using var f = Module();
        var sites = f.Cb.ParavirtSites.ToList();
        sites[1] = sites[1] with { Type = 42 };
        var e = Fails(f, sites, f.Native, "unknown op type 42: backend 'native' has op types 0..7");
        Assert.Equal(sites[1].Address, e.Address);
        Assert.Contains("#1", e.Message);
    }

    [Fact]
    public void Site_shorter_than_an_indirect_call()
    {
        using var f = Module();
        var sites = f.Cb.ParavirtSites.ToList();
        sites[0] = sites[0] with { Length = 5, Original = sites[0].Original[..5] };
        Fails(f, sites, f.Native, "length 5 is shorter than an indirect call through the ops table (6 bytes)");
    }

    private sealed class GreedyBackend(ParavirtBackend inner) : ParavirtBackend("greedy", Enumerable.Range(0, inner.OpCount).Select(inner.Implementation).ToArray())
    {
        public override int Patch(int type, Clobbers clobbers, Span<byte> buffer, ulong address, int length)
        {
            buffer[..(length + 1)].Fill(0x90);
            return length + 1;
        }
    }

    [Fact]
    public void Backend_that_uses_more_bytes_than_the_site_has()
    {
        using var f = Module();
        Fails(f, f.Cb.ParavirtSites, new GreedyBackend(f.Native), "backend 'greedy' used 7 bytes for op 3 (ident_64), but the site has 6");
    }

    [Fact]
    public void Memory_changed_behind_the_planners_back()
    {
        using var f = Module();
        var site = f.Cb.ParavirtSites[1];
        f.Cb.Memory.Writable[(int)(site.Address - f.Cb.Memory.Address)] = 0xCC;
        Fails(f, f.Cb.ParavirtSites, f.Native, "neither the recorded original");
    }

    [Fact]
    public void Overlapping_sites()
    {
        using var f = Module();
        var sites = f.Cb.ParavirtSites.ToList();
        sites.Add(sites[0] with { Address = sites[0].Address + 3, Original = Run.Read(sites[0].Address + 3, 6) });
        Fails(f, sites, f.Native, "overlaps paravirt site #0");
    }

    [Fact]
    public void Original_bytes_of_the_wrong_length()
    {
        using var f = Module();
        var sites = f.Cb.ParavirtSites.ToList();
        sites[0] = sites[0] with { Original = new byte[7] };
        Fails(f, sites, f.Native, "7 original bytes recorded for a 6-byte site");
    }

    [Fact]
    public void A_builder_without_an_ops_table_and_an_unlockable_instruction_are_refused()
    {
        using var cb = new Emit.CodeBuilder();
        Assert.Throws<InvalidOperationException>(() => cb.ParavirtCall(0, Clobbers.Any));
        var table = cb.CreateOpsTable(2);
        Assert.Throws<ArgumentOutOfRangeException>(() => cb.ParavirtCall(2, Clobbers.Any));
        Assert.Throws<ArgumentOutOfRangeException>(() => cb.ParavirtCall(0, Clobbers.Any, length: 5));
        Assert.Throws<ArgumentException>(() => cb.Lock(a => a.add(eax, ebx))); // a register destination cannot be locked
        Assert.Empty(cb.LockSites);
        Assert.Empty(cb.ParavirtSites);
        Assert.Equal(cb.TextStart, cb.Cursor);
        Assert.True(table.IsInReach(cb.TextStart, cb.TextEnd));
    }
}
