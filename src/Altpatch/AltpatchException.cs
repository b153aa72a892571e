namespace Altpatch;

/// <summary>
/// Base of every error Altpatch reports for bad input or an impossible request. Each failure family
/// (sites and plans, CPU descriptions, images, native calls) has its own subclass; the message names
/// the site (address, table, index) or the input and says what is wrong, in one line.
/// </summary>
/// <remarks>The CLI prints <see cref="Exception.Message"/> as a one-line error and exits non-zero.</remarks>
public abstract class AltpatchException : Exception
{
    /// <summary>Creates the exception with a one-line message.</summary>
    protected AltpatchException(string message) : base(message) { }

    /// <summary>Creates the exception with a one-line message and the error that caused it.</summary>
    protected AltpatchException(string message, Exception? inner) : base(message, inner) { }
}
