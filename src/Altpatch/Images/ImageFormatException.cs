namespace Altpatch.Images;

/// <summary>
/// A kernel image, ELF file, compressed payload or patch table is malformed, truncated or of a kind
/// Altpatch does not read. The message is one line that names the file and the place (section,
/// table, entry index, address or file offset) and says what is wrong.
/// </summary>
public sealed class ImageFormatException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public ImageFormatException(string message) : base(message) { }

    /// <summary>Creates the exception with a one-line message and the error that caused it
    /// (typically a decompressor's own exception).</summary>
    public ImageFormatException(string message, Exception? inner) : base(message, inner) { }
}
