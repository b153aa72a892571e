namespace Altpatch.Text;

/// <summary>
/// Read access to the code that plans are made for: live process memory or an image's bytes.
/// Planners read the current bytes of each site through it; they never write.
/// </summary>
public interface ICodeReader
{
    /// <summary>
    /// Copies the bytes at [address, address + destination.Length) into <paramref name="destination"/>.
    /// Returns false, with <paramref name="problem"/> saying why, when that range is not readable code.
    /// </summary>
    bool TryRead(ulong address, Span<byte> destination, out string problem);
}
