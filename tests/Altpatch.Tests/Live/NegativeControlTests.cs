using System.Diagnostics;
using Xunit.Abstractions;

namespace Altpatch.Tests.Live;

/// <summary>
/// The same torture with a naive poker (a byte-by-byte copy through the RW alias, no int3, no
/// serialisation) must fail: crash or return a wrong result. So must the kernel's int3 protocol
/// without the probe for threads stopped inside a site: it is only right for single instructions.
/// They run in a child process (Altpatch.TortureChild, built with the tests and copied next to them)
/// because failing means crashing. The same child with the live poker must pass, so the harness is
/// not what fails.
/// </summary>
[Collection(LiveCollection.Name)]
public class NegativeControlTests(ITestOutputHelper output)
{
    internal static (int Exit, string Out) Child(params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "Altpatch.TortureChild.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: the test project references Altpatch.TortureChild so that it is built and copied");
        var psi = new ProcessStartInfo(DotnetHost()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"child {string.Join(' ', args)} did not finish within 3 minutes");
        }
        p.WaitForExit();
        return (p.ExitCode, (stdout.Result + stderr.Result).Trim());
    }

    private static string DotnetHost()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host;
        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
        return "dotnet";
    }

    private static string Describe(int exit) => exit switch
    {
        0 => "passed",
        3 => "wrong result",
        > 128 => $"killed by signal {exit - 128}",
        _ => $"exit {exit}",
    };

    private int Failures(string poker, string multi, string immediate, string @long)
    {
        const int Runs = 4;
        int failures = 0;
        for (int i = 0; i < Runs; i++)
        {
            var (exit, text) = Child("torture", poker, "20000", "3", multi, immediate, @long);
            output.WriteLine($"{poker} run {i + 1}: {Describe(exit)}  {text.Split('\n')[0]}");
            Assert.True(exit is 0 or 3 or > 128, $"the child failed to run: exit {exit}: {text}");
            if (exit != 0) failures++;
        }
        output.WriteLine($"{poker} poker failed {failures} of {Runs} runs");
        return failures;
    }

    [Fact]
    public void A_naive_poker_breaks_threads_running_the_sites_and_the_live_poker_does_not()
    {
        int failures = Failures("naive", "16", "16", "0");
        Assert.True(failures > 0, "the naive poker never failed: the torture does not detect torn sites");

        var (liveExit, liveText) = Child("torture", "live", "10000", "3", "16", "16", "8");
        output.WriteLine($"live run: {Describe(liveExit)}  {liveText}");
        Assert.True(liveExit == 0, $"the live poker failed in the same harness: {Describe(liveExit)}: {liveText}");
    }

    [Fact]
    public void The_int3_protocol_without_the_probe_breaks_threads_stopped_inside_multi_instruction_sites()
    {
        // Single-instruction sites are safe without the probe; the multi-instruction ones are not: a
        // thread preempted inside one resumes at an old boundary in the middle of the new bytes.
        int failures = Failures("kernel", "16", "0", "16");
        Assert.True(failures > 0, "the int3 protocol without the probe never failed: the torture does not reach threads stopped inside sites");
    }
}
