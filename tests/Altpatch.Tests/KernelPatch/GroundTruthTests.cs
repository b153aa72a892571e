using Altpatch.Cpu;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// <c>kernel patch</c> against the kernel's own boot-time patching: for every ground-truth configuration (both
/// Debian 6.1 images × 7 QEMU CPU models × -smp 1/2), patch the image from the committed /proc/cpuinfo and
/// compare every alternative, paravirt, retpoline, return and lock site with the bytes the real kernel wrote.
/// Needs the shared images (skipped without them), not the dumps.
/// </summary>
public class GroundTruthTests
{
    public static TheoryData<string, string> Configurations()
    {
        var data = new TheoryData<string, string>();
        foreach (var (image, config) in GroundTruth.Configurations())
            data.Add(image, config);
        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void Every_site_matches_the_kernel(string image, string config)
    {
        var img = GroundTruth.Image(image);
        var result = KernelBootPatcher.Patch(img, GroundTruth.Description(image, config));
        var cmp = GroundTruth.Compare(result, GroundTruth.Read(image, config));
        Assert.True(cmp.AllMatch, cmp.ToString());
        Assert.Equal(img.ElfBytes.Length, result.Patched.Bytes.Length);
    }

    [Fact]
    public void All_28_configurations_have_truth_files()
    {
        var configs = GroundTruth.Configurations().ToList();
        Assert.Equal(28, configs.Count);
        Assert.Equal(14, configs.Count(c => c.Image == "6.1.0-50-cloud-amd64"));
    }

    /// <summary>The comparison is not vacuous: a wrong rule makes it fail, for the right sites.</summary>
    [SkippableFact]
    public void A_wrong_return_thunk_choice_fails_the_comparison()
    {
        const string image = "6.1.0-50-cloud-amd64", config = "Icelake-Server-smp2";
        var img = GroundTruth.Image(image);
        var thunks = KernelThunks.Find(img);
        var right = KernelBootCpu.Derive(GroundTruth.Description(image, config), KernelBuildInfo.Infer(img, thunks));
        Assert.Equal(ReturnThunkKind.Its, right.ReturnThunk);
        // Perturb one rule: the ITS per-address choice gone (every return through __x86_return_thunk).
        var wrong = new KernelBootState(right.Features, ReturnThunkKind.Default, right.Cpus, right.Hypervisor);
        var cmp = GroundTruth.Compare(KernelBootPatcher.Patch(img, wrong, thunks), GroundTruth.Read(image, config));
        Assert.False(cmp.AllMatch);
        var (total, matched) = cmp.ByKind[KernelSiteKind.Return];
        Assert.True(matched < total / 2, cmp.ToString());
        // Only alternatives that contain a return site are affected besides the returns themselves.
        var alt = cmp.ByKind[KernelSiteKind.Alternative];
        Assert.InRange(alt.Total - alt.Matched, 1, 100);
    }

    [SkippableFact]
    public void A_lock_switch_on_two_cpus_fails_the_comparison()
    {
        const string image = "6.1.0-50-686", config = "Nehalem-smp2";
        var img = GroundTruth.Image(image);
        var cmp = GroundTruth.Compare(KernelBootPatcher.Patch(img, GroundTruth.Description(image, config) with { Cpus = 1 }), GroundTruth.Read(image, config));
        Assert.False(cmp.AllMatch);
        Assert.True(cmp.ByKind[KernelSiteKind.SmpLock].Matched < 300, cmp.ToString());
    }

    [SkippableFact]
    public void Clearing_X86_FEATURE_ALWAYS_leaves_hundreds_of_alternatives_unlike_the_kernel()
    {
        // With X86_FEATURE_ALWAYS cleared, 579 ALTERNATIVE "", "jmp", X86_FEATURE_ALWAYS sites keep their original bytes
        // (their 0x90 padding still optimised) instead of the kernel's jumps.
        const string image = "6.1.0-50-cloud-amd64", config = "qemu64-smp2";
        var img = GroundTruth.Image(image);
        var d = GroundTruth.Description(image, config) with { Clear = [CpuFeature.Always] };
        var cmp = GroundTruth.Compare(KernelBootPatcher.Patch(img, d), GroundTruth.Read(image, config));
        Assert.False(cmp.AllMatch);
        Assert.True(cmp.ByKind[KernelSiteKind.Alternative].Total - cmp.ByKind[KernelSiteKind.Alternative].Matched > 100, cmp.ToString());
    }

    [SkippableFact]
    public void Skipping_optimize_nops_on_unpatched_sites_fails_the_comparison()
    {
        // apply_alternatives() runs optimize_nops() on every site, also on those whose feature is absent: their 0x90
        // padding becomes the table's long NOPs. Undo exactly that (the 0x90 bytes of the unpatched sites, put back)
        // and only those alternatives stop matching.
        const string image = "6.1.0-50-cloud-amd64", config = "qemu64-smp2";
        var img = GroundTruth.Image(image);
        var result = KernelBootPatcher.Patch(img, GroundTruth.Description(image, config));
        var truth = GroundTruth.Read(image, config);
        Assert.True(GroundTruth.Compare(result, truth).AllMatch);

        var hasFeature = result.Numbering.HasFeature(result.State.Features);
        var alts = img.Tables.Alternatives;
        // Addresses where some entry's replacement was written: their padding is the replacement's, not optimize_nops'.
        var patched = alts.Where(a => hasFeature(a.Cpuid) != a.Not).Select(a => a.Address).ToHashSet();
        var copy = result.Patched.Bytes.ToArray();
        var reset = new HashSet<ulong>();
        foreach (var a in alts.Where(a => !patched.Contains(a.Address)))
        {
            var original = img.ReadBytes(a.Address, a.InstrLen);
            Assert.True(result.Patched.TryGetFileOffset(a.Address, a.InstrLen, out long at));
            for (int i = 0; i < a.InstrLen; i++)
            {
                if (original[i] == 0x90 && copy[at + i] != 0x90)
                {
                    copy[at + i] = 0x90;
                    reset.Add(a.Address);
                }
            }
        }
        int entriesReset = alts.Count(a => reset.Contains(a.Address));
        var withoutOptimizeNops = new KernelPatchResult(img, ElfFile.Parse(copy, img.Elf.Name), result.State, result.Thunks,
            result.Passes, result.Rules, result.Numbering);
        var cmp = GroundTruth.Compare(withoutOptimizeNops, truth);
        Assert.False(cmp.AllMatch);
        var alt = cmp.ByKind[KernelSiteKind.Alternative];
        Assert.True(reset.Count > 100, $"{reset.Count} unpatched sites had optimised padding");
        Assert.Equal(entriesReset, alt.Total - alt.Matched);       // exactly the entries at those addresses
        Assert.All(cmp.ByKind.Where(kv => kv.Key != KernelSiteKind.Alternative), kv => Assert.Equal(kv.Value.Total, kv.Value.Matched));
    }
}
