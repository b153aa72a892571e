namespace Altpatch.Tests;

/// <summary>
/// Where the tests find the repository and the shared real kernel images. The repository root is the
/// nearest directory above the test binaries that holds <c>Altpatch.slnx</c>; the images live in
/// <c>../shared/linux/</c> beside it (a worktree <c>/work/wt-x</c> → <c>/work/shared/linux</c>; CI:
/// <c>&lt;root&gt;/p</c> → <c>&lt;root&gt;/shared/linux</c>).
/// </summary>
internal static class TestPaths
{
    /// <summary>The reason given when a test needs the shared images and they are absent.</summary>
    public const string NoSharedImages = "the shared kernel images (../shared/linux next to the repository) are not present";

    private static readonly Lazy<string?> Root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Altpatch.slnx")))
                return dir.FullName;
        }
        return null;
    });

    /// <summary>The repository root (the directory holding Altpatch.slnx), or null when not found.</summary>
    public static string? RepoRoot => Root.Value;

    /// <summary>The shared directory of real kernel images: &lt;repo&gt;/../shared/linux.</summary>
    public static string SharedLinux =>
        Path.GetFullPath(Path.Combine(RepoRoot ?? AppContext.BaseDirectory, "..", "shared", "linux"));

    /// <summary>The Debian 6.1 x86-64 cloud kernel (LZ4 payload).</summary>
    public static string CloudAmd64 => Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-cloud-amd64");

    /// <summary>The Debian 6.1 i386 686 kernel (XZ payload).</summary>
    public static string I386 => Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-686");

    /// <summary>The System.map of a Debian 6.1 flavour's -dbg package (../debs/x/linux-image-FLAVOUR-dbg beside the
    /// repository), for checks that need names a stripped image does not have; tests skip without it.</summary>
    public static string DebugSystemMap(string release) =>
        Path.GetFullPath(Path.Combine(RepoRoot ?? AppContext.BaseDirectory, "..", "debs", "x", $"linux-image-{release}-dbg",
            "usr", "lib", "debug", "boot", $"System.map-{release}"));

    /// <summary>The reason given when a -dbg System.map is absent.</summary>
    public const string NoDebugSystemMap = "the -dbg System.map of the image (../debs/x next to the repository) is not present";

    /// <summary>The Secure Boot-signed twin of <see cref="CloudAmd64"/> (Debian's signed package), fetched by
    /// <c>tools/signed-image/fetch.sh</c> into &lt;repo&gt;/artifacts/signed; <c>ALTPATCH_SIGNED_IMAGE</c> overrides.</summary>
    public static string SignedCloudAmd64 =>
        Environment.GetEnvironmentVariable("ALTPATCH_SIGNED_IMAGE") is { Length: > 0 } p
            ? p
            : Path.Combine(RepoRoot ?? AppContext.BaseDirectory, "artifacts", "signed", "boot", "vmlinuz-6.1.0-50-cloud-amd64");

    /// <summary>The reason given when the signed image is absent.</summary>
    public const string NoSignedImage = "the signed image is not present (run tools/signed-image/fetch.sh; it needs apt-get)";

    /// <summary>Whether both shared images are present.</summary>
    public static bool HaveSharedImages => File.Exists(CloudAmd64) && File.Exists(I386);
}
