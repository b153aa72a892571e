using System.Text.Json;
using Altpatch.Images.Boot;

namespace Altpatch.Images.Verify;

/// <summary>The JSON of <c>kernel verify --json</c> (docs/verify.md, "JSON"): the same as the text output, as data.</summary>
public static class KernelVerifyReport
{
    /// <summary>Writes the report of <paramref name="r"/> as one JSON object.</summary>
    /// <param name="w">The writer.</param>
    /// <param name="r">The result.</param>
    /// <param name="sourceKind">How the text was read: "text", "memory" or "live".</param>
    /// <param name="commandLine">The kernel command line the prediction used ("" for none).</param>
    /// <param name="steps">Steps the caller ran before <see cref="KernelTextVerifier"/> (opening the image, reading the dump), in order.</param>
    public static void Write(Utf8JsonWriter w, KernelVerifyResult r, string sourceKind, string commandLine, IEnumerable<KernelVerifyStep> steps)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(r);
        ArgumentNullException.ThrowIfNull(steps);
        var img = r.Image;
        var p = r.Prediction;
        var text = KernelTextLocator.TextSection(img);
        w.WriteStartObject();
        w.WriteString("image", img.Name);
        w.WriteString("version", img.Version?.Release);
        w.WriteString("architecture", img.Architecture == KernelArchitecture.X86_64 ? "x86_64" : "i386");
        w.WriteString("rules", p.Rules);
        w.WriteStartObject("source");
        w.WriteString("kind", sourceKind);
        w.WriteString("name", r.Source);
        w.WriteEndObject();
        w.WriteStartObject("text");
        w.WriteString("address", Addr(r.TextAddress));
        w.WriteString("linkAddress", Addr(text.Address));
        w.WriteString("kaslrOffset", Addr((ulong)r.Fit.Delta));
        w.WriteNumber("length", r.TextLength);
        w.WriteNumber("bytesEqualToImage", Math.Round(r.Fit.MatchingBytes, 6));
        w.WriteNumber("relocatedFields", r.Fit.RelocatedFields);
        w.WriteNumber("relocatedFieldsAgreeing", r.Fit.FieldsAgreeing);
        w.WriteEndObject();

        var s = p.State;
        KernelReportJson.WriteCpu(w, s);
        w.WriteString("cmdline", commandLine);
        if (p.Preempt is { } mode)
            w.WriteString("preempt", mode.ToString().ToLowerInvariant());
        w.WriteStartArray("decisions");
        foreach (var d in s.Decisions.Concat(p.TextDecisions))
            w.WriteStringValue(d);
        w.WriteEndArray();

        w.WriteBoolean("clean", r.Clean);
        w.WriteStartObject("bytes");
        w.WriteNumber("asPredicted", r.AsPredictedBytes);
        w.WriteNumber("dynamic", r.DynamicBytes);
        w.WriteNumber("unexplained", r.UnexplainedBytes);
        w.WriteEndObject();
        w.WriteStartObject("dynamicSites");
        foreach (var g in r.DynamicSites.GroupBy(x => x.Kind).OrderBy(g => g.Key))
        {
            w.WriteStartObject(g.Key.ShortName());
            w.WriteNumber("sites", g.Count());
            w.WriteNumber("changed", r.DynamicChanged.Count(o => o.Site.Kind == g.Key));
            w.WriteEndObject();
        }
        w.WriteEndObject();
        WriteClasses(w, r.DynamicChanged, r.Unexplained);
        w.WriteStartArray("steps");
        foreach (var step in steps.Concat(r.Steps))
        {
            w.WriteStartObject();
            w.WriteString("name", step.Name);
            w.WriteNumber("ms", Math.Round(step.Time.TotalMilliseconds, 1));
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.Flush();
    }

    /// <summary>The "dynamic" and "unexplained" arrays, shared by the kernel's and a module's report.</summary>
    internal static void WriteClasses(Utf8JsonWriter w, IEnumerable<KernelDynamicObservation> dynamicChanged, IEnumerable<KernelUnexplainedRange> unexplained)
    {
        w.WriteStartArray("dynamic");
        foreach (var o in dynamicChanged)
        {
            w.WriteStartObject();
            w.WriteString("address", Addr(o.Site.Address));
            w.WriteNumber("length", o.Site.Length);
            w.WriteString("kind", o.Site.Kind.ShortName());
            w.WriteNumber("index", o.Site.Index);
            w.WriteString("symbol", o.Symbol);
            w.WriteString("detail", o.Site.Detail);
            w.WriteString("state", o.State);
            w.WriteString("predicted", Convert.ToHexStringLower(o.Site.Initial.Span));
            w.WriteString("found", Convert.ToHexStringLower(o.Found.Span));
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("unexplained");
        foreach (var u in unexplained)
        {
            w.WriteStartObject();
            w.WriteString("address", Addr(u.Address));
            w.WriteNumber("length", u.Length);
            w.WriteString("symbol", u.Symbol);
            w.WriteString("expected", Convert.ToHexStringLower(u.Expected.Span));
            w.WriteString("found", Convert.ToHexStringLower(u.Found.Span));
            w.WriteString("expectedCode", u.ExpectedCode);
            w.WriteString("foundCode", u.FoundCode);
            w.WriteStartArray("sites");
            foreach (var site in u.Sites)
                w.WriteStringValue(site);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>Writes a module verification (<c>kernel verify --module --json</c>): the module, the section, the byte
    /// classes, the dynamic sites seen in another legal state and the unexplained ranges.</summary>
    /// <param name="w">The writer.</param>
    /// <param name="r">The result.</param>
    public static void WriteModule(Utf8JsonWriter w, KernelModuleVerifyResult r)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(r);
        var m = r.Loaded.Link.Module;
        w.WriteStartObject();
        w.WriteString("module", m.Name);
        w.WriteString("file", m.FileName);
        w.WriteString("vermagic", m.Vermagic?.TrimEnd());
        w.WriteString("image", r.Loaded.Kernel.Image.Name);
        w.WriteString("kaslrOffset", Addr((ulong)r.Loaded.Kernel.Image.RelocationDelta));
        w.WriteString("source", r.Source);
        w.WriteString("section", r.Section);
        w.WriteString("address", Addr(r.Address));
        w.WriteNumber("length", r.Length);
        w.WriteBoolean("clean", r.Clean);
        w.WriteStartObject("bytes");
        w.WriteNumber("asPredicted", r.AsPredictedBytes);
        w.WriteNumber("dynamic", r.DynamicBytes);
        w.WriteNumber("unexplained", r.UnexplainedBytes);
        w.WriteEndObject();
        w.WriteNumber("dynamicSites", r.DynamicSites.Length);
        WriteClasses(w, r.DynamicChanged, r.Unexplained);
        w.WriteEndObject();
        w.Flush();
    }

    private static string Addr(ulong a) => $"0x{a:x}";
}
