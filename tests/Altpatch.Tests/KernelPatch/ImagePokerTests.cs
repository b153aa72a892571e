using Altpatch.Images;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Tests.KernelPatch;

/// <summary>The image poker: validates the whole plan against the ELF file before writing anything.</summary>
public class ImagePokerTests
{
    private static (ElfFile Elf, BootImageBuilder B) Image()
    {
        var b = new BootImageBuilder();
        var bytes = b.Build();
        return (ElfFile.Parse(bytes, "synthetic"), b);
    }

    private static Poke P(ulong address, byte[] old, byte[] @new, int index = 0) =>
        new(address, old, @new, new SiteRef(SiteKind.Raw, index, "test"), "test");

    [Fact]
    public void Writes_a_valid_plan_and_its_inverse_restores_the_bytes()
    {
        var (elf, b) = Image();
        var poker = new ImagePoker(elf);
        var before = elf.Bytes.ToArray();
        var plan = new PatchPlan([P(b.Text + 0x10, [0xcc, 0xcc], [0x66, 0x90]), P(b.InitText + 0x10, [0xcc], [0x90], 1)]);
        poker.Apply(plan);
        Assert.Equal([0x66, 0x90], elf.ReadBytes(b.Text + 0x10, 2).ToArray());
        Assert.Equal(0x90, elf.ReadBytes(b.InitText + 0x10, 1)[0]);
        Assert.Equal(2, poker.PokesWritten);
        Assert.Equal(3, poker.BytesWritten);
        poker.Revert(plan);
        Assert.Equal(before, elf.Bytes.ToArray());
    }

    [Fact]
    public void A_poke_outside_the_executable_sections_writes_nothing()
    {
        var (elf, b) = Image();
        var poker = new ImagePoker(elf);
        var before = elf.Bytes.ToArray();
        var plan = new PatchPlan([P(b.Text + 0x10, [0xcc], [0x90]), P(b.Data + 0x10, [0x00], [0x90], 7)]);
        var e = Assert.Throws<PatchException>(() => poker.Apply(plan));
        Assert.Contains("raw site #7 of 'test'", e.Message, StringComparison.Ordinal);
        Assert.Contains(".data, which is not executable", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, elf.Bytes.ToArray());
    }

    [Fact]
    public void Wrong_old_bytes_or_a_range_past_the_section_write_nothing()
    {
        var (elf, b) = Image();
        var poker = new ImagePoker(elf);
        var before = elf.Bytes.ToArray();
        var e = Assert.Throws<PatchException>(() => poker.Apply(new PatchPlan([P(b.Text + 0x10, [0xcc], [0x90]), P(b.Text + 0x20, [0x90], [0xcc], 2)])));
        Assert.Contains("not the plan's old bytes 90", e.Message, StringComparison.Ordinal);
        var e2 = Assert.Throws<PatchException>(() => poker.Apply(new PatchPlan([P(b.Text + 0x3fff, [0xcc, 0xcc], [0x90, 0x90])])));
        Assert.Contains("runs past the end of .text", e2.Message, StringComparison.Ordinal);
        Assert.Equal(before, elf.Bytes.ToArray());
    }

    [Fact]
    public void Reads_current_bytes_as_a_code_reader()
    {
        var (elf, b) = Image();
        ICodeReader reader = new ImagePoker(elf);
        Span<byte> two = stackalloc byte[2];
        Assert.True(reader.TryRead(b.ReturnThunk, two, out _));
        Assert.Equal([0xc3, 0xcc], two.ToArray());
        Assert.False(reader.TryRead(b.Rodata, two, out var problem));
        Assert.Contains("not executable", problem, StringComparison.Ordinal);
    }
}
