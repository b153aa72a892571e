namespace Altpatch.Sites;

/// <summary>What every patch site records: where it is, how long it is, and the bytes it started with.</summary>
public interface IPatchSite
{
    /// <summary>Final address of the site: where the code runs.</summary>
    ulong Address { get; }

    /// <summary>Length of the site in bytes.</summary>
    int Length { get; }

    /// <summary>The site's original bytes, <see cref="Length"/> of them.</summary>
    ReadOnlyMemory<byte> Original { get; }
}
