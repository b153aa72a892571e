namespace Altpatch.Images.Boot;

/// <summary>
/// An image cannot be patched as asked as a whole (rather than at one site, which is a
/// <see cref="Text.PatchException"/>): its kernel version has no implemented rules, its feature numbering is not the
/// one Altpatch knows, or something the requested boot needs (a symbol for the KVM pv_ops) is missing. The message is
/// one line that names the image and the problem.
/// </summary>
public sealed class KernelPatchException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public KernelPatchException(string message) : base(message) { }
}
