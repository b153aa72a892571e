using System.CommandLine;
using Altpatch.Cli;

namespace Altpatch.Tests.Cli;

/// <summary>What every command owes its user: <c>--help</c>, and usage errors as one <c>altpatch: error:</c> line with exit code 1.</summary>
public class UsageTests
{
    /// <summary>Every command of the tree, as the words that name it ("kernel sites").</summary>
    public static TheoryData<string> Commands()
    {
        var data = new TheoryData<string>();
        void Walk(Command c, string path)
        {
            data.Add(path);
            foreach (var sub in c.Subcommands)
                Walk(sub, path.Length == 0 ? sub.Name : $"{path} {sub.Name}");
        }
        Walk(Program.BuildRoot(), "");
        return data;
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public void Every_command_has_help(string command)
    {
        string[] words = command.Length == 0 ? [] : command.Split(' ');
        var (exit, stdout, stderr) = CliRunner.Run([.. words, "--help"]);
        Assert.Equal(0, exit);
        Assert.Equal("", stderr);
        Assert.Contains($"altpatch {command}".TrimEnd(), stdout, StringComparison.Ordinal);
        Assert.Contains("Usage:", stdout, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("'bogus'", "altpatch", "bogus")]
    [InlineData("Required command was not provided", "altpatch kernel", "kernel")]
    [InlineData("Required argument missing", "altpatch kernel info", "kernel", "info")]
    [InlineData("'--jsn'", "altpatch cpu", "cpu", "--jsn")]
    [InlineData("'bogus' not recognized. Must be one of: 'alt' 'para' 'lock' 'retpoline' 'return'", "altpatch kernel sites", "kernel", "sites", "x", "--kind", "bogus")]
    [InlineData("give the CPU with either --cpuinfo FILE or --flags LIST", "altpatch kernel patch", "kernel", "patch", "x", "-o", "y")]
    [InlineData("'--output' is required", "altpatch kernel patch", "kernel", "patch", "x", "--flags", "fpu")]
    [InlineData("--flags names no feature", "altpatch kernel patch", "kernel", "patch", "x", "--flags", ",", "-o", "y")]
    [InlineData("--stepping go with --flags", "altpatch kernel patch", "kernel", "patch", "x", "--cpuinfo", "c", "--stepping", "3", "-o", "y")]
    public void Usage_errors_are_one_line_naming_the_help_to_read(string expected, string command, params string[] args)
    {
        var (exit, stdout, stderr) = CliRunner.Run(args);
        Assert.Equal(1, exit);
        Assert.Equal("", stdout);   // no help text mixed into redirected output
        Assert.StartsWith("altpatch: error: ", stderr, StringComparison.Ordinal);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
        Assert.EndsWith($"(see '{command} --help'){Environment.NewLine}", stderr, StringComparison.Ordinal);
        Assert.Single(stderr.TrimEnd().Split('\n'));
    }

    [Fact]
    public void A_cpuinfo_file_that_is_not_one_is_named_in_the_error()
    {
        var path = Path.Combine(Path.GetTempPath(), $"altpatch-not-cpuinfo-{Environment.ProcessId}.txt");
        File.WriteAllText(path, "root:x:0:0:root:/root:/bin/bash\n");
        try
        {
            foreach (var args in new[] { new[] { "cpu", "--cpuinfo", path }, new[] { "kernel", "patch", "x", "--cpuinfo", path, "-o", path + ".out" } })
            {
                var (exit, stdout, stderr) = CliRunner.Run(args);
                Assert.Equal(1, exit);
                Assert.Equal("", stdout);
                Assert.StartsWith($"altpatch: error: {path}: ", stderr, StringComparison.Ordinal);
                Assert.False(File.Exists(path + ".out"));
            }
        }
        finally { File.Delete(path); }
    }
}
