using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Tests.Verify;

namespace Altpatch.Tests.KernelPatch;

/// <summary>
/// The preempt modes of Debian's 6.12 real-time flavour (<c>-rt-amd64</c>, <c>PREEMPT_RT</c> with the real-time tree's
/// lazy preemption patches, which the plain 6.12 source does not have): the build's default (lazy) read from
/// <c>sched_init()</c>, the two static keys each mode switches (their jump labels in the patched text), and the modes
/// the build refuses as its <c>sched_dynamic_mode()</c> does. The QEMU boot of the image checks every byte
/// (<see cref="WholeTextTests"/>, <see cref="VerifyGroundTruthTests"/>: tests/data/groundtruth/6.12.118+deb12-rt-amd64).
/// </summary>
public sealed class RealTimePreemptTests
{
    private const string Rt = "6.12.118+deb12-rt-amd64";
    private const string Cloud = "6.12.118+deb12-cloud-amd64";

    private static KernelPatchResult Patch(string image, string cmdline)
    {
        var img = GroundTruthDumps.Image(image);
        var description = KernelCpuDescription.FromCpuInfo(File.ReadAllText(Path.Combine(GroundTruth.Dir, Cloud, "Haswell-smp2", "cpuinfo")))
            with { Cpus = 2, CommandLine = KernelCommandLine.Parse(cmdline, KernelBootRules.Linux612) };
        var thunks = KernelThunks.Find(img);
        return KernelBootPatcher.Patch(img, KernelBootPatcher.DeriveState(img, description, thunks), thunks, KernelTextOptions.Default);
    }

    private static string Decision(KernelPatchResult r, string start) =>
        r.TextDecisions.FirstOrDefault(d => d.StartsWith(start, StringComparison.Ordinal))
        ?? throw new Xunit.Sdk.XunitException($"no decision starting '{start}':\n" + string.Join("\n", r.TextDecisions));

    /// <summary><c>.text</c> or <c>.init.text</c>: what <c>static_key_enable()</c> at boot rewrites.</summary>
    private static bool InKernelText(KernelImage img, ulong address) =>
        new[] { ".text", ".init.text" }.Any(n => img.Elf.FindSection(n) is { } s && s.Contains(address));

    /// <summary>Whether every jump label of the key jumps in the patched text (true), or every one keeps its built bytes (false).</summary>
    private static bool KeyJumps(KernelPatchResult r, string key)
    {
        ulong k = r.Image.Symbols.AddressOf(key);
        var labels = r.TextTables!.JumpEntries.Where(e => e.Key == k && InKernelText(r.Image, e.Code)).ToList();
        Assert.NotEmpty(labels);
        Assert.All(labels, e => Assert.False(e.Branch));   // static_branch_unlikely(): NOP as built, a jump when enabled
        bool[] jumps = [.. labels.Select(e => r.Patched.ReadBytes(e.Code, 1)[0] is 0xeb or 0xe9)];
        Assert.True(jumps.All(j => j) || jumps.All(j => !j), $"{key}: some of its {labels.Count} jump labels jump, some do not");
        if (!jumps[0])
            Assert.All(labels, e => Assert.Equal(r.Image.Elf.ReadBytes(e.Code, e.Length).ToArray(), r.Patched.ReadBytes(e.Code, e.Length).ToArray()));
        return jumps[0];
    }

    [SkippableFact]
    public void The_default_mode_is_lazy_with_both_keys_on()
    {
        var r = Patch(Rt, "");
        Assert.Equal(PreemptMode.Lazy, r.Preempt);
        string d = Decision(r, "Dynamic Preempt: lazy");
        Assert.Contains("the build's default: sched_init+0x", d, StringComparison.Ordinal);
        Assert.Contains("sk_dynamic_preempt_lazy enabled, sk_dynamic_preempt_promote enabled", d, StringComparison.Ordinal);
        Assert.True(KeyJumps(r, "sk_dynamic_preempt_lazy"));
        Assert.True(KeyJumps(r, "sk_dynamic_preempt_promote"));
    }

    [SkippableFact]
    public void Laziest_leaves_promote_off_and_full_leaves_both_off()
    {
        var laziest = Patch(Rt, "preempt=laziest");
        Assert.Equal(PreemptMode.Laziest, laziest.Preempt);
        Assert.True(KeyJumps(laziest, "sk_dynamic_preempt_lazy"));
        Assert.False(KeyJumps(laziest, "sk_dynamic_preempt_promote"));
        var full = Patch(Rt, "preempt=full");
        Assert.Equal(PreemptMode.Full, full.Preempt);
        Assert.False(KeyJumps(full, "sk_dynamic_preempt_lazy"));
        Assert.False(KeyJumps(full, "sk_dynamic_preempt_promote"));
    }

    [SkippableFact]
    public void Modes_a_build_does_not_know_are_ignored_as_the_kernel_ignores_them()
    {
        // PREEMPT_RT: none and voluntary are compiled out of sched_dynamic_mode(); the last mode it knows wins
        var rt = Patch(Rt, "preempt=laziest preempt=none");
        Assert.Equal(PreemptMode.Laziest, rt.Preempt);
        Assert.Contains("(PREEMPT_RT)", Decision(rt, "preempt=none: not a mode this build's sched_dynamic_mode() knows"), StringComparison.Ordinal);
        Assert.Equal(PreemptMode.Lazy, Patch(Rt, "preempt=voluntary").Preempt);   // the build's default then
        // the plain 6.12 build has no lazy preemption: preempt=lazy is ignored, its default (voluntary) stays
        var cloud = Patch(Cloud, "preempt=lazy");
        Assert.Equal(PreemptMode.Voluntary, cloud.Preempt);
        Assert.Contains("(no lazy preemption)", Decision(cloud, "preempt=lazy: not a mode"), StringComparison.Ordinal);
    }
}
