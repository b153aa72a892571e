using Altpatch.Tests.Live;
using Xunit.Abstractions;

namespace Altpatch.Tests.Hooks;

/// <summary>
/// The hook torture in a child process (failing means crashing): what peers do (mprotect the page RWX, copy the jump,
/// mprotect it back) must break threads that run the function; NativeHook, writing the same bytes, must not.
/// </summary>
[Collection(LiveCollection.Name)]
public class HookNegativeControlTests(ITestOutputHelper output)
{
    [Fact]
    public void Mprotect_and_a_plain_copy_of_the_jump_break_running_threads_and_NativeHook_does_not()
    {
        int failures = 0;
        for (int i = 0; i < 3; i++)
        {
            var (exit, text) = NegativeControlTests.Child("hook-torture", "naive", "2000", "2");
            output.WriteLine($"naive run {i + 1}: exit {exit} {text.Split('\n')[0]}");
            Assert.True(exit is 0 or 3 or > 128, $"the child failed to run: exit {exit}: {text}");
            if (exit != 0) failures++;
        }
        Assert.True(failures > 0, "the naive hook never failed: the torture does not detect torn prologues");

        var (liveExit, liveText) = NegativeControlTests.Child("hook-torture", "live", "2000", "2");
        output.WriteLine($"live run: exit {liveExit} {liveText}");
        Assert.True(liveExit == 0, $"NativeHook failed in the same harness: exit {liveExit}: {liveText}");
    }
}
