using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Tests.KernelPatch;
using Xunit.Abstractions;

namespace Altpatch.Tests.Images;

/// <summary>
/// The limits that hold for any input (docs/bad-input.md): each is exercised at or past its bound, and where
/// memory is the point the CLI runs in a child process (Altpatch.TortureChild cli) that reports its own peak
/// resident set (VmHWM), which must stay under 1 GiB. No timing: a bound on work shows up as a bound on memory
/// or as a refusal before the work.
/// </summary>
public sealed class LimitTests : IDisposable
{
    private const long OneGiBInKiB = 1 << 20;
    private readonly string dir = Path.Combine(Path.GetTempPath(), $"altpatch-limits-{Guid.NewGuid():N}");
    private readonly ITestOutputHelper log;

    public LimitTests(ITestOutputHelper log)
    {
        this.log = log;
        Directory.CreateDirectory(dir);
    }

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private string Out => Path.Combine(dir, "out");

    /// <summary>Runs the altpatch command line in a child process; its exit code, output, error and peak RSS (KiB).</summary>
    private (int Exit, string Out, string Err, long PeakKiB) Child(params string[] args)
    {
        var r = RunChild(args);
        log.WriteLine($"altpatch {string.Join(' ', args.Select(a => a.StartsWith(dir, StringComparison.Ordinal) ? Path.GetFileName(a) : a))}: exit {r.Exit}, peak RSS {r.PeakKiB / 1024} MiB");
        return r;
    }

    private static (int Exit, string Out, string Err, long PeakKiB) RunChild(string[] args)
    {
        string peak = Path.Combine(Path.GetTempPath(), $"altpatch-peak-{Guid.NewGuid():N}");
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Altpatch.TortureChild.dll"));
        psi.ArgumentList.Add("cli");
        psi.ArgumentList.Add(peak);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        try
        {
            long kib = File.Exists(peak) ? long.Parse(File.ReadAllText(peak).Trim(), System.Globalization.CultureInfo.InvariantCulture) : -1;
            return (p.ExitCode, stdout.Result, stderr.Result, kib);
        }
        finally
        {
            File.Delete(peak);
        }
    }

    private void AssertRefused((int Exit, string Out, string Err, long PeakKiB) r, string expected, long maxKiB = OneGiBInKiB)
    {
        Assert.Equal(1, r.Exit);
        Assert.Equal("", r.Out);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.StartsWith("altpatch: error: ", r.Err, StringComparison.Ordinal);
        Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        Assert.InRange(r.PeakKiB, 1, maxKiB);
        Assert.False(File.Exists(Out));
        Assert.Empty(Directory.GetFiles(dir, ".out.*"));   // no temporary left behind either
    }

