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
        if (!r.Clean && r.Prediction.State.HasMacro("X86_FEATURE_CALL_DEPTH"))
            CallDepthStaticCallsOnly(img, r);
        Assert.True(r.Clean, $"{r.UnexplainedBytes} unexplained bytes in {r.Unexplained.Length} ranges: "
            + string.Join("; ", r.Unexplained.Take(8).Select(u => $"{u.Symbol} [{string.Join(",", u.Sites)}] {Convert.ToHexStringLower(u.Expected.Span)} -> {Convert.ToHexStringLower(u.Found.Span)} ({u.ExpectedCode} -> {u.FoundCode})")));
        Assert.Equal(text.Length, r.TextLength);
        Assert.Equal(r.TextLength, r.AsPredictedBytes + r.DynamicBytes);
        // The running kernel decided some jump labels (initcalls flip keys): seen, and legal.
        Assert.NotEmpty(r.DynamicChanged);
    }

    /// <summary>
    /// Call depth tracking (6.12, <c>retbleed=stuff</c>): after <c>callthunks_patch_builtin_calls()</c>, every
    /// <c>static_call_update()</c> aims a call at the callee's accounting thunk (<c>callthunks_translate_call_dest()</c>)
    /// and writes that thunk into the callee's padding (<c>patch_dest()</c>). The static-call legal states do not know
    /// that yet (issue 9, the 6.12 static-call work), so such a boot is not clean; this checks that what remains is exactly
    /// those two writes (a range in a function's padding that ends at the function and holds the thunk; a static-call site
    /// whose call aims one thunk size before a function), then skips with that reason.
    /// </summary>
    private void CallDepthStaticCallsOnly(KernelImage img, KernelVerifyResult r)
    {
        var symbols = img.Symbols;
        int tsize = (int)(symbols.AddressOf("skl_call_thunk_tail") - symbols.AddressOf("skl_call_thunk_template"));
        ulong delta = (ulong)r.Fit.Delta;
        int padding = 0, calls = 0;
        var thunkCodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var u in r.Unexplained)
        {
            ulong link = u.Address - delta;
            bool inPadding = symbols.TryFind(link, out var sym, out var offset, out var size) && sym.Name.StartsWith("__pfx_", StringComparison.Ordinal)
                && offset + (ulong)u.Length == size && u.Length <= tsize;
            if (inPadding)
            {
                padding++;
                thunkCodes.Add(u.FoundCode);
                continue;
            }
            Assert.True(u.Sites.Any(s => s.StartsWith("static_call ", StringComparison.Ordinal)),
                $"unexplained outside a padding and a static call: {u.Symbol} {Convert.ToHexStringLower(u.Found.Span)} ({u.FoundCode}) [{string.Join(",", u.Sites)}]");
            // A range may hold several sites' calls (merged): each call in it aims one thunk size before a function.
            var found = u.FoundCode.Split("; ").Where(i => i.StartsWith("call 0x", StringComparison.Ordinal)).ToList();
            Assert.NotEmpty(found);
            foreach (var insn in found)
            {
                ulong target = ulong.Parse(insn.AsSpan(7).TrimEnd(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture) - delta;
                Assert.True(symbols.TryFind(target + (ulong)tsize, out var callee, out var at) && at == 0 && !callee.Name.StartsWith("__pfx_", StringComparison.Ordinal),
                    $"{u.Symbol}: {insn} is not {tsize} bytes before a function");
            }
            calls++;
        }
        // Every padding holds the same thunk: SKL's "sar $5, %gs:__x86_call_depth" (relocated per place, one operand).
        Assert.Single(thunkCodes);
        Assert.StartsWith("sar qword ptr gs:[", thunkCodes.Single(), StringComparison.Ordinal);
        Skip.If(true, $"call depth tracking: {r.UnexplainedBytes} bytes are static_call_update()'s calls to the callees' accounting thunks ({calls} ranges) "
            + $"and the thunks it wrote into their padding ({padding} ranges), which the static-call legal states do not predict yet (issue 9); nothing else is unexplained");
    }
}
