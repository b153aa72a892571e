using System.Runtime.InteropServices;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Sites;
using Altpatch.Text;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Live;

/// <summary>
/// SIGTRAPs that are not the live poker's reach the handler installed before it; uninstalling restores
/// that handler; uninstalling is refused while a batch is in flight or after someone replaced ours.
/// </summary>
[Collection(LiveCollection.Name)]
public sealed unsafe class TrapChainTests : IDisposable
{
    private readonly ExecutableMemory code = ExecutableMemory.Allocate(4096, "trap-test");
    private readonly long* hits = (long*)NativeMemory.AllocZeroed(16);
    private readonly SigAction runtime;

    public TrapChainTests()
    {
        TrapHandler.Uninstall();
        SigAction current;
        Assert.Equal(0, Libc.Sigaction(Signals.SigTrap, null, &current));
        runtime = current; // the .NET runtime's own SIGTRAP handler (debugger breakpoints)
    }

    public void Dispose()
    {
        TrapHandler.Uninstall();
        var r = runtime;
        Libc.Sigaction(Signals.SigTrap, &r, null);
        code.Dispose();
        NativeMemory.Free(hits);
    }

    /// <summary>A "previous" handler in native code: counts the hit (RIP is already past the int3) and returns.</summary>
    private nint TestHandler(bool sigInfo)
    {
        ulong counter = (ulong)hits;
        var (at, _) = Emit.At(code, sigInfo ? 0 : 64, a =>
        {
            a.mov(rax, counter);
            a.@lock.inc(__qword_ptr[rax]);
            if (sigInfo)
            {
                // record that the siginfo and ucontext arrived: si_code of the trap, and the RIP
                a.mov(ecx, __dword_ptr[rsi + Signals.SiCodeOffset]);
                a.mov(__qword_ptr[rax + 8], rcx);
            }
            a.ret();
        });
        return (nint)at;
    }

    private void InstallPrevious(nint handler, int flags)
    {
        var act = new SigAction { Handler = handler, Flags = flags };
        Assert.Equal(0, Libc.Sigaction(Signals.SigTrap, &act, null));
    }

    private static nint CurrentHandler()
    {
        SigAction current;
        Assert.Equal(0, Libc.Sigaction(Signals.SigTrap, null, &current));
        return current.Handler;
    }

    private ulong Int3Function() => Emit.Bytes(code, 256, [0xCC, 0xB8, 7, 0, 0, 0, 0xC3]); // int3; mov eax, 7; ret

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_unrelated_int3_reaches_the_previous_handler_while_live_patching_goes_on(bool sigInfo)
    {
        nint previous = TestHandler(sigInfo);
        InstallPrevious(previous, (sigInfo ? Signals.SaSigInfo : 0) | Signals.SaRestart);
        TrapHandler.Install();
        Assert.True(TrapHandler.IsInstalled);
        Assert.NotEqual(previous, CurrentHandler());
        ulong fn = Int3Function();
        long chained = TrapHandler.TrapsChained;

        Assert.Equal(7, Run.Call(fn));
        Assert.Equal(1, hits[0]);
        if (sigInfo) Assert.Equal(Signals.SiKernel, hits[1]);
        Assert.Equal(chained + 1, TrapHandler.TrapsChained);

        // Live patching still works, and its traps are not passed on.
        using var torture = new Altpatch.TortureChild.Torture(8, 0);
        var r = torture.Run(new LivePoker(), 800, 2);
        Assert.Equal(0, r.Wrong);
        Assert.Equal(7, Run.Call(fn));
        Assert.Equal(2, hits[0]);

        TrapHandler.Uninstall();
        Assert.False(TrapHandler.IsInstalled);
        Assert.Equal(previous, CurrentHandler()); // restored exactly
        Assert.Equal(7, Run.Call(fn));
        Assert.Equal(3, hits[0]);
    }

