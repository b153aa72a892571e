using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

// The SIGTRAP handler: sends a thread that trapped on the live poker's int3 back to the site, chains every other
// SIGTRAP to the disposition installed before.
internal sealed unsafe partial class LiveCode
{
    /// <summary>The System V callee-saved registers, which the probe handler and the batch keep for their caller.</summary>
    private static readonly AssemblerRegister64[] CalleeSaved = [rbx, rbp, r12, r13, r14, r15];

    // void trap(int sig /*rdi*/, siginfo_t* info /*rsi*/, ucontext_t* uc /*rdx*/)
    // Until the decision it touches only rax, rcx, r8-r11 and memory, and never moves RSP or RDX, so
    // a probe that interrupts it finds the trap's saved RIP at [RDX + UcRip] and can ignore it.
    private static void EmitTrap(Assembler a, ulong ctl, ref Label entry, ref Label decided)
    {
        var search = a.CreateLabel();
        var left = a.CreateLabel();
        var found = a.CreateLabel();
        var retry = a.CreateLabel();
        var checkByte = a.CreateLabel();
        var ours = a.CreateLabel();
        var inFlight = a.CreateLabel();
        var notOurs = a.CreateLabel();
        var ignore = a.CreateLabel();
        var justReturn = a.CreateLabel();
        var reraise = a.CreateLabel();

        a.Label(ref entry);
        a.mov(r11, ctl);
        a.@lock.inc(__qword_ptr[r11 + Ctl.Readers]);
        a.cmp(__dword_ptr[rsi + Signals.SiCodeOffset], Signals.SiKernel);
        a.jne(notOurs);
        a.mov(r8, __qword_ptr[rdx + Signals.UcRip]);
        a.dec(r8);                                        // x: the int3's address
        a.mov(r9, __qword_ptr[r11 + Ctl.Known]);
        a.mov(rcx, __qword_ptr[r9 + Known.Count]);    // hi = count
        a.xor(eax, eax);                                  // lo = 0
        a.Label(ref search);
        a.cmp(rax, rcx);
        a.jae(notOurs);
        a.lea(r10, __[rax + rcx]);
        a.shr(r10, 1);
        a.cmp(r8, __qword_ptr[r9 + r10 * 8 + Known.Addresses]);
        a.je(found);
        a.jb(left);
        a.lea(rax, __[r10 + 1]);
        a.jmp(search);
        a.Label(ref left);
        a.mov(rcx, r10);
        a.jmp(search);

        a.Label(ref found);                               // r10 = index
        a.mov(rcx, __qword_ptr[r9 + Known.Count]);
        a.lea(r9, __[r9 + rcx * 8 + Known.Addresses]); // gens[]
        a.Label(ref retry);
        a.mov(rax, __qword_ptr[r11 + Ctl.Inflight]);
        a.mov(rcx, __qword_ptr[r9 + r10 * 8]);
        a.test(rax, rax);
        a.jz(checkByte);
        a.cmp(rax, rcx);
        a.je(inFlight);                                   // a site of the batch in flight
        a.Label(ref checkByte);
        a.cmp(__byte_ptr[r8], X86.Int3);
        a.jne(ours);                                      // our int3 is gone: run what is there now
        a.cmp(rax, __qword_ptr[r11 + Ctl.Inflight]);
        a.jne(retry);                                     // a batch started or ended meanwhile
        a.cmp(rcx, __qword_ptr[r9 + r10 * 8]);
        a.jne(retry);
        a.jmp(notOurs);                                   // an int3 that is not ours

        a.Label(ref ours);
        a.mov(__qword_ptr[rdx + Signals.UcRip], r8);      // back to the site
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);
        a.@lock.inc(__qword_ptr[r11 + Ctl.OurTraps]);
        a.ret();

        a.Label(ref inFlight);                            // the same, and give the CPU away before trapping
        a.mov(__qword_ptr[rdx + Signals.UcRip], r8);      // again: the batch (and the threads it probes)
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);      // needs it more than a thread spinning on an int3
        a.@lock.inc(__qword_ptr[r11 + Ctl.OurTraps]);
        a.mov(eax, Sys.SchedYield);
        a.syscall();                                      // clobbers rax, rcx, r11 only: RDX stays
        a.ret();

        a.Label(ref notOurs);
        a.@lock.dec(__qword_ptr[r11 + Ctl.Readers]);
        a.Label(ref decided);
        a.@lock.inc(__qword_ptr[r11 + Ctl.ChainedTraps]);
        a.mov(rax, __qword_ptr[r11 + Ctl.PrevHandler]);
        a.cmp(rax, 1);
        a.je(ignore);
        a.test(rax, rax);
        a.jz(reraise);
        a.sub(rsp, 8);                                    // 16-byte alignment for the call
        a.call(rax);                                      // edi, rsi, rdx: as we received them
        a.add(rsp, 8);
        a.ret();

        a.Label(ref ignore);                              // SIG_IGN: the kernel ignores sent signals,
        a.cmp(__dword_ptr[rsi + Signals.SiCodeOffset], 0);
        a.jle(justReturn);                                // but a trap it raises itself kills (force_sig)
        a.jmp(reraise);
        a.Label(ref justReturn);
        a.ret();

        a.Label(ref reraise);                             // SIG_DFL: restore it and raise the signal again
        a.mov(eax, Sys.RtSigaction);
        a.mov(edi, Signals.SigTrap);
        a.mov(rsi, ctl + (ulong)Ctl.DflAction);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, Sys.RtSigprocmask);
        a.mov(edi, 1);                                    // SIG_UNBLOCK
        a.mov(rsi, ctl + (ulong)Ctl.TrapSet);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, Sys.Getpid);
        a.syscall();
        a.mov(r8, rax);
        a.mov(eax, Sys.Gettid);
        a.syscall();
        a.mov(rsi, rax);
        a.mov(rdi, r8);
        a.mov(edx, Signals.SigTrap);
        a.mov(eax, Sys.Tgkill);
        a.syscall();
        a.ret();
    }
}
