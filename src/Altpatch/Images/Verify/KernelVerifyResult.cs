using System.Collections.Immutable;
using Altpatch.Images.Boot;

namespace Altpatch.Images.Verify;

/// <summary>The classes of <c>.text</c> bytes <c>kernel verify</c> reports.</summary>
public enum KernelByteClass
{
    /// <summary>Equal to the prediction (boot patching for the CPU and command line, at the runtime address).</summary>
    AsPredicted,
    /// <summary>A site the running kernel decides, in a legal state other than the predicted one (a jump label flipped, a
    /// static call updated, a function traced).</summary>
    Dynamic,
    /// <summary>Neither: a change nothing in the kernel's own patching explains.</summary>
    Unexplained,
}

/// <summary>One range of unexplained bytes.</summary>
/// <param name="Address">Runtime address of the first byte.</param>
/// <param name="Length">Bytes in the range (differing bytes closer than <see cref="KernelTextVerifier.MergeGap"/> are one range).</param>
/// <param name="Symbol">The address as <c>%pS</c> prints it ("do_one_initcall+0x1a/0x220"), or the bare address.</param>
/// <param name="Expected">The predicted bytes.</param>
/// <param name="Found">The bytes found.</param>
/// <param name="ExpectedCode">The predicted instructions that cover the range, disassembled ("nop dword ptr [rax+rax]").</param>
/// <param name="FoundCode">The instructions found there, decoded from the same boundary.</param>
/// <param name="Sites">The sites the range overlaps ("alt #12", "jump #3 in no legal state"); empty outside every site.</param>
public sealed record KernelUnexplainedRange(ulong Address, int Length, string Symbol, ReadOnlyMemory<byte> Expected, ReadOnlyMemory<byte> Found,
    string ExpectedCode, string FoundCode, ImmutableArray<string> Sites);

/// <summary>A dynamic site found in a legal state other than the predicted one.</summary>
/// <param name="Site">The site.</param>
/// <param name="State">The state it is in ("jmp to its target", "call ftrace_regs_caller", …).</param>
/// <param name="Found">Its bytes.</param>
/// <param name="Symbol">Its address as <c>%pS</c>.</param>
public sealed record KernelDynamicObservation(KernelDynamicSite Site, string State, ReadOnlyMemory<byte> Found, string Symbol);

/// <summary>How long one step of <see cref="KernelTextVerifier"/> took.</summary>
/// <param name="Name">The step: "check", "relocate", "predict", "compare".</param>
/// <param name="Time">Its duration.</param>
public readonly record struct KernelVerifyStep(string Name, TimeSpan Time);

/// <summary>The outcome of <see cref="KernelTextVerifier"/>: every byte of <c>.text</c> classified.</summary>
public sealed class KernelVerifyResult
{
    internal KernelVerifyResult(KernelImage image, KernelImage runtime, KernelPatchResult prediction, string source, ulong textAddress,
        KernelTextFit fit, int textLength, long dynamicBytes, long unexplainedBytes, ImmutableArray<KernelUnexplainedRange> unexplained,
        ImmutableArray<KernelDynamicObservation> dynamicChanged, ImmutableArray<KernelDynamicSite> dynamicSites, ImmutableArray<KernelVerifyStep> steps)
    {
        Image = image;
        Runtime = runtime;
        Prediction = prediction;
        Source = source;
        TextAddress = textAddress;
        Fit = fit;
        TextLength = textLength;
        DynamicBytes = dynamicBytes;
        UnexplainedBytes = unexplainedBytes;
        Unexplained = unexplained;
        DynamicChanged = dynamicChanged;
        DynamicSites = dynamicSites;
        Steps = steps;
    }

    /// <summary>The image as opened (link addresses).</summary>
    public KernelImage Image { get; }

    /// <summary>The image at its runtime address (<see cref="KernelImage.Relocate"/>); <see cref="Image"/> when not moved.</summary>
    public KernelImage Runtime { get; }

    /// <summary>The boot passes run on <see cref="Runtime"/>: the predicted text, the CPU, the sites.</summary>
    public KernelPatchResult Prediction { get; }

    /// <summary>Where the text came from, for people ("dump.bin", "core.elf at 0x…", "/proc/kcore").</summary>
    public string Source { get; }

    /// <summary>Runtime address of <c>.text</c>.</summary>
    public ulong TextAddress { get; }

    /// <summary>The KASLR offset and how well the dump fit the image.</summary>
    public KernelTextFit Fit { get; }

    /// <summary>Bytes of <c>.text</c> compared.</summary>
    public int TextLength { get; }

    /// <summary>Bytes equal to the prediction.</summary>
    public long AsPredictedBytes => TextLength - DynamicBytes - UnexplainedBytes;

    /// <summary>Bytes of dynamic sites in a legal state other than the predicted one (whole sites).</summary>
    public long DynamicBytes { get; }

    /// <summary>Bytes in <see cref="Unexplained"/> ranges that differ from the prediction.</summary>
    public long UnexplainedBytes { get; }

    /// <summary>Bytes of a class.</summary>
    public long Bytes(KernelByteClass c) => c switch
    {
        KernelByteClass.AsPredicted => AsPredictedBytes,
        KernelByteClass.Dynamic => DynamicBytes,
        _ => UnexplainedBytes,
    };

    /// <summary>The unexplained ranges, by address.</summary>
    public ImmutableArray<KernelUnexplainedRange> Unexplained { get; }

    /// <summary>The dynamic sites found in a legal state other than the predicted one, by address.</summary>
    public ImmutableArray<KernelDynamicObservation> DynamicChanged { get; }

    /// <summary>Every dynamic site of the prediction, by address.</summary>
    public ImmutableArray<KernelDynamicSite> DynamicSites { get; }

    /// <summary>The steps and their times.</summary>
    public ImmutableArray<KernelVerifyStep> Steps { get; }

    /// <summary>Whether nothing is unexplained.</summary>
    public bool Clean => Unexplained.IsEmpty;
}
