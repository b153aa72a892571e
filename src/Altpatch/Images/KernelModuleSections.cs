using System.Collections.Immutable;
using System.Globalization;

namespace Altpatch.Images;

/// <summary>
/// Where each section of a loaded module is: what <c>/sys/module/NAME/sections/</c> shows (one file per allocated
/// section, holding its address), read from a copy of that directory or from lines <c>NAME ADDRESS</c>.
/// </summary>
/// <remarks>The module's per-CPU area (<c>.data..percpu</c>) is not a section the loader places, so sysfs does not list
/// it; a module with per-CPU variables needs a line <c>.data..percpu ADDRESS</c> (the module's per-CPU base,
/// <c>mod-&gt;percpu</c>).</remarks>
public sealed class KernelModuleSections
{
    private KernelModuleSections(string origin, ImmutableDictionary<string, ulong> addresses)
    {
        Origin = origin;
        Addresses = addresses;
    }

    /// <summary>Where the addresses came from (a directory or file name), for messages.</summary>
    public string Origin { get; }

    /// <summary>Section name → load address.</summary>
    public ImmutableDictionary<string, ulong> Addresses { get; }

    /// <summary>The address of a section, or null.</summary>
    public ulong? this[string name] => Addresses.TryGetValue(name, out var a) ? a : null;

    /// <summary>Builds the table from a dictionary.</summary>
    /// <param name="origin">For messages.</param>
    /// <param name="addresses">Section name → address.</param>
    public static KernelModuleSections From(string origin, IEnumerable<KeyValuePair<string, ulong>> addresses)
    {
        ArgumentNullException.ThrowIfNull(origin);
        ArgumentNullException.ThrowIfNull(addresses);
        return new KernelModuleSections(origin, addresses.ToImmutableDictionary(StringComparer.Ordinal));
    }

    /// <summary>Reads a copy of <c>/sys/module/NAME/sections/</c> (a directory) or a file of <c>NAME ADDRESS</c> lines.</summary>
    /// <param name="path">The directory or file.</param>
    /// <exception cref="ImageFormatException">A line or file that is not a section name and a hexadecimal address, an
    /// empty table, or addresses that are all zero (sysfs shows zeros to a reader who is not root).</exception>
    /// <exception cref="IOException">The path cannot be read.</exception>
    public static KernelModuleSections Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
        {
            var d = new Dictionary<string, ulong>(StringComparer.Ordinal);
            foreach (var f in Directory.EnumerateFiles(path).Order(StringComparer.Ordinal))
            {
                string name = Path.GetFileName(f);
                string text = File.ReadAllText(f).Trim();
                d[name] = ParseAddress(text) ?? throw new ImageFormatException($"{f}: '{Short(text)}' is not a hexadecimal address");
            }
            return Check(path, d);
        }
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path}: no such file or directory");
        return Parse(File.ReadAllText(path), Path.GetFileName(path));
    }

    /// <summary>Parses lines <c>NAME ADDRESS</c> (also <c>NAME: ADDRESS</c>, or <c>NAME=ADDRESS</c>); blank lines and
    /// lines starting with <c>#</c> are skipped.</summary>
    /// <param name="text">The lines.</param>
    /// <param name="origin">For messages.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Read"/>.</exception>
    public static KernelModuleSections Parse(string text, string origin)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(origin);
        var d = new Dictionary<string, ulong>(StringComparer.Ordinal);
        int n = 0;
        foreach (var raw in text.Split('\n'))
        {
            n++;
            string line = raw.Trim();
            if (line.Length == 0 || line[0] == '#')
                continue;
            var parts = line.Split([' ', '\t', '=', ':'], StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length != 2 || ParseAddress(parts[1]) is not { } a)
                throw new ImageFormatException($"{origin}: line {n}: '{Short(line)}' is not 'SECTION ADDRESS'");
            if (d.TryGetValue(parts[0], out var prev) && prev != a)
                throw new ImageFormatException($"{origin}: line {n}: section {parts[0]} is given twice (0x{prev:x} and 0x{a:x})");
            d[parts[0]] = a;
        }
        return Check(origin, d);
    }

    private static KernelModuleSections Check(string origin, Dictionary<string, ulong> d)
    {
        if (d.Count == 0)
            throw new ImageFormatException($"{origin}: no sections");
        if (d.Values.All(v => v == 0))
            throw new ImageFormatException($"{origin}: every section address is 0 (/sys/module/*/sections shows zeros to a reader who is not root: copy it as root)");
        return new KernelModuleSections(origin, d.ToImmutableDictionary(StringComparer.Ordinal));
    }

    /// <summary>A hexadecimal address with or without <c>0x</c>, or null.</summary>
    public static ulong? ParseAddress(string s)
    {
        ArgumentNullException.ThrowIfNull(s);
        var t = s.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return t.Length is > 0 and <= 16 && ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v) ? v : null;
    }

    private static string Short(string s) => s.Length > 60 ? s[..60] + "…" : s;
}
