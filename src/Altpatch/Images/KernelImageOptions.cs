namespace Altpatch.Images;

/// <summary>How <see cref="KernelImage.Open(string, KernelImageOptions)"/> treats an image.</summary>
public sealed record KernelImageOptions
{
    /// <summary>The defaults: a bzImage whose build CRC-32 does not match is refused.</summary>
    public static KernelImageOptions Default { get; } = new();

    /// <summary>Read a bzImage whose CRC-32 does not match (or cannot be checked) anyway; the result is in
    /// <see cref="KernelImage.Integrity"/> for the caller to warn about.</summary>
    public bool IgnoreCrc { get; init; }
}
