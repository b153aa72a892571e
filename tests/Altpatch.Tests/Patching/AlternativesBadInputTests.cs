using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Patching;

/// <summary>Every kind of bad site is a clear error naming the site, and memory stays as it was.</summary>
public class AlternativesBadInputTests
{
    private const CpuFeature F = CpuFeature.Popcnt;
    private static readonly CpuFeatures Cpu = CpuFeatures.Empty.With(F);

    private static (CodeBuilder Cb, ulong Fn) Module()
    {
        var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            b.Alternative(a => a.mov(eax, 1), a => a.mov(eax, 2), F);
            b.Alternative(a => a.mov(ecx, 1), a => a.mov(ecx, 2), F);
            b.Code(a => a.ret());
        });
        cb.Publish();
        return (cb, fn);
    }

    private static PatchException Fails(CodeBuilder cb, IReadOnlyList<AlternativeSite> sites, string expected)
    {
        var before = Run.Text(cb);
        var e = Assert.Throws<PatchException>(() => new ProtectPoker().Apply(Alternatives.Plan(sites, Cpu, ProcessMemory.Snapshot(), new AlternativeOptions { TableName = "bad" })));
        Assert.Contains(expected, e.Message);
        Assert.Contains("alternative site #", e.Message);
        Assert.Contains("of 'bad'", e.Message);
        Assert.Equal(before, Run.Text(cb));
        return e;
    }

    [Fact]
    public void Replacement_longer_than_its_site()
    {
        var (cb, _) = Module();
        using var owned = cb;
        var sites = cb.AlternativeSites.ToList();
        sites[1] = sites[1] with { Replacement = new byte[] { 0xB8, 1, 2, 3, 4, 0x90 } };
        var e = Fails(cb, sites, "replacement (6 bytes) is longer than the site (5 bytes)");
        Assert.Equal(sites[1].Address, e.Address);
        Assert.Contains("#1", e.Message);
    }

    [Fact]
    public void Site_longer_than_max_patch_len()
    {
        var (cb, _) = Module();
        using var owned = cb;
        var sites = cb.AlternativeSites.ToList();
        sites[0] = sites[0] with { Length = 300, Original = new byte[300] };
        Fails(cb, sites, "length 300 exceeds MAX_PATCH_LEN (254)");
    }

    [Fact]
    public void Site_in_unmapped_memory()
    {
        var (cb, _) = Module();
        using var owned = cb;
        ulong hole = Run.NeverMapped;
        var sites = cb.AlternativeSites.ToList();
        sites.Add(sites[0] with { Address = hole + 16 });
        Fails(cb, sites, "is not mapped");
    }

    [Fact]
    public void Site_in_non_executable_memory()
    {
        var (cb, _) = Module();
        using var owned = cb;
        ulong page = Run.Map(4096, Libc.ProtRead | Libc.ProtWrite);
        try
        {
            Run.Write(page + 16, cb.AlternativeSites[0].Original.Span);
            var sites = cb.AlternativeSites.ToList();
            sites.Add(sites[0] with { Address = page + 16 });
            Fails(cb, sites, "rw-p mapping");
            Assert.Equal(cb.AlternativeSites[0].Original.ToArray(), Run.Read(page + 16, 5));
        }
        finally { Run.Unmap(page, 4096); }
    }

    [Fact]
    public void Overlapping_sites()
    {
        var (cb, _) = Module();
        using var owned = cb;
        var sites = cb.AlternativeSites.ToList();
        sites.Add(sites[0] with { Address = sites[0].Address + 2, Original = Run.Read(sites[0].Address + 2, 5) });
        Fails(cb, sites, "overlaps alternative site #0");
    }

    [Fact]
    public void Old_bytes_not_as_recorded()
    {
        var (cb, fn) = Module();
        using var owned = cb;
        var site = cb.AlternativeSites[1];
        // someone else changed the code behind our back (through the RW alias)
        cb.Memory.Writable[(int)(site.Address - cb.Memory.Address)] = 0xBA; // mov edx, imm32
        Fails(cb, cb.AlternativeSites, "neither the recorded original");
    }

    [Fact]
    public void Relocated_branch_that_no_longer_fits()
    {
        using var cb = new CodeBuilder();
        ulong fn = cb.Function("f", b =>
        {
            // the replacement's jz reaches its target with rel8 from where it was assembled, but from the
            // site (64 KiB away) it needs rel32: 6 bytes in a 2-byte site
            ulong near = cb.Cursor + 64 * 1024 + 0x40; // inside the replacement area, close to the replacement
            b.Alternative(a => a.xor(eax, eax), a => a.jz(near), F);
            b.Code(a => a.ret());
        });
        cb.Publish();
        Fails(cb, cb.AlternativeSites, "cannot be placed");
    }

    [Fact]
    public void Alternatives_of_one_address_with_different_lengths()
    {
        var (cb, _) = Module();
        using var owned = cb;
        var sites = cb.AlternativeSites.ToList();
        sites.Add(sites[0] with { Length = 4, Original = sites[0].Original[..4], Replacement = new byte[] { 0x90 } });
        Fails(cb, sites, "differs from alternative site #0");
    }

    [Fact]
    public void A_stale_plan_is_refused_by_the_poker_and_nothing_is_written()
    {
        var (cb, fn) = Module();
        using var owned = cb;
        var plan = Alternatives.Plan(cb.AlternativeSites, Cpu, ProcessMemory.Snapshot());
        Assert.Equal(2, plan.Count);
        var site = cb.AlternativeSites[1];
        cb.Memory.Writable[(int)(site.Address - cb.Memory.Address) + 1] = 7; // mov ecx, 7 now
        var before = Run.Text(cb);
        var e = Assert.Throws<PatchException>(() => new ProtectPoker().Apply(plan));
        Assert.Contains("not the plan's old bytes", e.Message);
        Assert.Equal(site.Address, e.Address);
        Assert.Equal(before, Run.Text(cb));
        Assert.Equal(1, Run.Call(fn, 0));
    }
}
