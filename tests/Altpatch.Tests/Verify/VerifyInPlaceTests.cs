using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using Altpatch.Tests.KernelPatch;

namespace Altpatch.Tests.Verify;

/// <summary>
/// <see cref="KernelTextVerifier.VerifyInPlace"/> (what <c>kernel verify</c> does, issue 14: the image is moved and patched in
/// its own buffer, and the text sites' bytes before are rebuilt from the plans) classifies a running kernel's text exactly as
/// <see cref="KernelTextVerifier.Verify(KernelImage, ReadOnlyMemory{byte}, ulong, string, KernelCpuDescription, KernelTextOptions?, IProgress{string}?)"/>,
/// which patches copies: a boot at the link address and a KASLR boot (the image moved in place), each clean and, with a few
/// bytes of the dump changed, with the same unexplained ranges and the sites they hit.
/// </summary>
public sealed class VerifyInPlaceTests
{
    [SkippableTheory]
    [InlineData("6.1.0-50-686", "Icelake-Server-smp2")]
    [InlineData("6.1.0-50-cloud-amd64", "Haswell-smp2+kaslr")]
    public void In_place_verification_gives_the_copys_result(string image, string config)
    {
        string path = Path.Combine(TestPaths.SharedLinux, $"vmlinuz-{image}");
        Skip.IfNot(File.Exists(path), TestPaths.NoSharedImages);
        Skip.IfNot(WholeTextTruth.Configurations().Contains((image, config)), $"no whole-text truth {image}/{config} in this checkout");
        var (cpu, truth) = VerifyGroundTruthTests.Boot(image, config);
        cpu = cpu with { CommandLine = KernelCommandLine.Parse(truth.CommandLine) };
        var copyImage = KernelImage.Open(path);
        var text = truth.RebuildText(copyImage);
        ulong at = truth.Text.Address + (ulong)truth.KaslrDelta;
        var copy = KernelTextVerifier.Verify(copyImage, text, at, config, cpu);
        // a changed byte in a function, and one on a dynamic site (a jump label's first byte), so ranges and sites show
        var dirty = text.ToArray();
        dirty[0x1234] ^= 0xff;
        var jump = copy.DynamicSites.First(d => d.Kind == KernelSiteKind.JumpLabel && d.Address - at > 0x100000);
        dirty[(int)(jump.Address - at)] = 0xcc;
        var copyDirty = KernelTextVerifier.Verify(copyImage, dirty, at, config, cpu);
        var inPlace = KernelTextVerifier.VerifyInPlace(KernelImage.Open(path), text, at, config, cpu);
        var inPlaceDirty = KernelTextVerifier.VerifyInPlace(KernelImage.Open(path), dirty, at, config, cpu);

        Assert.Equal(truth.KaslrDelta, inPlace.Fit.Delta);
        Assert.True(copy.Clean);
        Assert.False(copyDirty.Clean);
        Assert.True(inPlace.Prediction.InPlace);
        foreach (var (a, b) in new[] { (copy, inPlace), (copyDirty, inPlaceDirty) })
        {
            Assert.Equal(Summary(a), Summary(b));
            Assert.Equal(a.DynamicSites.Select(d => (d.Kind, d.Index, d.Address, d.Length, d.Detail)), b.DynamicSites.Select(d => (d.Kind, d.Index, d.Address, d.Length, d.Detail)));
        }
    }

    private static string Summary(KernelVerifyResult r) =>
        $"{r.Clean} {r.TextLength} {r.AsPredictedBytes} {r.DynamicBytes} {r.UnexplainedBytes}\n"
        + string.Join("\n", r.DynamicChanged.Select(c => $"{c.Site.Kind} #{c.Site.Index} {c.State} {Convert.ToHexStringLower(c.Found.Span)} {c.Symbol}"))
        + "\n" + string.Join("\n", r.Unexplained.Select(u => $"0x{u.Address:x} {u.Length} {u.Symbol} [{string.Join(",", u.Sites)}] {u.ExpectedCode} / {u.FoundCode}"));
}
