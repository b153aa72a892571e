using System.Globalization;
using System.Text;

namespace Altpatch.Images;

/// <summary>
/// A kernel's version as the image states it: the <c>linux_banner</c> string in the ELF's
/// <c>.rodata</c> ("Linux version 6.1.0-50-cloud-amd64 (debian-kernel@…) (gcc-12 …) #1 SMP
/// PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)"), or the bzImage setup header's kernel_version
/// string (the same text without "Linux version ").
/// </summary>
/// <param name="Banner">The whole string, without its trailing newline.</param>
/// <param name="Release">The release (<c>uname -r</c>): the first word, e.g. "6.1.0-50-cloud-amd64".</param>
/// <param name="Major">Major version from the release (6).</param>
/// <param name="Minor">Minor version from the release (1).</param>
/// <param name="Patch">The third number of the release (for Debian's "6.1.0-50" the ABI's 0, not the upstream sublevel).</param>
public sealed record KernelVersion(string Banner, string Release, int Major, int Minor, int Patch)
{
    /// <summary>The prefix of <c>linux_banner</c>.</summary>
    public const string BannerPrefix = "Linux version ";

    /// <summary>Whether this version is at least <paramref name="major"/>.<paramref name="minor"/>.</summary>
    public bool IsAtLeast(int major, int minor) => Major > major || (Major == major && Minor >= minor);

    /// <summary>Parses a banner or setup-header version string; null when it does not start with a
    /// release of the form <c>N.N</c>.</summary>
    public static KernelVersion? TryParse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string banner = text.TrimEnd('\n', '\r', ' ');
        string rest = banner.StartsWith(BannerPrefix, StringComparison.Ordinal) ? banner[BannerPrefix.Length..] : banner;
        int space = rest.IndexOf(' ', StringComparison.Ordinal);
        string release = space < 0 ? rest : rest[..space];
        var nums = new int[3];
        int k = 0, i = 0;
        while (k < 3 && i < release.Length && char.IsAsciiDigit(release[i]))
        {
            int start = i;
            while (i < release.Length && char.IsAsciiDigit(release[i])) i++;
            if (i - start > 6) return null;
            nums[k++] = int.Parse(release.AsSpan(start, i - start), CultureInfo.InvariantCulture);
            if (i < release.Length && release[i] == '.') i++;
            else break;
        }
        return k < 2 ? null : new KernelVersion(banner, release, nums[0], nums[1], nums[2]);
    }

    /// <summary>Finds <c>linux_banner</c> ("Linux version " followed by a digit) in the ELF's
    /// <c>.rodata</c>, or anywhere in the file when there is no <c>.rodata</c>.</summary>
    /// <remarks>Linux 6.1 links two banners: a weak one from <c>init/version.c</c> whose build number is
    /// still empty ("… # SMP …") and the one used, from <c>init/version-timestamp.c</c> ("… #1 SMP …").
    /// The first banner with a build number ("#" and a digit) wins; else the first banner.</remarks>
    /// <returns>The version, or null when no banner is found.</returns>
    public static KernelVersion? FindBanner(ElfFile elf)
    {
        ArgumentNullException.ThrowIfNull(elf);
        var rodata = elf.FindSection(".rodata");
        ReadOnlySpan<byte> hay = rodata is { HasFileBytes: true } r ? elf.SectionBytes(r).Span : elf.Bytes.Span;
        ReadOnlySpan<byte> needle = "Linux version "u8;
        string? first = null;
        int from = 0;
        for (int found = 0; found < 16; )
        {
            int at = hay[from..].IndexOf(needle);
            if (at < 0)
                break;
            at += from;
            from = at + needle.Length;
            if (from >= hay.Length || !char.IsAsciiDigit((char)hay[from]))
                continue;
            var tail = hay[at..Math.Min(hay.Length, at + 1024)];
            int end = tail.IndexOfAny((byte)0, (byte)'\n');
            if (end <= 0)
                continue;
            found++;
            string banner = Encoding.ASCII.GetString(tail[..end]);
            first ??= banner;
            int hash = banner.IndexOf('#', StringComparison.Ordinal);
            if (hash >= 0 && hash + 1 < banner.Length && char.IsAsciiDigit(banner[hash + 1]))
                return TryParse(banner);
        }
        return first is null ? null : TryParse(first);
    }

    /// <inheritdoc/>
    public override string ToString() => Banner;
}