    [Fact]
    public void A_genuine_int3_written_later_at_a_site_the_poker_knows_still_reaches_the_previous_handler()
    {
        nint previous = TestHandler(true);
        InstallPrevious(previous, Signals.SaSigInfo | Signals.SaRestart);
        byte[] a = [0xB8, 1, 0, 0, 0, 0xC3, 0x90];    // mov eax, 1; ret; nop
        byte[] b = [0x90, 0xB8, 7, 0, 0, 0, 0xC3];    // nop; mov eax, 7; ret
        ulong fn = Emit.Bytes(code, 512, a);
        var site = new SiteRef(SiteKind.Raw, 0, "known");
        new LivePoker().Apply(new PatchPlan([new Poke(fn, a, b, site, "live")])); // fn is now a known site
        Assert.Equal(7, Run.Call(fn));
        long handled = TrapHandler.TrapsHandled, chained = TrapHandler.TrapsChained;

        // Someone else's breakpoint on the site's first byte: it must not be taken for a late trap of ours.
        var breakpoint = new PatchPlan([new Poke(fn, new byte[] { 0x90 }, new byte[] { 0xCC }, site, "breakpoint")]);
        new ProtectPoker().Apply(breakpoint);
        Assert.Equal(7, Run.Call(fn)); // the test handler counts it and returns past the int3
        Assert.Equal(1, hits[0]);
        Assert.Equal(chained + 1, TrapHandler.TrapsChained);
        Assert.Equal(handled, TrapHandler.TrapsHandled);
        new ProtectPoker().Revert(breakpoint);
    }

    [Fact]
    public void With_SIG_DFL_before_an_unrelated_int3_kills_the_process_with_SIGTRAP()
    {
        var (exit, text) = NegativeControlTests.Child("trap-default");
        Assert.True(exit == 128 + Signals.SigTrap, $"expected death by SIGTRAP (exit {128 + Signals.SigTrap}), got {exit}: {text}");
        Assert.Contains("executing int3", text);
        Assert.DoesNotContain("survived", text);
    }

    [Fact]
    public void Uninstall_is_refused_while_a_batch_is_in_flight()
    {
        using var parked = new Parked(inCallee: false);
        var poker = new LivePoker();
        using var batch = new Background(() => poker.Apply(parked.Plan));
        parked.AwaitInt3(batch); // the batch holds its int3 and waits
        var e = Assert.Throws<TrapHandlerException>(() => TrapHandler.Uninstall());
        Assert.Contains("while a live batch is in flight", e.Message);
        Assert.True(TrapHandler.IsInstalled);
        parked.Release();
        batch.Join();
        Assert.Equal(parked.Site.New.ToArray(), Run.Read(parked.Function, parked.Site.Length));
        poker.Revert(parked.Plan);
    }

    [Fact]
    public void Uninstall_is_refused_when_SIGTRAP_was_replaced_after_install()
    {
        TrapHandler.Install();
        nint ours = CurrentHandler();
        InstallPrevious(TestHandler(true), Signals.SaSigInfo);
        var e = Assert.Throws<TrapHandlerException>(() => TrapHandler.Uninstall());
        Assert.Contains("was replaced", e.Message);
        Assert.True(TrapHandler.IsInstalled);
        InstallPrevious(ours, Signals.SaSigInfo | Signals.SaRestart | Signals.SaNoDefer);
        TrapHandler.Uninstall();
        Assert.Equal(runtime.Handler, CurrentHandler());
    }

    [Fact]
    public void A_probe_signal_someone_else_handles_is_not_taken()
    {
        int signal = Libc.CurrentSigrtmax() - 5;
        var act = new SigAction { Handler = TestHandler(true), Flags = Signals.SaSigInfo };
        SigAction old;
        Assert.Equal(0, Libc.Sigaction(signal, &act, &old));
        try
        {
            var e = Assert.Throws<TrapHandlerException>(() => TrapHandler.Install(signal));
            Assert.Contains($"signal {signal} already has a handler", e.Message);
            Assert.False(TrapHandler.IsInstalled);
        }
        finally { Libc.Sigaction(signal, &old, null); }
    }
}
