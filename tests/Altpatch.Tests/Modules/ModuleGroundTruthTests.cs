using System.Text;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;

namespace Altpatch.Tests.Modules;

/// <summary>
/// <c>kernel module</c>'s prediction against real modules loaded into a QEMU boot of their kernel (1 and 2 CPUs, Intel
/// and AMD, with and without KASLR): every executable section that is still mapped (.text, .text.unlikely,
/// .static_call.text, .altinstr_replacement, .altinstr_aux, .noinstr.text, .exit.text) equals the booted bytes, byte for
/// byte, except sites the running kernel decides (none changed in these boots).
/// </summary>
public sealed class ModuleGroundTruthTests
{
    public static TheoryData<string, string> Configurations()
    {
        var d = new TheoryData<string, string>();
        foreach (var truth in new[] { ModuleTruth.Linux61, ModuleTruth.Linux612 })
        {
            foreach (var c in truth.Configurations())
                d.Add(truth.Image, c);
        }
        return d;
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void EveryMappedSectionEqualsTheBootedOne(string release, string config)
    {
        var truth = ModuleTruth.For(release);
        Skip.IfNot(truth.HavePackage, truth.NoPackage);
        var image = truth.OpenKernel()!;
        var (kernel, cmdline) = truth.Kernel(config, image);
        // The modules' PREEMPT_DYNAMIC static calls (cond_resched, might_resched, preempt_schedule*) take the functions the
        // kernel's trampolines hold after sched_dynamic_update(): the kernel's prediction must have the boot's mode first.
        var bootMode = truth.Boot(config).GetValueOrDefault("preempt");
        Skip.If(bootMode is not null && !string.Equals(kernel.Preempt?.ToString(), bootMode, StringComparison.OrdinalIgnoreCase),
            $"the kernel's default preempt mode is predicted as {kernel.Preempt?.ToString() ?? "none"}, the boot printed \"Dynamic Preempt: {bootMode}\" "
            + "(6.12: sched_init() calls __sched_dynamic_update(1) where sched_dynamic_update() is inlined; the 6.12 static-call work reads it)");
        var linked = new List<KernelModuleLink>();
        var report = new StringBuilder();
        int sections = 0;
        long bytes = 0, patched = 0, unlocked = 0;
        foreach (var (name, path) in truth.Modules(config))
        {
            var module = KernelModule.Open(path);
            Assert.Equal(name, module.Name);
            KernelModuleLoader.CheckVermagic(image, module);
            var placed = KernelModuleSections.Read(Path.Combine(truth.Data, config, name + ".sections"));
            var link = KernelModuleLinker.Link(module, placed, KernelModuleLoader.Resolver(kernel.Image.Symbols, linked));
            var loaded = KernelModuleLoader.Load(kernel, link, linked, cmdline);
            linked.Add(link);
            patched += loaded.Passes.Sum(p => p.Bytes);
            unlocked += loaded.Passes.Where(p => p.Pass == BootPass.SmpLocks).Sum(p => p.Pokes);
            foreach (var (sec, (address, booted)) in truth.Saved(config, name))
            {
                var s = loaded.Patched.FindSection(sec)!.Value;
                Assert.Equal(address, s.Address);
                var ours = loaded.Patched.SectionBytes(s).Span;
                sections++;
                bytes += booted.Length;
                if (ours.SequenceEqual(booted))
                {
                    // and kernel verify --module finds every byte as predicted
                    var v = KernelModuleVerifier.Verify(loaded, booted, address, $"{name}{sec}");
                    Assert.True(v.Clean && v.AsPredictedBytes == booted.Length, $"{name} {sec}: verify finds {v.UnexplainedBytes} unexplained, {v.DynamicBytes} dynamic bytes");
                    continue;
                }
                int diff = 0, first = -1;
                for (int i = 0; i < booted.Length; i++)
                {
                    if (ours[i] != booted[i])
                    {
                        diff++;
                        if (first < 0)
                            first = i;
                    }
                }
                var site = loaded.TextSites.FirstOrDefault(x => x.Address <= address + (ulong)first && address + (ulong)first < x.Address + (ulong)x.Length);
                report.AppendLine($"{name} {sec}: {diff} bytes differ, first at +0x{first:x} (0x{address + (ulong)first:x}): ours {Convert.ToHexStringLower(ours.Slice(first, Math.Min(8, booted.Length - first)))}, booted {Convert.ToHexStringLower(booted.AsSpan(first, Math.Min(8, booted.Length - first)))}"
                    + (site is not null ? $" ({site.Kind} #{site.Index} {site.Detail}, dynamic {site.Dynamic})" : ""));
            }
        }
        Assert.True(report.Length == 0, $"{config}: {sections} sections, {bytes} bytes:\n{report}");
        Assert.True(sections >= 20, $"{config}: only {sections} sections compared");
        Assert.True(patched > 10_000, $"{config}: the passes wrote only {patched} bytes");
        // SMP locks: switched to UP on one CPU only (alternatives_smp_module_add() with uniproc_patched)
        Assert.Equal(kernel.State.Cpus == 1, unlocked > 0);
    }
}
