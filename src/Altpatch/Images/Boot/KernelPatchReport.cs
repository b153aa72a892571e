using System.Globalization;
using System.Text.Json;

namespace Altpatch.Images.Boot;

/// <summary>
/// The JSON report of a kernel patch (what <c>altpatch kernel patch --report</c> writes), its schema in one place:
/// the image and its rules and numbering, the CPU as derived (identity, visible flags and bugs, hidden bits, the
/// capability words), the derivation's decisions, the text passes' decisions (<c>textDecisions</c>: jump labels, static calls,
/// ftrace, the <c>preempt=</c> mode, the boot's static-call updates), the chosen return thunk and every thunk found, each pass, and every
/// site with its bytes before and after and the passes that wrote them. Addresses are <c>"0x…"</c> strings, bytes
/// lower-case hex. <c>docs/cli.md</c> describes the fields.
/// </summary>
public static class KernelPatchReport
{
    /// <summary>Writes the report of <paramref name="result"/> as one JSON object.</summary>
    /// <param name="w">Where to write (the caller chooses indentation and escaping).</param>
    /// <param name="result">The patch.</param>
    /// <param name="outputPath">Where the patched vmlinux was written (recorded as <c>output</c>).</param>
    /// <param name="outputSize">The size of the file written (<c>outputSize</c>): the payload, and a <c>.symtab</c> when one was added.</param>
    /// <param name="outputSymbols">How many symbols its <c>.symtab</c> holds (<c>outputSymbols</c>; 0 without one).</param>
    public static void Write(Utf8JsonWriter w, KernelPatchResult result, string outputPath, long outputSize, int outputSymbols)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(result);
        var r = result;
        var s = r.State;
        var cpu = s.Features;
        w.WriteStartObject();
        w.WriteString("image", r.Image.Name);
        w.WriteString("version", r.Image.Version?.Release);
        w.WriteString("architecture", r.Image.Architecture.MachineName());
        w.WriteString("rules", r.Rules);
        w.WriteString("rulesReference", r.Line.Reference);
        if (r.Warning is { } warning)
            w.WriteString("warning", warning);
        w.WriteString("numbering", r.Numbering.Description);
        w.WriteString("output", outputPath);
        w.WriteNumber("outputSize", outputSize);
        w.WriteNumber("outputSymbols", outputSymbols);
        w.WriteString("cmdline", s.CommandLine.Text);
        KernelReportJson.WriteCpu(w, s);
        w.WriteStartArray("decisions");
        foreach (var d in s.Decisions)
            w.WriteStringValue(d);
        w.WriteEndArray();
        if (r.Preempt is { } preempt)
            w.WriteString("preempt", preempt.ToString().ToLowerInvariant());
        w.WriteStartArray("textDecisions");
        foreach (var d in r.TextDecisions)
            w.WriteStringValue(d);
        w.WriteEndArray();
        w.WriteStartObject("returnThunk");
        w.WriteString("name", s.ReturnThunk.Symbol());
        if (r.Thunks.Address(s.ReturnThunk) is { } ta)
            w.WriteString("address", Address(ta));
        w.WriteEndObject();
        w.WriteStartObject("thunks");
        foreach (var (symbol, address) in r.Thunks.Symbols)
        {
            if (address is { } a)
                w.WriteString(symbol, Address(a));
            else
                w.WriteNull(symbol);
        }
        w.WriteEndObject();
        w.WriteStartArray("passes");
        foreach (var p in r.Passes)
        {
            w.WriteStartObject();
            w.WriteString("pass", p.Pass.ShortName());
            w.WriteString("function", r.Line.KernelFunction(p.Pass));
            w.WriteNumber("sites", p.Sites);
            w.WriteNumber("pokes", p.Pokes);
            w.WriteNumber("bytes", p.Bytes);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("sites");
        foreach (var site in r.Sites())
        {
            w.WriteStartObject();
            w.WriteString("kind", site.Kind.ShortName());
            w.WriteNumber("index", site.Index);
            w.WriteString("address", Address(site.Address));
            w.WriteNumber("length", site.Before.Length);
            w.WriteString("before", Convert.ToHexStringLower(site.Before.Span));
            w.WriteString("after", Convert.ToHexStringLower(site.After.Span));
            w.WriteStartArray("writers");
            foreach (var p in site.Writers)
                w.WriteStringValue(p.ShortName());
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.Flush();
    }

    private static string Address(ulong a) => string.Create(CultureInfo.InvariantCulture, $"0x{a:x}");
}
