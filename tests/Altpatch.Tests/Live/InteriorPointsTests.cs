using Altpatch.Pokers;
using Altpatch.TortureChild;

namespace Altpatch.Tests.Live;

/// <summary>Where a thread can be stopped inside a site's old code such that the new bytes would break it.</summary>
public class InteriorPointsTests
{
    private const ulong At = 0x10000;

    private static ulong[] Points(byte[] old, byte[] @new)
    {
        var d = new ulong[old.Length];
        int n = InteriorPoints.Find(At, old, @new, d);
        return d[..n].Select(x => x - At).ToArray();
    }

    [Fact]
    public void One_instruction_has_none_the_kernel_case() =>
        Assert.Empty(Points([0xB8, 1, 0, 0, 0], [0xB8, 2, 0, 0, 0]));

    [Fact]
    public void Every_boundary_whose_rest_differs()
    {
        Assert.Equal([5UL, 6], Points(Torture.One, Torture.Two));   // mov eax,1 | ret | nop
        Assert.Equal([2UL, 4, 6], Points(Torture.Two, Torture.One)); // xor | inc | inc | ret
    }

    [Fact]
    public void A_boundary_followed_by_the_same_bytes_is_safe()
    {
        // mov eax,1; nop5  ->  mov eax,2; nop5: a thread at +5 runs the same NOP either way.
        byte[] old = [0xB8, 1, 0, 0, 0, 0x0F, 0x1F, 0x44, 0x00, 0x00];
        byte[] @new = [0xB8, 2, 0, 0, 0, 0x0F, 0x1F, 0x44, 0x00, 0x00];
        Assert.Empty(Points(old, @new));
    }

    [Fact]
    public void A_branch_back_before_the_boundary_makes_it_unsafe_even_when_the_rest_is_the_same()
    {
        // +0 mov eax,1 | +5 dec ecx | +7 jnz +0 | +9 ret  vs  mov eax,2 ...: +5 and +7 loop back to +0.
        byte[] old = [0xB8, 1, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xF7, 0xC3];
        byte[] @new = [0xB8, 2, 0, 0, 0, 0xFF, 0xC9, 0x75, 0xF7, 0xC3];
        Assert.Equal([5UL, 7], Points(old, @new));
    }

    [Fact]
    public void Bytes_that_do_not_decode_make_every_offset_a_point()
    {
        byte[] old = [0xB8, 1, 0, 0]; // truncated mov
        Assert.Equal([1UL, 2, 3], Points(old, [0x90, 0x90, 0x90, 0x90]));
    }

    [Fact]
    public void An_xbegin_whose_abort_target_is_before_the_boundary_makes_it_unsafe()
    {
        // +0 mov eax,1 | +5 xbegin +0 | +11 ret  vs  mov eax,2 ...: an abort from +5 on lands at +0.
        byte[] old = [0xB8, 1, 0, 0, 0, 0xC7, 0xF8, 0xF5, 0xFF, 0xFF, 0xFF, 0xC3];
        byte[] @new = [0xB8, 2, 0, 0, 0, 0xC7, 0xF8, 0xF5, 0xFF, 0xFF, 0xFF, 0xC3];
        Assert.Equal([5UL], Points(old, @new));
    }

    [Fact]
    public void A_call_inside_the_site_leaves_its_return_address_as_a_point()
    {
        byte[] old = [0xE8, 0, 0, 0, 0, 0x90, 0x90, 0x90];              // call; nop; nop; nop
        byte[] @new = [0x31, 0xC0, 0xFF, 0xC0, 0xFF, 0xC0, 0x90, 0x90]; // xor; inc; inc; nop; nop
        Assert.Equal([5UL], Points(old, @new)); // from +6 on the bytes are the same
    }
}
