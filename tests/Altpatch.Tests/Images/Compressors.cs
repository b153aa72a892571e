using System.Diagnostics;

namespace Altpatch.Tests.Images;

/// <summary>Runs the system's compression tools (gzip, xz, lz4, zstd, bzip2, lzma, lzop) as the kernel's
/// Makefile.lib does, for round-trip tests.</summary>
internal static class Compressors
{
    /// <summary>Tool and arguments per codec, as <c>scripts/Makefile.lib</c> invokes them (smaller xz dictionary).</summary>
    public static (string Tool, string[] Args) Command(string codec) => codec switch
    {
        "gzip" => ("gzip", ["-n", "-9", "-c"]),
        "bzip2" => ("bzip2", ["-9", "-c"]),
        "lzma" => ("lzma", ["-9", "-c"]),
        "xz" => ("xz", ["--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c"]),
        "lz4" => ("lz4", ["-l", "-9", "-c", "-", "-"]),
        "zstd" => ("zstd", ["-19", "-c", "-q"]),
        "lzo" => ("lzop", ["-9", "-c"]),
        _ => throw new ArgumentException(codec),
    };

    public static string? Find(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var p = Path.Combine(dir, tool);
            if (File.Exists(p)) return p;
        }
        return null;
    }

    public static bool Available(string codec) => Find(Command(codec).Tool) is not null;

    public static byte[] Compress(string codec, byte[] input)
    {
        var (tool, args) = Command(codec);
        var psi = new ProcessStartInfo(Find(tool) ?? tool)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(stdout);
        var err = p.StandardError.ReadToEndAsync();
        p.StandardInput.BaseStream.Write(input);
        p.StandardInput.Close();
        copy.Wait();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{tool} failed ({p.ExitCode}): {err.Result}");
        return stdout.ToArray();
    }

    /// <summary>A bzImage payload as the kernel builds it: gzip alone (its ISIZE is the size), every other codec + size_append.</summary>
    public static byte[] Payload(string codec, byte[] input)
    {
        var c = Compress(codec, input);
        return codec == "gzip" ? c : SyntheticBzImage.WithSize(c, input.Length);
    }
}
