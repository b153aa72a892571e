using Altpatch.Cpu;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using BenchmarkDotNet.Attributes;

namespace Altpatch.Bench;

/// <summary>
/// Alternatives throughput: plan + apply for 100,000 alternative sites in one 4 MiB region,
/// replacements without and with relative operands (a call rel32 that must be re-encoded), split into
/// planning and writing, beside the floor: a plain copy of the same bytes to the same addresses.
/// Every benchmark processes all <see cref="Sites"/> sites per invocation; sites/s = Sites / mean time.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 3, iterationCount: 15)]
[MemoryDiagnoser]
public class AlternativesThroughput
{
    /// <summary>Number of sites.</summary>
    public const int Sites = 100_000;
    private const int Region = 4 << 20;
    private const int SiteLength = 8;
    private const int Stride = Region / Sites / 8 * 8; // 40 bytes apart

    /// <summary>Replacements with a relative operand (call rel32) or without (mov eax, imm32).</summary>
    [Params(false, true)]
    public bool Relative { get; set; }

    private ExecutableMemory memory = null!;
    private AlternativeSite[] sites = [];
    private readonly CpuFeatures with = CpuFeatures.Empty.With(CpuFeature.Popcnt);
    private readonly CpuFeatures without = CpuFeatures.Empty;
    private PatchPlan apply = PatchPlan.Empty, revert = PatchPlan.Empty;
    private readonly ProtectPoker poker = new();
    private bool applied;
    private byte[] newBytes = [];

    [GlobalSetup]
    public void Setup()
    {
        memory = ExecutableMemory.Allocate(Region + 4096, "bench");
        ulong text = memory.Address;
        ulong replArea = memory.Address + Region; // replacements live in the last page
        ulong helper = replArea + 64;
        // helper: mov eax, edi; ret
        memory.Writable[Region + 64] = 0x89; memory.Writable[Region + 65] = 0xF8; memory.Writable[Region + 66] = 0xC3;
        byte[] original = [0xB8, 1, 0, 0, 0, 0x0F, 0x1F, 0x00]; // mov eax,1; nopl (3)
        byte[] replacement;
        if (Relative)
        {
            int rel = (int)(helper - (replArea + 5));
            replacement = [0xE8, .. BitConverter.GetBytes(rel)]; // call helper, assembled at replArea
        }
        else replacement = [0xB8, 2, 0, 0, 0];
        replacement.CopyTo(memory.Writable[Region..]);
        sites = new AlternativeSite[Sites];
        for (int i = 0; i < Sites; i++)
        {
            ulong at = text + (ulong)(i * Stride);
            original.CopyTo(memory.Writable[(i * Stride)..]);
            sites[i] = new AlternativeSite(at, SiteLength, original, replacement, replArea, CpuFeature.Popcnt);
        }
        CoreSync.TrySyncAllCores();
        apply = Alternatives.Plan(sites, with, ProcessMemory.Snapshot());
        revert = apply.Inverse();
        newBytes = new byte[Sites * SiteLength];
        for (int i = 0; i < Sites; i++) apply[i].New.Span.CopyTo(newBytes.AsSpan(i * SiteLength));
    }

    [GlobalCleanup]
    public void Cleanup() => memory.Dispose();

    /// <summary>Planning only: sites -> PatchPlan (memory holds the originals).</summary>
    [Benchmark]
    public int Plan()
    {
        if (applied) { poker.Apply(revert); applied = false; }
        return Alternatives.Plan(sites, with, ProcessMemory.Snapshot()).Count;
    }

    /// <summary>Writing only: ProtectPoker executes a ready plan (alternately the plan and its inverse).</summary>
    [Benchmark]
    public int Write()
    {
        poker.Apply(applied ? revert : apply);
        applied = !applied;
        return Sites;
    }

    /// <summary>Plan and write, as a user does it: plan for a CPU, apply; alternately with and without the feature.</summary>
    [Benchmark]
    public int PlanAndWrite()
    {
        var plan = Alternatives.Plan(sites, applied ? without : with, ProcessMemory.Snapshot());
        poker.Apply(plan);
        applied = !applied;
        return plan.Count;
    }

    /// <summary>The floor: a plain copy of the same new bytes to the same addresses (through the RW alias, no checks).</summary>
    [Benchmark(Baseline = true)]
    public int Memcpy()
    {
        var w = memory.Writable;
        for (int i = 0; i < Sites; i++)
            newBytes.AsSpan(i * SiteLength, SiteLength).CopyTo(w[(i * Stride)..]);
        CoreSync.TrySyncAllCores();
        return Sites;
    }
}
