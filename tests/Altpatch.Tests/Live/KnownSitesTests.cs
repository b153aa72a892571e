using Altpatch.Native;
using Altpatch.Pokers;

namespace Altpatch.Tests.Live;

/// <summary>The trap handler's table of known sites, as the poker maintains it between batches.</summary>
[Collection(LiveCollection.Name)]
public unsafe class KnownSitesTests
{
    private static (ulong[] Addresses, ulong[] Gens) Table(LiveCode live)
    {
        LiveCode.KnownTable* t = live.Control->Known;
        int n = (int)t->Count;
        return (new ReadOnlySpan<ulong>(LiveCode.KnownTable.Addresses(t), n).ToArray(), new ReadOnlySpan<ulong>(LiveCode.KnownTable.Generations(t), n).ToArray());
    }

    [Fact]
    public void New_sites_are_merged_in_order_keep_older_generations_and_int3_sites_are_removed()
    {
        lock (TrapHandler.Gate)
        {
            var live = TrapHandler.InstallLocked();
            // Addresses far from anything mapped: this test drives the table directly, no code runs there.
            const ulong Base = 0x1000_0000_0000;
            ulong g1 = live.NextGeneration();
            Assert.True(live.PrepareBatch([Base + 0x10, Base + 0x30], [], g1));
            var (a1, gens1) = Table(live);
            Assert.Contains(Base + 0x10, a1);
            Assert.Contains(Base + 0x30, a1);
            Assert.Equal(g1, gens1[Array.IndexOf(a1, Base + 0x30)]);

            ulong g2 = live.NextGeneration();
            Assert.True(live.PrepareBatch([Base + 0x20], [Base + 0x30], g2)); // 0x30's new first byte is an int3
            var (a2, gens2) = Table(live);
            Assert.True(a2.SequenceEqual(a2.Order()), "the table stays sorted for the handler's binary search");
            Assert.DoesNotContain(Base + 0x30, a2);
            Assert.Equal(g1, gens2[Array.IndexOf(a2, Base + 0x10)]); // untouched sites keep their generation
            Assert.Equal(g2, gens2[Array.IndexOf(a2, Base + 0x20)]);

            // The same sites again: no rebuild, only generations change.
            LiveCode.KnownTable* before = live.Control->Known;
            ulong g3 = live.NextGeneration();
            Assert.True(live.PrepareBatch([Base + 0x10, Base + 0x20], [], g3));
            Assert.True(before == live.Control->Known, "the same table");
            var (a3, gens3) = Table(live);
            Assert.Equal(g3, gens3[Array.IndexOf(a3, Base + 0x10)]);
            Assert.Equal(g3, gens3[Array.IndexOf(a3, Base + 0x20)]);

            Assert.True(live.PrepareBatch([], [Base + 0x10, Base + 0x20], live.NextGeneration()));
            Assert.DoesNotContain(Base + 0x10, Table(live).Addresses);
        }
    }

    [Fact]
    public void Cached_interior_points_are_the_same_at_every_address()
    {
        byte[] old = [0xB8, 1, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xF7, 0xC3]; // loops back to +0
        byte[] @new = [0xB8, 2, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xF7, 0xC3];
        foreach (ulong at in new ulong[] { 0x1000, 0x7fff_0000_1234, 0x10 })
        {
            var direct = new ulong[old.Length];
            int n = InteriorPoints.Find(at, old, @new, direct);
            var cached = InteriorPoints.Offsets(old, @new).Select(offset => at + offset).ToArray();
            Assert.Equal(direct[..n], cached);
            Assert.Equal([at + 5, at + 7], cached);
        }
    }
}
