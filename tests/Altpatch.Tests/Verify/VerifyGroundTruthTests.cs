using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using Altpatch.Tests.KernelPatch;
using Xunit.Abstractions;

namespace Altpatch.Tests.Verify;

/// <summary>
/// <c>kernel verify</c> on the running kernels of the ground truth: for every committed whole-text truth file (CI has
/// them and the images; tests/data/groundtruth/&lt;image&gt;/&lt;cfg&gt;/run.wtext.gz with its cpuinfo and boot.txt), the
/// running kernel's .text is rebuilt byte for byte and verified with the boot's CPU, CPU count and command line:
/// nothing may be unexplained, KASLR boots included.
/// </summary>
public class VerifyGroundTruthTests(ITestOutputHelper output)
{
    public static TheoryData<string, string> Configurations()
    {
        var data = new TheoryData<string, string>();
        foreach (var (image, config) in WholeTextTruth.Configurations())
            data.Add(image, config);
        if (data.Count == 0)
            data.Add("", "");   // skipped below: no truth files in this checkout
        return data;
    }

    /// <summary>The description a ground-truth boot had: its /proc/cpuinfo, -smp and command line.</summary>
    internal static (KernelCpuDescription Cpu, WholeTextTruth Truth) Boot(string image, string config)
    {
        var truth = WholeTextTruth.Read(WholeTextTruth.FileOf(image, config));
        var cpuinfo = File.ReadAllText(Path.Combine(WholeTextTruth.Dir, image, config, "cpuinfo"));
        var cpu = KernelCpuDescription.FromCpuInfo(cpuinfo) with { Cpus = truth.Smp };
        return (cpu, truth);
    }

    [SkippableTheory]
    [MemberData(nameof(Configurations))]
    public void A_clean_boot_has_nothing_unexplained(string image, string config)
    {
        Skip.If(image.Length == 0, "no whole-text truth files (tests/data/groundtruth/<image>/<cfg>/run.wtext.gz) in this checkout");
        var img = GroundTruthDumps.Image(image);
        try
        {
            KernelBootPatcher.RulesFor(img);
        }
        catch (KernelPatchException e)
        {
            Skip.If(true, $"no boot-time rules for this kernel line yet (issue 9): {e.Message}");
        }
        var (cpu, truth) = Boot(image, config);
        var cmdline = KernelCommandLine.Parse(truth.CommandLine);
        var text = truth.RebuildText(img);
        ulong at = truth.Text.Address + (ulong)truth.KaslrDelta;
        var r = KernelTextVerifier.Verify(img, text, at, config, cpu with { CommandLine = cmdline });
        Assert.Equal(truth.KaslrDelta, r.Fit.Delta);
        output.WriteLine($"{image}/{config} ({truth.CommandLine}): {r.TextLength} bytes, {r.AsPredictedBytes} as predicted, {r.DynamicBytes} dynamic ({r.DynamicChanged.Length} sites changed), {r.UnexplainedBytes} unexplained, KASLR offset 0x{r.Fit.Delta:x}");
        Assert.True(r.Clean, $"{r.UnexplainedBytes} unexplained bytes in {r.Unexplained.Length} ranges: "
            + string.Join("; ", r.Unexplained.Take(8).Select(u => $"{u.Symbol} [{string.Join(",", u.Sites)}] {Convert.ToHexStringLower(u.Expected.Span)} -> {Convert.ToHexStringLower(u.Found.Span)} ({u.ExpectedCode} -> {u.FoundCode})")));
        Assert.Equal(text.Length, r.TextLength);
        Assert.Equal(r.TextLength, r.AsPredictedBytes + r.DynamicBytes);
        // The running kernel decided some jump labels (initcalls flip keys): seen, and legal.
        Assert.NotEmpty(r.DynamicChanged);
        if (r.Prediction.State.HasMacro("X86_FEATURE_CALL_DEPTH"))
            CallDepthStaticCallsPredicted(img, r);
    }

    /// <summary>
    /// Call depth tracking (6.12, <c>retbleed=stuff</c>): the second <c>static_call_init()</c> aims each static call at its
    /// callee's accounting thunk (<c>callthunks_translate_call_dest()</c>) and writes the thunk into the callee's padding.
    /// The boot is clean (checked above) with those predicted, not allowed: the prediction itself aims static calls one
    /// thunk size before a function, and the paddings still NOPs are dynamic sites (a later static call may write there).
    /// </summary>
    private void CallDepthStaticCallsPredicted(KernelImage img, KernelVerifyResult r)
    {
        var symbols = r.Runtime.Symbols;
        int tsize = Linux612CallThunks.TemplateSize(symbols);
        Assert.True(tsize > 0, "skl_call_thunk_template/skl_call_thunk_tail");
        int thunkCalls = 0;
        foreach (var s in r.Prediction.TextSites.Where(s => s.Kind == KernelSiteKind.StaticCall && s.Length == 5 && s.After.Span[0] == 0xe8))
        {
            ulong target = s.Address + 5 + (ulong)(long)System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(s.After.Span[1..]);
            if (symbols.TryFind(target + (ulong)tsize, out var f, out ulong off) && off == 0 && f.IsText && !f.Name.StartsWith("__pfx_", StringComparison.Ordinal))
                thunkCalls++;
        }
        int pads = r.DynamicSites.Count(d => d.Kind == KernelSiteKind.CallThunk);
        output.WriteLine($"call depth tracking: {thunkCalls} static calls predicted at their callee's accounting thunk, {pads} NOP paddings dynamic (nops or the thunk); {img.Name}");
        Assert.True(thunkCalls > 1000, $"{thunkCalls} static calls aimed at an accounting thunk");
        Assert.True(pads > 1000, $"{pads} padding sites");
    }

