namespace Altpatch.Bench;

/// <summary>Where the benchmarks find the repository and the shared real kernel images (../shared/linux beside it).</summary>
internal static class BenchPaths
{
    /// <summary>The nearest directory above the benchmark's binaries that holds Altpatch.slnx.</summary>
    public static string RepoRoot
    {
        get
        {
            var root = new DirectoryInfo(AppContext.BaseDirectory);
            while (root is not null && !File.Exists(Path.Combine(root.FullName, "Altpatch.slnx")))
                root = root.Parent;
            return root?.FullName ?? throw new InvalidOperationException("repository root (Altpatch.slnx) not found");
        }
    }

    /// <summary>A shared kernel image: &lt;repo&gt;/../shared/linux/NAME.</summary>
    public static string SharedImage(string name) => Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "linux", name));
}
