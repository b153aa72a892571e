using System.CommandLine;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;

namespace Altpatch.Cli;

/// <summary>Output helpers shared by the commands: a Spectre console on the invocation's writer, JSON output.</summary>
internal static class Terminal
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The writer the command should print to.</summary>
    public static TextWriter Out(ParseResult parse) => parse.InvocationConfiguration.Output;

    /// <summary>A Spectre console writing to the invocation's output (plain text when not a terminal).</summary>
    public static IAnsiConsole Console(ParseResult parse) => Console(Out(parse));

    /// <summary>A Spectre console writing to <paramref name="writer"/>; colours only on a real terminal.</summary>
    public static IAnsiConsole Console(TextWriter writer)
    {
        bool terminal = ReferenceEquals(writer, System.Console.Out) && !System.Console.IsOutputRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal) console.Profile.Width = 200; // files and pipes: wide tables, no wrapping of 64-bit addresses
        return console;
    }

    /// <summary>Writes <paramref name="node"/> as indented JSON and a newline.</summary>
    public static void Json(ParseResult parse, JsonNode node) => Out(parse).WriteLine(node.ToJsonString(Indented));

    /// <summary>The options of the commands' JSON writers: indented, and no \u escapes for '+', '&lt;' and the like (the output is not HTML).</summary>
    public static JsonWriterOptions JsonOptions => new() { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Writes the JSON document <paramref name="write"/> produces to <paramref name="output"/>, and a newline.</summary>
    public static void WriteJson(TextWriter output, Action<Utf8JsonWriter> write)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, JsonOptions))
            write(w);
        output.WriteLine(Encoding.UTF8.GetString(ms.GetBuffer(), 0, (int)ms.Length));
    }

    /// <summary>One "Key           value" line of a summary (the key column is 14 wide), as plain text.</summary>
    public static void Field(IAnsiConsole console, string key, string value) => console.WriteLine($"{key,-14} {value}");

    /// <summary>Reads a text input (a cpuinfo, a System.map) whole, refusing one above
    /// <see cref="Altpatch.Images.ImageLimits.MaxTextFileSize"/> before reading it.</summary>
    /// <exception cref="IOException">The file is too large or cannot be read.</exception>
    public static string ReadInputText(string path)
    {
        long size = new FileInfo(path).Length;
        if (size > Altpatch.Images.ImageLimits.MaxTextFileSize)
            throw new IOException($"{path}: {size} bytes is more than the {Altpatch.Images.ImageLimits.MaxTextFileSize} bytes (64 MiB) read from a text input");
        return File.ReadAllText(path);
    }

    /// <summary>Hex of a byte span, lower case, no separators.</summary>
    public static string Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);

    /// <summary>Address as 0x-prefixed hex.</summary>
    public static string Addr(ulong a) => $"0x{a:x}";
}
