using System.Runtime.InteropServices;
using Altpatch.Native;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Live;

/// <summary>
/// The uninstall grace period only needs every thread to answer a probe: with no interior points to look
/// for, a thread whose stack the probe cannot bound (here: inside a handler on its alternate signal
/// stack) has answered too.
/// </summary>
[Collection(LiveCollection.Name)]
public sealed unsafe class GracePeriodTests
{
    // Data block shared by the test, the waiting thread and the handler.
    private const int Entered = 0, Release = 8, Ready = 16, AltStack = 24, AltStackOff = 48, BlockSet = 72, EmptySet = 80, DataSize = 88;
    private const int StackSize = 64 * 1024;
    private const int SysPpoll = 271;

    [Fact]
    public void A_thread_running_on_its_alternate_signal_stack_does_not_hold_up_uninstall()
    {
        TrapHandler.Install();
        int signal = Libc.CurrentSigrtmax() - 5;
        using var code = ExecutableMemory.Allocate(4096, "grace-test");
        byte* data = (byte*)NativeMemory.AllocZeroed(DataSize);
        byte* altStack = (byte*)NativeMemory.Alloc(StackSize);
        ulong d = (ulong)data;
        *(ulong*)(data + AltStack) = (ulong)altStack;           // stack_t { ss_sp, ss_flags, ss_size }
        *(ulong*)(data + AltStack + 16) = StackSize;
        *(int*)(data + AltStackOff + 8) = 2;                    // SS_DISABLE
        *(ulong*)(data + BlockSet) = Signals.Bit(signal);

        // The handler (SA_ONSTACK): says it is in, then waits for the test to let it go.
        var (handler, _) = Emit.At(code, 0, a =>
        {
            var spin = a.CreateLabel();
            a.mov(rax, d);
            a.mov(__qword_ptr[rax + Entered], 1);
            a.Label(ref spin);
            a.pause();
            a.cmp(__qword_ptr[rax + Release], 0);
            a.je(spin);
            a.ret();
        });
        // The thread's body: the signal blocked except while it waits in ppoll (so the handler interrupts
        // native code only), on an alternate signal stack, until the handler has run.
        var (body, _) = Emit.At(code, 256, a =>
        {
            var wait = a.CreateLabel();
            var done = a.CreateLabel();
            a.push(rbx);
            a.mov(rbx, d);
            a.mov(eax, Sys.RtSigprocmask); a.xor(edi, edi); a.lea(rsi, __[rbx + BlockSet]); a.xor(edx, edx); a.mov(r10d, 8); a.syscall();
            a.mov(eax, Sys.Sigaltstack); a.lea(rdi, __[rbx + AltStack]); a.xor(esi, esi); a.syscall();
            a.mov(__qword_ptr[rbx + Ready], 1);
            a.Label(ref wait);
            a.cmp(__qword_ptr[rbx + Entered], 0);
            a.jne(done);
            a.mov(eax, SysPpoll); a.xor(edi, edi); a.xor(esi, esi); a.xor(edx, edx); a.lea(r10, __[rbx + EmptySet]); a.mov(r8d, 8); a.syscall();
            a.jmp(wait);
            a.Label(ref done);
            a.mov(eax, Sys.Sigaltstack); a.lea(rdi, __[rbx + AltStackOff]); a.xor(esi, esi); a.syscall();
            a.mov(eax, Sys.RtSigprocmask); a.mov(edi, 1); a.lea(rsi, __[rbx + BlockSet]); a.xor(edx, edx); a.mov(r10d, 8); a.syscall();
            a.pop(rbx);
            a.ret();
        });

        SigAction previous;
        var action = new SigAction { Handler = (nint)handler, Flags = Signals.SaSigInfo | Signals.SaOnStack | Signals.SaRestart };
        Assert.Equal(0, Libc.Sigaction(signal, &action, &previous));
        int tid = 0;
        var thread = new Thread(() =>
        {
            Volatile.Write(ref tid, Libc.Gettid());
            ((delegate* unmanaged<void>)body)();
        }) { IsBackground = true, Name = "on alt stack" };
        Exception? error;
        try
        {
            thread.Start();
            while (Volatile.Read(ref *(long*)(data + Ready)) == 0) Thread.Sleep(1);
            Assert.Equal(0, Libc.Syscall(Sys.Tgkill, Libc.Getpid(), Volatile.Read(ref tid), signal));
            while (Volatile.Read(ref *(long*)(data + Entered)) == 0) Thread.Sleep(1);

            error = Record.Exception(() => TrapHandler.Uninstall(TimeSpan.FromSeconds(2)));
        }
        finally
        {
            Volatile.Write(ref *(long*)(data + Release), 1);
            if (Volatile.Read(ref *(long*)(data + Entered)) == 0 && Volatile.Read(ref tid) != 0)
                Libc.Syscall(Sys.Tgkill, Libc.Getpid(), tid, signal); // it never got the signal: let it go
            thread.Join();
            Libc.Sigaction(signal, &previous, null);
            NativeMemory.Free(altStack);
            NativeMemory.Free(data);
        }
        Assert.Null(error);
        Assert.False(TrapHandler.IsInstalled);
    }
}
