using System.Collections.Concurrent;
using Altpatch.Code;
using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>The tables of jump_label_init(), static_call_init() and ftrace_init() on the real images: found by their
/// symbols and by the scans a stripped image needs, with the same result.</summary>
public class TextTableTests
{
    private static readonly ConcurrentDictionary<string, KernelSymbols> Maps = new();

    /// <summary>The -dbg System.map of an image (skips without it).</summary>
    internal static KernelSymbols SystemMap(string release)
    {
        string path = TestPaths.DebugSystemMap(release);
        Skip.IfNot(File.Exists(path), TestPaths.NoDebugSystemMap);
        return Maps.GetOrAdd(release, _ => KernelSymbols.FromSystemMap(File.ReadAllText(path), Path.GetFileName(path)));
    }

    private static (KernelImage Image, string Release) Get(string which) =>
        which == "amd64" ? (RealImages.CloudAmd64, "6.1.0-50-cloud-amd64") : (RealImages.I386, "6.1.0-50-686");

    private static NopTable Nops(KernelImage img) => img.Bitness == 64 ? NopTable.X86_64Linux61 : NopTable.X86_32;

    [SkippableTheory]
    [InlineData("amd64", 6017, 4275, 37609, 739)]
    [InlineData("i386", 5131, 0, 36953, 637)]
    public void Symbols_find_every_table(string which, int jumps, int calls, int mcount, int trampolines)
    {
        var (img, release) = Get(which);
        var map = SystemMap(release);
        var t = KernelTextTables.Read(img.Elf, Nops(img), map);
        Assert.Equal(jumps, t.JumpEntries.Length);
        Assert.Equal(calls, t.StaticCalls.Length);
        Assert.Equal(mcount, t.Mcount.Length);
        Assert.Equal(trampolines, t.Trampolines.Length);
        Assert.Equal(map.AddressOf("__fentry__"), t.Fentry);
        Assert.Equal(map.AddressOf("__start___jump_table"), t.Tables.Single(i => i.Kind == KernelSiteKind.JumpLabel).Address);
        Assert.Equal(map.AddressOf("__start_mcount_loc"), t.Tables.Single(i => i.Kind == KernelSiteKind.Mcount).Address);
        Assert.All(t.Trampolines, x => Assert.NotNull(x.Name));
        // every static call site calls one of the trampolines
        var tramps = t.Trampolines.Select(x => x.Address).ToHashSet();
        Assert.All(t.StaticCalls, s => Assert.Contains(s.Trampoline, tramps));
        // the jump labels' bytes agree with their keys' initial state (enabled ^ branch = jmp)
        foreach (var j in t.JumpEntries)
        {
            bool enabled = img.Elf.TryReadBytes(j.Key, 4, out var k) && BitConverter.ToInt32(k) > 0;
            Assert.True(j.IsJump == (enabled ^ j.Branch), $"jump entry {j.Index} at 0x{j.Code:x}");
        }
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void The_images_own_kallsyms_find_the_same_tables(string which)
    {
        var (img, release) = Get(which);
        var named = KernelTextTables.Read(img.Elf, Nops(img), SystemMap(release));
        var own = KernelTextTables.Read(img.Elf, Nops(img), img.Symbols);
        Assert.Equal(named.JumpEntries.AsEnumerable(), own.JumpEntries);
        Assert.Equal(named.StaticCalls.AsEnumerable(), own.StaticCalls);
        Assert.Equal(named.Mcount.AsEnumerable(), own.Mcount);
        Assert.Equal(named.Trampolines.AsEnumerable(), own.Trampolines);
        Assert.Equal(named.FtraceCalls.AsEnumerable(), own.FtraceCalls);
        // 686: no data symbols in its kallsyms, so the jump table and the mcount records were found by scanning
        Assert.Equal(which == "i386", own.Tables.Single(t => t.Kind == KernelSiteKind.Mcount).Format.Contains("scan", StringComparison.Ordinal));
    }

    [SkippableTheory]
    [InlineData("amd64")]
    [InlineData("i386")]
    public void The_scans_find_what_the_symbols_find(string which)
    {
        var (img, release) = Get(which);
        var map = SystemMap(release);
        var named = KernelTextTables.Read(img.Elf, Nops(img), map);
        var scanned = KernelTextTables.Read(img.Elf, Nops(img), null);
        Assert.Equal(named.JumpEntries.AsEnumerable(), scanned.JumpEntries);
        Assert.Equal(named.StaticCalls.AsEnumerable(), scanned.StaticCalls);
        Assert.Equal(named.Mcount.AsEnumerable(), scanned.Mcount);
        Assert.Equal(named.Fentry, scanned.Fentry);
        Assert.Equal(named.Trampolines.Select(x => x.Address), scanned.Trampolines.Select(x => x.Address));
        Assert.All(scanned.Tables, i => Assert.Contains("scan", i.Format, StringComparison.Ordinal));
    }
}
