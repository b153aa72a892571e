namespace Altpatch.Images.Verify;

/// <summary>
/// What <c>kernel verify</c> was given cannot be compared with the image: a dump shorter than <c>.text</c>, a base that
/// does not fit the dump (a wrong KASLR offset), the text of a different build, a core file without the kernel's text,
/// or a live system that cannot be read. The message is one line naming the input and saying what is wrong; nothing
/// has been written.
/// </summary>
public sealed class KernelVerifyException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public KernelVerifyException(string message) : base(message) { }
}
