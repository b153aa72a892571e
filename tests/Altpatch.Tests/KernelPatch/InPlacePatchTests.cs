using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// <see cref="KernelBootPatcher.PatchInPlace(KernelImage, KernelCpuDescription, KernelLine?, IProgress{BootPass}?)"/> (what <c>kernel patch</c> does without a report, issue 14: no second
/// image-sized buffer) gives the bytes and passes of <see cref="KernelBootPatcher.Patch(KernelImage, KernelCpuDescription, IProgress{BootPass}?)"/>,
/// which patches a copy: on each shared image, with the build's default preempt mode (whose derivation reads the image's
/// code as built after the jump label and static call passes have written it: the 686 reads the trampolines' bytes too),
/// with <c>preempt=full</c>, and 6.12 with <c>retbleed=stuff</c> (call depth tracking).
/// </summary>
public sealed class InPlacePatchTests
{
    public static TheoryData<string, string, string> Cases => new()
    {
        { "vmlinuz-6.1.0-50-cloud-amd64", "6.1.0-50-cloud-amd64/Icelake-Server-smp2/cpuinfo", "" },
        { "vmlinuz-6.1.0-50-686", "6.1.0-50-686/Icelake-Server-smp2/cpuinfo", "" },
        { "vmlinuz-6.1.0-50-686", "6.1.0-50-686/Icelake-Server-smp2/cpuinfo", "preempt=full nosmp" },
        { "vmlinuz-6.12.118+deb12-cloud-amd64", "6.12.118+deb12-cloud-amd64/Haswell-smp2/cpuinfo", "" },
        // call depth tracking: callthunks reads the template as built, the second static_call_init() the paddings as patched
        { "vmlinuz-6.12.118+deb12-cloud-amd64", "6.12.118+deb12-cloud-amd64/Skylake-Client-smp2+retbleed-stuff/cpuinfo", "retbleed=stuff" },
    };

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void In_place_writes_the_bytes_of_a_patched_copy(string image, string cpuinfo, string cmdline)
    {
        string path = Path.Combine(TestPaths.SharedLinux, image), cpu = Path.Combine(GroundTruth.Dir, cpuinfo);
        Skip.IfNot(File.Exists(path), TestPaths.NoSharedImages);
        Skip.IfNot(File.Exists(cpu), $"no {cpuinfo} in this checkout");
        var description = KernelCpuDescription.FromCpuInfo(File.ReadAllText(cpu)) with { Cpus = 2, CommandLine = KernelCommandLine.Parse(cmdline) };

        var original = KernelImage.Open(path);
        var copy = KernelBootPatcher.Patch(original, description);
        var own = KernelImage.Open(path);
        var inPlace = KernelBootPatcher.PatchInPlace(own, description);

        Assert.True(inPlace.InPlace);
        Assert.Same(own.Elf, inPlace.Patched);
        Assert.True(copy.Patched.Bytes.Span.SequenceEqual(own.ElfBytes.Span), "the image patched in place differs from the patched copy");
        Assert.False(copy.Patched.Bytes.Span.SequenceEqual(original.ElfBytes.Span));   // something was patched
        Assert.Equal(copy.Passes.Select(p => (p.Pass, p.Sites, p.Pokes, p.Bytes)), inPlace.Passes.Select(p => (p.Pass, p.Sites, p.Pokes, p.Bytes)));
        Assert.Equal(string.Join("\n", copy.TextDecisions), string.Join("\n", inPlace.TextDecisions));
        Assert.Equal(copy.Preempt, inPlace.Preempt);
        // The bytes before are rebuilt from the plans: every site's before, after and writers are the copy's.
        Assert.NotEmpty(copy.TextSites);
        Assert.Equal(copy.TextSites.Length, inPlace.TextSites.Length);
        for (int i = 0; i < copy.TextSites.Length; i++)
        {
            KernelTextSite a = copy.TextSites[i], b = inPlace.TextSites[i];
            Assert.True(a.Before.Span.SequenceEqual(b.Before.Span) && a.After.Span.SequenceEqual(b.After.Span)
                && a.Writers.SequenceEqual(b.Writers) && a.Detail == b.Detail && States(a).SequenceEqual(States(b)),
                $"text site {i} ({a.Kind} #{a.Index} at 0x{a.Address:x}) differs in place");
        }
        var sites = copy.Sites().ToList();
        var ownSites = inPlace.Sites().ToList();
        Assert.Equal(sites.Count, ownSites.Count);
        Assert.Contains(sites, o => o.Changed);
        for (int i = 0; i < sites.Count; i++)
        {
            KernelSiteOutcome a = sites[i], b = ownSites[i];
            Assert.True(a.Kind == b.Kind && a.Address == b.Address && a.Before.Span.SequenceEqual(b.Before.Span)
                && a.After.Span.SequenceEqual(b.After.Span) && a.Writers.SequenceEqual(b.Writers),
                $"site {i} ({a.Kind} #{a.Index} at 0x{a.Address:x}) differs in place");
        }
    }

    private static IEnumerable<string> States(KernelTextSite s) =>
        s.States.Select(x => $"{x.Name} {x.Form} {x.Target:x} {Convert.ToHexStringLower(x.Bytes.Span)}");
}
