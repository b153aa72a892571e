using Altpatch.Native;
using Altpatch.Tests.Live;
using Xunit.Abstractions;
using static Altpatch.Tests.Hooks.HookTestCode;

namespace Altpatch.Tests.Hooks;

/// <summary>Hooks of real libc functions: install, call, remove, exact bytes.</summary>
[Collection(LiveCollection.Name)]
public unsafe class NativeHookTests(ITestOutputHelper output)
{
    private static byte[] Bytes(nint at, int n) => new ReadOnlySpan<byte>((void*)at, n).ToArray();

    [SkippableFact]
    public void Abs_is_hooked_and_unhooked_with_its_bytes_restored()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        nint abs = Libc("abs");
        var f = (delegate* unmanaged<int, int>)abs;
        using var detours = new Detours();
        var (detour, slot) = detours.Answering(false, unchecked((ulong)Magic), 777, 0);
        var before = Bytes(abs, 16);
        using (var hook = CreateOrSkip(abs, detour))
        {
            detours.SetOriginal(slot, hook);
            Assert.Equal(before, Bytes(abs, 16)); // Create writes nothing
            output.WriteLine($"moved: {hook.MovedInstructions} ({hook.PatchLength} bytes)");
            Assert.Equal(123457, ((delegate* unmanaged<int, int>)hook.Original)(Magic)); // Original runs abs before the hook is live
            hook.Enable();
            Assert.True(hook.IsEnabled);
            Assert.Equal(hook.PatchBytes.ToArray(), Bytes(abs, hook.PatchLength));
            Assert.Equal(777, f(Magic));
            Assert.Equal(5, f(-5));
            Assert.Equal(5, ((delegate* unmanaged<int, int>)hook.Original)(-5));
            hook.Disable();
            Assert.Equal(before, Bytes(abs, 16));
            Assert.Equal(123457, f(Magic));
            hook.Enable();
            Assert.Equal(777, f(Magic));
        }
        Assert.Equal(before, Bytes(abs, 16));
        Assert.Equal(123457, f(Magic));
        Assert.True(detours.Counters[0] >= 3);
    }
}
