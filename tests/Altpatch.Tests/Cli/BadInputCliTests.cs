namespace Altpatch.Tests.Cli;

/// <summary>Bad CPU descriptions on the command line: one line naming the file, exit 1, nothing written.</summary>
public sealed class BadInputCliTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-badcli-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    [Theory]
    [InlineData("processor : 0\nvendor_id : GenuineIntel\n", "not a /proc/cpuinfo text: the first processor block has no 'flags' line")]
    [InlineData("processor : 0\ncpu family : six\nflags : fpu\n", "/proc/cpuinfo line 2: 'cpu family' is not a number: 'six'")]
    [InlineData("\u0000\u00ff\u0001garbage", "not a /proc/cpuinfo text: the first processor block has no 'flags' line")]
    public void Bad_cpuinfo_files_are_one_line_naming_the_file(string text, string problem)
    {
        string cpuinfo = Path.Combine(dir, "cpuinfo"), output = Path.Combine(dir, "out");
        File.WriteAllText(cpuinfo, text);
        var (exit, stdout, err) = CliRunner.Run("cpu", "--cpuinfo", cpuinfo);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);
        Assert.Equal($"altpatch: error: {cpuinfo}: {problem}", err.TrimEnd());

        // kernel patch checks the description before it reads the image: the image need not even exist.
        (exit, stdout, err) = CliRunner.Run("kernel", "patch", Path.Combine(dir, "vmlinuz"), "--cpuinfo", cpuinfo, "-o", output);
        Assert.Equal(1, exit);
        Assert.Equal($"altpatch: error: {cpuinfo}: {problem}", err.TrimEnd());
        Assert.False(File.Exists(output));
    }
}
