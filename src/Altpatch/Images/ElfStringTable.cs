using System.Text;

namespace Altpatch.Images;

/// <summary>
/// Names from an ELF string table (<c>.shstrtab</c>, <c>.strtab</c>), decoded once per offset and within
/// <see cref="ImageLimits.MaxNameLength"/> and <see cref="ImageLimits.MaxNameCharacters"/>: a table whose entries all
/// name one long unterminated string would otherwise cost entries × length characters.
/// </summary>
internal sealed class ElfStringTable(string file, string table)
{
    private readonly Dictionary<uint, string> byOffset = [];
    private long totalCharacters;

    /// <summary>The NUL-terminated name at <paramref name="offset"/> ("" past the end; an unterminated name runs to the end).</summary>
    /// <exception cref="ImageFormatException">The name is too long, or the names decoded so far exceed the budget.</exception>
    public string Get(ReadOnlySpan<byte> bytes, uint offset)
    {
        if (offset >= (uint)bytes.Length)
            return "";
        if (byOffset.TryGetValue(offset, out var known))
            return known;
        var s = bytes[(int)offset..];
        int z = s.IndexOf((byte)0);
        int length = z < 0 ? s.Length : z;
        if (length > ImageLimits.MaxNameLength)
            throw new ImageFormatException($"{file}: {table}: the name at offset 0x{offset:x} is longer than {ImageLimits.MaxNameLength} bytes; corrupt");
        totalCharacters += length;
        if (totalCharacters > ImageLimits.MaxNameCharacters)
            throw new ImageFormatException($"{file}: {table}: the names take more than {ImageLimits.MaxNameCharacters} characters; corrupt");
        var name = Encoding.UTF8.GetString(s[..length]);
        byOffset[offset] = name;
        return name;
    }
}
