using System.Globalization;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.TortureChild;
using Xunit.Abstractions;

namespace Altpatch.Tests.Live;

/// <summary>
/// Threads call functions in a loop while the live poker switches their code between sequences with
/// different instruction boundaries. Every call must return one of the two valid results, nothing may
/// crash, and every call is accounted for. ALTPATCH_TORTURE_FLIPS sets the number of multi-instruction
/// site switches (default 100,000; the long mode is 1,000,000).
/// </summary>
[Collection(LiveCollection.Name)]
public class LiveTortureTests(ITestOutputHelper output)
{
    private static long Flips =>
        long.TryParse(Environment.GetEnvironmentVariable("ALTPATCH_TORTURE_FLIPS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long n) && n > 0
            ? n : 100_000;

    [Fact]
    public void Threads_running_the_sites_never_see_a_torn_site()
    {
        const int Threads = 3;
        using var torture = new Torture(multi: 32, immediate: 16, @long: 16);
        var before = torture.Memory.Code.ToArray();
        long trapsBefore = TrapHandler.TrapsHandled, insideBefore = TrapHandler.ProbesInside;
        var poker = new LivePoker();

        var r = torture.Run(poker, Flips, Threads);

        output.WriteLine(r.ToString());
        output.WriteLine($"traps handled: {TrapHandler.TrapsHandled - trapsBefore}, chained: {TrapHandler.TrapsChained}, probes sent: {TrapHandler.ProbesSent}, answered: {TrapHandler.ProbesAnswered}, " +
                         $"threads found stopped inside a site: {TrapHandler.ProbesInside - insideBefore}");
        Assert.True(r.Wrong == 0, $"{r.Wrong} calls returned a wrong result; first: {r.FirstWrong}");
        Assert.True(r.MultiFlips >= Flips);
        for (int t = 0; t < Threads; t++)
        {
            Assert.True(r.Calls[t] > 0, $"thread {t} made no call");
            Assert.Equal(r.Calls[t], r.Valid[t]); // every call accounted for: none lost, none invalid
        }
        Assert.Equal(r.TotalCalls, r.Seen.Sum());
        Assert.All(r.Seen, n => Assert.True(n > 0, "both versions of both kinds of site must have run"));
        Assert.True(r.ProbedBatches > 0);
        Assert.True(TrapHandler.TrapsHandled > trapsBefore, "threads must have met the int3s");
        Assert.Equal(before, torture.Memory.Code.ToArray()); // the torture ends where it began, exactly
    }
}