    /// <summary>
    /// What a later <c>static_call_update()</c> may do with call depth tracking is legal, and what it cannot do is caught,
    /// on the committed <c>retbleed=stuff</c> boot: its text with a NOP padding given the thunk and a static call aimed at
    /// that thunk (legal: dynamic), a static call aimed one byte past a thunk and a padding holding int3s (unexplained).
    /// </summary>
    [SkippableFact]
    public void Call_depth_tracking_legal_states_allow_a_later_static_call_and_catch_wrong_ones()
    {
        var config = WholeTextTruth.Configurations().FirstOrDefault(c => c.Config.Contains("retbleed-stuff", StringComparison.Ordinal) && !c.Config.Contains("kaslr", StringComparison.Ordinal));
        Skip.If(config.Image is null, "no retbleed=stuff whole-text truth file without KASLR");
        var img = GroundTruthDumps.Image(config.Image);
        var (cpu, truth) = Boot(config.Image, config.Config);
        cpu = cpu with { CommandLine = KernelCommandLine.Parse(truth.CommandLine) };
        var text = truth.RebuildText(img).ToArray();
        ulong at = truth.Text.Address;
        KernelPatchResult? cached = null;
        KernelPatchResult Predict(KernelImage runtime) =>
            cached is { } c && ReferenceEquals(c.Image, runtime) ? c : (cached = KernelTextVerifier.Predict(runtime, cpu));
        var before = KernelTextVerifier.Verify(img, text, at, config.Config, Predict);
        Assert.True(before.Clean);
        var p = before.Prediction;
        int tsize = Linux612CallThunks.TemplateSize(before.Runtime.Symbols);
        int Off(ulong a) => (int)(a - at);
        bool InText(ulong a) => a >= at && a + 8 < at + (ulong)text.Length;

        // two paddings still NOPs, and two static calls already at an accounting thunk (as the boot left them)
        var pads = p.TextSites.Where(s => s.Kind == KernelSiteKind.CallThunk && InText(s.Address)).Take(2).ToArray();
        var calls = p.TextSites.Where(s => s.Kind == KernelSiteKind.StaticCall && s.Length == 5 && InText(s.Address) && s.After.Span[0] == 0xe8
            && text.AsSpan(Off(s.Address), 5).SequenceEqual(s.After.Span)).Take(2).ToArray();
        Assert.Equal(2, pads.Length);
        Assert.Equal(2, calls.Length);
        ulong thunk = pads[0].Address;                  // the function's address - tsize
        // legal: the first padding gets its thunk, the first call aims at it
        pads[0].States.Single(st => st.Name == "accounting thunk").Bytes.Span.CopyTo(text.AsSpan(Off(thunk)));
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(Off(calls[0].Address) + 1), (int)(long)(thunk - (calls[0].Address + 5)));
        // illegal: the second call one byte past that thunk, int3s in the second padding
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(Off(calls[1].Address) + 1), (int)(long)(thunk + 1 - (calls[1].Address + 5)));
        text.AsSpan(Off(pads[1].Address), tsize).Fill(0xcc);

        var after = KernelTextVerifier.Verify(img, text, at, config.Config, Predict);
        output.WriteLine($"{config.Config}: {after.UnexplainedBytes} unexplained bytes in {after.Unexplained.Length} ranges; dynamic {after.DynamicBytes} (was {before.DynamicBytes})");
        foreach (var u in after.Unexplained)
            output.WriteLine($"  0x{u.Address:x} {u.Symbol} {Convert.ToHexStringLower(u.Found.Span)} [{string.Join(",", u.Sites)}]");
        Assert.Equal(2, after.Unexplained.Length);
        static bool Overlaps(KernelUnexplainedRange u, ulong a, int n) => u.Address < a + (ulong)n && a < u.Address + (ulong)u.Length;
        Assert.Contains(after.Unexplained, u => Overlaps(u, calls[1].Address, 5));
        Assert.Contains(after.Unexplained, u => Overlaps(u, pads[1].Address, tsize));
        Assert.Contains(after.DynamicChanged, d => d.Site.Address == thunk && d.State == "accounting thunk");
        Assert.Contains(after.DynamicChanged, d => d.Site.Address == calls[0].Address && d.State.EndsWith("'s accounting thunk", StringComparison.Ordinal));
    }
}
