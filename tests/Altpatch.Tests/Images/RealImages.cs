using Altpatch.Images;

namespace Altpatch.Tests.Images;

/// <summary>The two shared Debian 6.1 images, opened once per test run (the XZ one takes about a second).</summary>
internal static class RealImages
{
    private static readonly Lazy<KernelImage> Amd64 = new(() => KernelImage.Open(TestPaths.CloudAmd64));
    private static readonly Lazy<KernelImage> X86 = new(() => KernelImage.Open(TestPaths.I386));

    public static KernelImage CloudAmd64
    {
        get
        {
            Skip.IfNot(File.Exists(TestPaths.CloudAmd64), TestPaths.NoSharedImages);
            return Amd64.Value;
        }
    }

    public static KernelImage I386
    {
        get
        {
            Skip.IfNot(File.Exists(TestPaths.I386), TestPaths.NoSharedImages);
            return X86.Value;
        }
    }

    public static KernelImage Get(string which) => which == "amd64" ? CloudAmd64 : I386;
}
