using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Altpatch.Images;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel symbols IMAGE [--name NAME]… [--address ADDR]… [--json] [-o FILE]</c>: the symbols decoded from
/// the image's own kallsyms tables (no symbol table or System.map needed), printed as a System.map; or the symbols of
/// some names; or addresses described as the kernel prints them ("func+0x1a/0x80").
/// </summary>
public static class KernelSymbolsCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var names = new Option<string[]>("--name")
        {
            Description = "Only the symbols of this name (repeatable; every symbol of the name, as static functions repeat). An error when a name has none.",
        };
        var addresses = new Option<string[]>("--address")
        {
            Description = "Describe an address (hex, 0x optional; repeatable) as the kernel prints it: \"func+0x1a/0x80\" (symbol, offset, size), or the address itself when no symbol covers it.",
        };
        var json = KernelCommand.JsonOption("the symbols (with where the kallsyms tables were found)");
        var output = new Option<FileInfo?>("--output", "-o")
        {
            Description = "Write to this file instead of standard output (written to a temporary file next to it and renamed when complete).",
        };
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        var cmd = new Command("symbols",
            "Print a kernel image's symbols, decoded from its own kallsyms tables (a stripped bzImage or vmlinux is enough), in System.map format: \"ffffffff81000000 T _stext\", sorted by address, then name. kallsyms lacks what the kernel leaves out of it (see docs/formats.md).");
        cmd.Arguments.Add(image);
        cmd.Options.Add(names);
        cmd.Options.Add(addresses);
        cmd.Options.Add(json);
        cmd.Options.Add(output);
        cmd.Options.Add(ignoreCrc);
        cmd.Validators.Add(r =>
        {
            foreach (var a in r.GetValue(addresses) ?? [])
            {
                if (!TryParseAddress(a, out _))
                    r.AddError($"--address '{a}' is not a hexadecimal address");
            }
            if ((r.GetValue(names)?.Length ?? 0) > 0 && (r.GetValue(addresses)?.Length ?? 0) > 0)
                r.AddError("--name and --address do not go together");
        });
        cmd.SetAction(parse =>
        {
            var o = parse.GetValue(output);
            if (o is not null)
                CheckTarget(o);
            var img = KernelCommand.Open(parse.GetValue(image)!, parse, ignoreCrc);
            var sw = Stopwatch.StartNew();
            var symbols = img.Symbols;
            var decodeTime = sw.Elapsed;
            var text = Render(img, symbols, parse.GetValue(names) ?? [],
                (parse.GetValue(addresses) ?? []).Select(a => { TryParseAddress(a, out ulong v); return v; }).ToList(),
                parse.GetValue(json));
            if (o is null)
            {
                Terminal.Out(parse).Write(text);
                return 0;
            }
            WriteFile(o, text);
            Terminal.Out(parse).WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Wrote {o.FullName}: {Describe(symbols)}, decoded in {decodeTime.TotalMilliseconds:F0} ms"));
            return 0;
        });
        return cmd;
    }

    /// <summary>"87,182 symbols from kallsyms (6.2-6.3 layout with seqs_of_names, at 0xffffffff8211fad0 in .rodata)".</summary>
    private static string Describe(KernelSymbols s)
    {
        var k = s.Kallsyms!;
        return string.Create(CultureInfo.InvariantCulture, $"{s.Count:N0} symbols from kallsyms ({LayoutName(k.Layout)} layout, in {k.Section})");
    }

    /// <summary>The layout as the CLI and JSON name it.</summary>
    internal static string LayoutName(KallsymsLayout layout) => layout switch
    {
        KallsymsLayout.OffsetsFirst => "offsets-first",
        KallsymsLayout.OffsetsFirstWithSeqs => "offsets-first+seqs",
        _ => "names-first",
    };

    private static bool TryParseAddress(string text, out ulong value)
    {
        var t = text.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return ulong.TryParse(t, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value) && t.Length > 0;
    }

    /// <summary>The symbols in System.map order: by address, then name (nm -n), stable for the rest.</summary>
    internal static List<KernelSymbol> SystemMapOrder(IEnumerable<KernelSymbol> symbols) =>
        [.. symbols.Index().OrderBy(x => x.Item.Address).ThenBy(x => x.Item.Name, StringComparer.Ordinal).ThenBy(x => x.Index).Select(x => x.Item)];

    private static string Render(KernelImage img, KernelSymbols symbols, string[] names, List<ulong> addresses, bool json)
    {
        List<KernelSymbol> list;
        if (names.Length > 0)
        {
            list = [];
            foreach (var n in names)
            {
                var found = symbols.Named(n);
                if (found.Count == 0)
                    throw new KernelSymbolNotFoundException(n, $"{img.Name}: no symbol {n} in its kallsyms" +
                        (symbols.CoversData ? "" : " (built without CONFIG_KALLSYMS_ALL: only text symbols)"));
                list.AddRange(found);
            }
        }
        else
            list = addresses.Count > 0 ? [] : SystemMapOrder(symbols.All);

        var sb = new StringBuilder();
        int width = img.PointerSize;
        if (!json)
        {
            foreach (var a in addresses)
                sb.Append(CultureInfo.InvariantCulture, $"0x{a:x} {symbols.Describe(a)}\n");
            foreach (var s in list)
                sb.Append(s.ToSystemMapLine(width)).Append('\n');
            return sb.ToString();
        }
        using var writer = new StringWriter(sb, CultureInfo.InvariantCulture);
        Terminal.WriteJson(writer, w =>
        {
            w.WriteStartObject();
            w.WriteString("file", img.Name);
            w.WriteString("version", img.Version?.Release);
            w.WriteString("architecture", img.Architecture.MachineName());
            WriteTables(w, symbols.Kallsyms!);
            if (addresses.Count > 0)
            {
                w.WriteStartArray("addresses");
                foreach (var a in addresses)
                {
                    w.WriteStartObject();
                    w.WriteString("address", Terminal.Addr(a));
                    if (symbols.TryFind(a, out var s, out ulong offset, out ulong size))
                    {
                        w.WriteString("symbol", s.Name);
                        w.WriteString("offset", Terminal.Addr(offset));
                        w.WriteString("size", Terminal.Addr(size));
                    }
                    else
                        w.WriteNull("symbol");
                    w.WriteString("text", symbols.Describe(a));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            else
            {
                w.WriteNumber("count", list.Count);
                w.WriteStartArray("symbols");
                foreach (var s in list)
                {
                    w.WriteStartObject();
                    w.WriteString("address", Terminal.Addr(s.Address));
                    w.WriteString("type", s.Type.ToString());
                    w.WriteString("name", s.Name);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
        });
        return sb.ToString();
    }

    private static void WriteTables(Utf8JsonWriter w, KallsymsTables k)
    {
        w.WriteStartObject("kallsyms");
        w.WriteString("layout", LayoutName(k.Layout));
        w.WriteString("section", k.Section);
        w.WriteNumber("count", k.Count);
        w.WriteBoolean("absolutePercpu", k.AbsolutePercpu);
        w.WriteString("relativeBase", Terminal.Addr(k.RelativeBase));
        w.WriteStartObject("tables");
        w.WriteString("kallsyms_offsets", Terminal.Addr(k.Offsets));
        w.WriteString("kallsyms_relative_base", Terminal.Addr(k.RelativeBaseAddress));
        w.WriteString("kallsyms_num_syms", Terminal.Addr(k.NumSyms));
        w.WriteString("kallsyms_names", Terminal.Addr(k.Names));
        w.WriteString("kallsyms_markers", Terminal.Addr(k.Markers));
        if (k.SeqsOfNames is { } seqs)
            w.WriteString("kallsyms_seqs_of_names", Terminal.Addr(seqs));
        w.WriteString("kallsyms_token_table", Terminal.Addr(k.TokenTable));
        w.WriteString("kallsyms_token_index", Terminal.Addr(k.TokenIndex));
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void CheckTarget(FileInfo target)
    {
        string dir = target.DirectoryName ?? ".";
        if (!Directory.Exists(dir))
            throw new DirectoryNotFoundException($"{dir}: no such directory");
        if (Directory.Exists(target.FullName))
            throw new IOException($"{target.FullName}: is a directory");
    }

    /// <summary>Writes <paramref name="text"/> to a temporary file beside <paramref name="target"/> and renames it over the target.</summary>
    private static void WriteFile(FileInfo target, string text)
    {
        string tmp = Path.Combine(target.DirectoryName ?? ".", $".{target.Name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllText(tmp, text, new UTF8Encoding(false));
            File.Move(tmp, target.FullName, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp))
                File.Delete(tmp);
        }
    }
}
