using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.TortureChild;
using Xunit.Abstractions;

namespace Altpatch.Tests.Live;

/// <summary>While threads run code that is being live-patched, no mapping of the process is ever writable and executable.</summary>
[Collection(LiveCollection.Name)]
public class WriteXorExecuteTests(ITestOutputHelper output)
{
    [Fact]
    public void No_mapping_is_ever_writable_and_executable_while_patching_live()
    {
        using var torture = new Torture(multi: 16, immediate: 16);
        int stop = 0, samples = 0;
        var violations = new List<string>();
        var sampler = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                foreach (var r in MemoryMap.Read().Regions)
                    if ((r.Protection & (MapProtection.Write | MapProtection.Execute)) == (MapProtection.Write | MapProtection.Execute))
                        lock (violations) violations.Add($"0x{r.Start:x}-0x{r.End:x} {r.Permissions} {r.Path}");
                samples++;
            }
        }) { IsBackground = true, Name = "maps-sampler" };
        sampler.Start();
        TortureResult result;
        try { result = torture.Run(new LivePoker(), 8_000, threads: 2); }
        finally
        {
            Volatile.Write(ref stop, 1);
            sampler.Join();
        }
        output.WriteLine($"{samples} samples of /proc/self/maps during {result}");
        Assert.Equal(0, result.Wrong);
        Assert.True(samples > 0);
        Assert.True(violations.Count == 0, "writable and executable: " + string.Join("; ", violations.Distinct()));
        Assert.Equal("r-xs", Run.Permissions(torture.Memory.Address));
        Assert.Equal("rw-s", Run.Permissions((ulong)torture.Memory.WritableAddress));
        var (start, _) = TrapHandler.CodeRange;
        Assert.Equal("r-xs", Run.Permissions(start));
    }
}