    private static byte[] Gzip(Action<Stream> write)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
            write(gz);
        return ms.ToArray();
    }

    private static void Zeros(Stream s, long count)
    {
        var z = new byte[1 << 20];
        for (long left = count; left > 0; left -= z.Length)
            s.Write(z, 0, (int)Math.Min(z.Length, left));
    }

    private static byte[] SampleElf()
    {
        var b = new BootImageBuilder();
        b.AddPara(b.Text + 0x100, 3);
        b.AddReturn(b.Text + 0x120);
        b.Put(b.Text + 0x160, 0xf0, 0x0f, 0xc1, 0x07);
        b.Locks.Add(b.Text + 0x160);
        return b.Build();
    }

    [Fact]
    public void A_4GiB_gzip_bomb_behind_a_plausible_trailer_stops_at_the_trailer()
    {
        // 64 gzip members of 64 MiB of zeros: 4 GiB of output; the last member's ISIZE says 64 MiB.
        var member = Gzip(s => Zeros(s, 64 << 20));
        var payload = new byte[member.Length * 64];
        for (int i = 0; i < 64; i++)
            member.CopyTo(payload, i * member.Length);
        string img = Path.Combine(dir, "bomb");
        File.WriteAllBytes(img, SyntheticBzImage.Build(payload));
        AssertRefused(Child("kernel", "patch", img, "--flags", "fpu", "-o", Out), "gzip payload decompresses to more than the 67108864 bytes its size trailer says", maxKiB: 512 << 10);
    }

    [Fact]
    public void A_size_trailer_above_the_limit_is_refused_before_decompressing()
    {
        var payload = SyntheticBzImage.WithSize(Gzip(s => s.Write(SampleElf())).AsSpan(0, 100).ToArray(), unchecked((int)0xf0000000));
        string img = Path.Combine(dir, "huge-trailer");
        File.WriteAllBytes(img, SyntheticBzImage.Build(payload, initSize: 0xffffffff));
        AssertRefused(Child("kernel", "info", img), "payload size trailer says 4026531840 decompressed bytes (must be 1 … 268435456)", maxKiB: 256 << 10);
    }

    [Fact]
    public void A_size_trailer_above_init_size_is_refused()
    {
        var elf = SampleElf();
        var payload = Gzip(s => s.Write(elf));
        var e = Assert.Throws<ImageFormatException>(() => KernelImage.Load(SyntheticBzImage.Build(payload, initSize: (uint)elf.Length - 1), "img"));
        Assert.Equal($"img: payload size trailer says {elf.Length} decompressed bytes, more than init_size (0x260) {elf.Length - 1}, the memory the kernel decompresses into; corrupt", e.Message);
        Assert.Equal(elf.Length, KernelImage.Load(SyntheticBzImage.Build(payload, initSize: (uint)elf.Length), "img").ElfBytes.Length);
    }

    [Fact]
    public void A_file_above_the_size_limit_is_refused_without_reading_it()
    {
        string img = Path.Combine(dir, "sparse");
        using (var f = new FileStream(img, FileMode.CreateNew))
            f.SetLength(ImageLimits.MaxFileSize + 1);   // sparse: nothing to read, nothing on disk
        AssertRefused(Child("kernel", "patch", img, "--flags", "fpu", "-o", Out),
            $"sparse: {ImageLimits.MaxFileSize + 1} bytes is more than the 268435456 bytes (256 MiB) Altpatch reads as a kernel image", maxKiB: 256 << 10);
        Assert.StartsWith($"big: {ImageLimits.MaxFileSize + 1} bytes is more than", Assert.Throws<ImageFormatException>(() => KernelImage.Load(new byte[ImageLimits.MaxFileSize + 1], "big")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Text_inputs_above_64MiB_are_refused_without_reading_them()
    {
        string big = Path.Combine(dir, "big.txt"), img = Path.Combine(dir, "vmlinux");
        using (var f = new FileStream(big, FileMode.CreateNew))
            f.SetLength(ImageLimits.MaxTextFileSize + 1);
        File.WriteAllBytes(img, SampleElf());
        string expected = $"{big}: {ImageLimits.MaxTextFileSize + 1} bytes is more than the 67108864 bytes (64 MiB) read from a text input";
        var r = Child("cpu", "--cpuinfo", big);
        Assert.Equal(1, r.Exit);
        Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        Assert.InRange(r.PeakKiB, 1, 256 << 10);
        AssertRefused(Child("kernel", "patch", img, "--cpuinfo", big, "-o", Out), expected, maxKiB: 256 << 10);
        AssertRefused(Child("kernel", "patch", img, "--flags", "fpu", "--hypervisor", "kvm", "--symbols", big, "-o", Out), expected, maxKiB: 256 << 10);
    }

    [Fact]
    public void Patching_a_bzImage_at_the_decompression_limit_stays_under_1_GiB()
    {
        // The worst a bzImage can ask for: a payload that decompresses to the limit, read, patched and written.
        var elf = SampleElf();
        var payload = Gzip(s =>
        {
            s.Write(elf);
            Zeros(s, ImageLimits.MaxDecompressedSize - elf.Length);
        });
        string img = Path.Combine(dir, "at-limit");
        File.WriteAllBytes(img, SyntheticBzImage.Build(payload));
        var r = Child("kernel", "patch", img, "--flags", "fpu", "--smp", "1", "-o", Out);
        Assert.True(r.Exit == 0, r.Err);
        Assert.Equal((long)ImageLimits.MaxDecompressedSize, new FileInfo(Out).Length);
        Assert.InRange(r.PeakKiB, 1, OneGiBInKiB);
    }

    [Fact]
    public void Patching_a_vmlinux_at_the_file_limit_stays_under_1_GiB()
    {
        // A raw ELF of the largest size read (what follows the ELF proper is kept, as vmlinux.relocs is).
        var elf = SampleElf();
        string img = Path.Combine(dir, "vmlinux");
        using (var f = new FileStream(img, FileMode.CreateNew))
        {
            f.Write(elf);
            Zeros(f, ImageLimits.MaxFileSize - elf.Length);
        }
        var r = Child("kernel", "patch", img, "--flags", "fpu", "--smp", "1", "-o", Out);
        Assert.True(r.Exit == 0, r.Err);
        Assert.Equal(ImageLimits.MaxFileSize, new FileInfo(Out).Length);
        Assert.InRange(r.PeakKiB, 1, OneGiBInKiB);
        var sites = Child("kernel", "sites", img, "--json");
        Assert.True(sites.Exit == 0, sites.Err);
        Assert.InRange(sites.PeakKiB, 1, OneGiBInKiB);
    }

    [Fact]
    public void Section_names_are_bounded_in_length_and_in_total()
    {
        // 30,000 sections naming 30,000 different offsets into ten 4,000-byte names: about 60 M characters.
        var block = Enumerable.Repeat((byte)'A', 4000).Append((byte)0).ToArray();
        var names = Enumerable.Range(0, 10).SelectMany(_ => block).ToArray();
        var e = Assert.Throws<ImageFormatException>(() => ElfFile.Parse(ElfWithSectionNames(30_000, names, i => (uint)i), "names"));
        Assert.Equal($"names: section names: the names take more than {ImageLimits.MaxNameCharacters} characters; corrupt", e.Message);
        // One name longer than 4096 bytes.
        e = Assert.Throws<ImageFormatException>(() => ElfFile.Parse(ElfWithSectionNames(3, Enumerable.Repeat((byte)'B', 5000).ToArray(), _ => 1), "long"));
        Assert.Equal("long: section names: the name at offset 0x1 is longer than 4096 bytes; corrupt", e.Message);
        // Many sections naming the same string cost it once.
        var ok = ElfFile.Parse(ElfWithSectionNames(20_000, block, _ => 1), "shared");
        Assert.Equal(4000, ok.Sections[5].Name.Length);
        Assert.Same(ok.Sections[5].Name, ok.Sections[6].Name);
    }

    /// <summary>An ELF64 whose section 1 is the name table (a NUL then <paramref name="strings"/>) and the others name offsets in it.</summary>
    private static byte[] ElfWithSectionNames(int sections, byte[] strings, Func<int, uint> nameOf)
    {
        int strOff = 64, strLen = strings.Length + 1;
        int shoff = (strOff + strLen + 7) & ~7;
        var f = new byte[shoff + sections * 64];
        "\x7f"u8.CopyTo(f);
        "ELF"u8.CopyTo(f.AsSpan(1));
        f[4] = 2; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(16), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(18), 62);
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(40), (ulong)shoff);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(58), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(60), (ushort)Math.Min(sections, 0xffff));
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(62), 1);
        strings.CopyTo(f, strOff + 1);
        if (sections > 0xffff)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(60), 0);
            BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(shoff + 32), (ulong)sections);   // extended numbering
        }
        var h = f.AsSpan(shoff + 64);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 3);                     // SHT_STRTAB
        BinaryPrimitives.WriteUInt64LittleEndian(h[24..], (ulong)strOff);
        BinaryPrimitives.WriteUInt64LittleEndian(h[32..], (ulong)strLen);
        for (int i = 2; i < sections; i++)
        {
            var s = f.AsSpan(shoff + i * 64);
            BinaryPrimitives.WriteUInt32LittleEndian(s, nameOf(i));
            BinaryPrimitives.WriteUInt32LittleEndian(s[4..], 8);                 // SHT_NOBITS: no bytes to check
        }
        return f;
    }

    [Fact]
    public void A_symbol_table_of_more_than_4Mi_entries_is_refused()
    {
        int n = ImageLimits.MaxSymbols + 1;
        // Sections: [1] .shstrtab, [2] .strtab, [3] .symtab (n zero entries, sh_link 2).
        var shstr = "\0.shstrtab\0.strtab\0.symtab\0"u8.ToArray();
        long symOff = 256, shoff = symOff + (long)n * 24;
        var f = new byte[shoff + 4 * 64];
        "\u007fELF"u8.CopyTo(f);
        f[4] = 2; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(16), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(18), 62);
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(40), (ulong)shoff);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(58), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(60), 4);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(62), 1);
        shstr.CopyTo(f, 64);
        f[128 + 1] = (byte)'x';
        void Header(int i, uint name, uint type, long offset, long size, uint link)
        {
            var h = f.AsSpan((int)shoff + i * 64);
            BinaryPrimitives.WriteUInt32LittleEndian(h, name);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], type);
            BinaryPrimitives.WriteUInt64LittleEndian(h[24..], (ulong)offset);
            BinaryPrimitives.WriteUInt64LittleEndian(h[32..], (ulong)size);
            BinaryPrimitives.WriteUInt32LittleEndian(h[40..], link);
        }
        Header(1, 1, 3, 64, shstr.Length, 0);
        Header(2, 11, 3, 128, 3, 0);
        Header(3, 19, 2, symOff, (long)n * 24, 2);
        var elf = ElfFile.Parse(f, "syms");
        var e = Assert.Throws<ImageFormatException>(() => elf.Symbols.Count);
        Assert.Equal($"syms: section [3] .symtab: {n} symbols is implausible (at most {ImageLimits.MaxSymbols})", e.Message);
        // One fewer is read.
        Header(3, 19, 2, symOff, (long)(n - 1) * 24, 2);
        Assert.Equal(n - 1, ElfFile.Parse(f, "syms").Symbols.Count);
    }

    [Theory]
    [InlineData(KernelPatchTables.SmpLocksSection)]
    [InlineData(KernelPatchTables.AltInstructions)]
    [InlineData(KernelPatchTables.ReturnSites)]
    public void A_patch_table_above_8MiB_is_refused(string table)
    {
        int size = ImageLimits.MaxTableSize + 12;
        var elf = new SyntheticElf(true, 62, 0xffffffff81000000)
            .Section(".text", 0xffffffff81000000, [0xc3], SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(table, 0xffffffff82000000, new byte[size])
            .Build();
        var e = Assert.Throws<ImageFormatException>(() => KernelImage.Load(elf, "big").Tables);
        Assert.Equal($"big: {table}: section of {size} bytes is implausibly large for a patch table (at most {ImageLimits.MaxTableSize})", e.Message);
    }

    [Fact]
    public void The_feature_name_search_is_bounded_on_a_file_of_nothing_but_names()
    {
        // 16 MiB of "fpu\0vme\0": 2 Mi candidate strings each; the search looks at 64 Ki of them.
        var rodata = new byte[16 << 20];
        for (int i = 0; i + 8 <= rodata.Length; i += 8)
            "fpu\0vme\0"u8.CopyTo(rodata.AsSpan(i));
        var elf = ElfFile.Parse(new SyntheticElf(true, 62, 0xffffffff81000000)
            .Section(".text", 0xffffffff81000000, [0xc3], SyntheticElf.Alloc | SyntheticElf.Exec)
            .Section(".rodata", 0xffffffff82000000, rodata)
            .Build(), "names");
        long before = GC.GetAllocatedBytesForCurrentThread();
        var (address, _) = ImageFeatureNumbering.FindNameArray(elf, "fpu", "vme");
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Null(address);
        Assert.InRange(allocated, 0, 16L << 20);
    }
}
