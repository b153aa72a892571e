using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

// The probe handler: answers, in the thread's slot, whether the interrupted thread is stopped at an interior point
// of a site being rewritten (step 2 of the batch, and the uninstall grace period).
internal sealed unsafe partial class LiveCode
{
    // void probe(int sig, siginfo_t* info, ucontext_t* uc). si_value = gen << 20 | slot index.
    // Answers Clear, Inside (RIP or a stack word is an interior point) or UnknownStack (on an
    // alternate signal stack, or a stack it cannot bound) by a compare-and-swap on the slot, which
    // fails harmlessly when the probe is stale (the poker has moved the slot to a newer generation).
    private static void EmitProbe(Assembler a, ulong ctl, ref Label entry)
    {
        var isHazard = a.CreateLabel();
        var ihLoop = a.CreateLabel();
        var ihLeft = a.CreateLabel();
        var ihYes = a.CreateLabel();
        var ihNo = a.CreateLabel();
        var outLabel = a.CreateLabel();
        var noSkip = a.CreateLabel();
        var tryFs = a.CreateLabel();
        var scan = a.CreateLabel();
        var loop = a.CreateLabel();
        var read = a.CreateLabel();
        var next = a.CreateLabel();
        var vmFail = a.CreateLabel();
        var clear = a.CreateLabel();
        var busyRip = a.CreateLabel();
        var busyStack = a.CreateLabel();
        var unknown = a.CreateLabel();
        var done = a.CreateLabel();
        var counted = a.CreateLabel();

        // [rsp]: a ProbeFrame (sigaltstack's answer, then the scan's locals)

        a.Label(ref entry);
        a.PushAll(CalleeSaved);
        a.sub(rsp, Frame.Size);
        a.mov(r15, ctl);
        a.mov(rax, __qword_ptr[rsi + Signals.SiValueOffset]);
        a.mov(r14, rax);
        a.and(r14d, 0xFFFFF);
        a.shr(rax, 20);
        a.cmp(r14, __qword_ptr[r15 + Ctl.SlotCapacity]);
        a.jae(outLabel);
        a.shl(r14, Slot.Shift);
        a.add(r14, __qword_ptr[r15 + Ctl.Slots]);        // r14 = slot
        a.shl(rax, 8);
        a.mov(r12, rax);                                  // r12 = expected word (pending)
        a.cmp(__qword_ptr[r14 + Slot.Word], r12);
        a.jne(outLabel);                                  // stale probe
        a.@lock.inc(__qword_ptr[r15 + Ctl.ProbesAnswered]);
        a.mov(rbx, __qword_ptr[rdx + Signals.UcRip]);
        a.mov(rbp, __qword_ptr[rdx + Signals.UcRsp]);
        a.mov(rdi, rbx);
        a.call(isHazard);
        a.test(eax, eax);
        a.jnz(busyRip);
        // No interior points (the uninstall grace period): no stack word can be one, so the answer is
        // Clear whatever the stack, even one the checks below could not bound.
        a.cmp(__qword_ptr[r15 + Ctl.HazardCount], 0);
        a.je(clear);

        // Interrupted inside the trap handler before its decision: the trap frame's saved RIP (site+1
        // of a trap the handler is about to send back to the site) is not a position to wait for.
        a.xor(r13d, r13d);
        a.cmp(rbx, __qword_ptr[r15 + Ctl.TrapStart]);
        a.jb(noSkip);
        a.cmp(rbx, __qword_ptr[r15 + Ctl.TrapDecided]);
        a.jae(noSkip);
        a.mov(r13, __qword_ptr[rdx + Signals.UcRdx]);
        a.add(r13, Signals.UcRip);
        a.Label(ref noSkip);

        // On an alternate signal stack? (We are not SA_ONSTACK, so we run on the interrupted stack.)
        a.xor(edi, edi);
        a.mov(rsi, rsp);
        a.mov(eax, Sys.Sigaltstack);
        a.syscall();
        a.test(__dword_ptr[rsp + Frame.AltStackFlags], 1); // ss_flags & SS_ONSTACK
        a.jnz(unknown);

        // Bound the stack: the main thread's [stack], else a glibc thread's TCB (fs:0) above its stack.
        a.mov(rax, __qword_ptr[r15 + Ctl.MainTop]);
        a.cmp(rbp, rax);
        a.jae(tryFs);
        a.mov(rcx, rax);
        a.sub(rcx, rbp);
        a.cmp(rcx, __qword_ptr[r15 + Ctl.MainMax]);
        a.jbe(scan);
        a.Label(ref tryFs);
        a.mov(eax, Sys.ArchPrctl);                        // the thread pointer (glibc's TCB, at the top of
        a.mov(edi, 0x1003);                               // the thread's stack block): ARCH_GET_FS, which
        a.lea(rsi, __[rsp + Frame.Buffer]);               // cannot fault where fs:[0] could
        a.syscall();
        a.test(rax, rax);
        a.jnz(unknown);
        a.mov(rax, __qword_ptr[rsp + Frame.Buffer]);
        a.test(rax, rax);
        a.jz(unknown);
        a.cmp(rbp, rax);
        a.jae(unknown);
        a.mov(rcx, rax);
        a.sub(rcx, rbp);
        a.cmp(rcx, __qword_ptr[r15 + Ctl.MaxScan]);
        a.ja(unknown);

        a.Label(ref scan);
        a.mov(__qword_ptr[rsp + Frame.Top], rax);
        a.and(rbp, -8);
        a.mov(__qword_ptr[rsp + Frame.Checked], 0);
        a.Label(ref loop);
        a.cmp(rbp, __qword_ptr[rsp + Frame.Top]);
        a.jae(clear);
        a.cmp(rbp, __qword_ptr[rsp + Frame.Checked]);
        a.jb(read);
        // First word of a page: check it is readable without touching it (process_vm_readv on
        // ourselves fails with EFAULT instead of faulting).
        a.lea(rax, __[rsp + Frame.Buffer]);
        a.mov(__qword_ptr[rsp + Frame.Local], rax);
        a.mov(__qword_ptr[rsp + Frame.Local + Frame.IovLength], 8);
        a.mov(__qword_ptr[rsp + Frame.Remote], rbp);
        a.mov(__qword_ptr[rsp + Frame.Remote + Frame.IovLength], 8);
        a.mov(eax, Sys.ProcessVmReadv);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.lea(rsi, __[rsp + Frame.Local]);
        a.mov(edx, 1);
        a.lea(r10, __[rsp + Frame.Remote]);
        a.mov(r8d, 1);
        a.xor(r9d, r9d);
        a.syscall();
        a.cmp(rax, 8);
        a.jne(vmFail);
        a.mov(rax, rbp);
        a.or(rax, 0xFFF);
        a.inc(rax);
        a.mov(__qword_ptr[rsp + Frame.Checked], rax);
        a.Label(ref read);
        a.cmp(rbp, r13);
        a.je(next);
        a.mov(rdi, __qword_ptr[rbp]);
        a.cmp(rdi, __qword_ptr[r15 + Ctl.HazardMin]);
        a.jb(next);
        a.cmp(rdi, __qword_ptr[r15 + Ctl.HazardMax]);
        a.ja(next);
        a.call(isHazard);
        a.test(eax, eax);
        a.jnz(busyStack);
        a.Label(ref next);
        a.add(rbp, 8);
        a.jmp(loop);

        a.Label(ref vmFail);
        a.cmp(rax, -Sys.Efault);
        a.je(clear);                                      // the readable stack ends here
        a.jmp(unknown);                                   // cannot check (process_vm_readv refused)

        a.Label(ref clear);
        a.mov(ecx, (int)ProbeStatus.Clear);
        a.xor(ebx, ebx);
        a.jmp(done);
        a.Label(ref busyRip);
        a.mov(ecx, (int)ProbeStatus.Inside);
        a.jmp(done);
        a.Label(ref busyStack);
        a.mov(ecx, (int)ProbeStatus.Inside);
        a.mov(rbx, rdi);
        a.jmp(done);
        a.Label(ref unknown);
        a.mov(ecx, (int)ProbeStatus.UnknownStack);
        a.mov(rbx, rbp);
        a.Label(ref done);
        a.cmp(ecx, (int)ProbeStatus.Inside);
        a.jne(counted);
        a.@lock.inc(__qword_ptr[r15 + Ctl.InsideAnswers]);
        a.Label(ref counted);
        a.mov(__qword_ptr[r14 + Slot.Detail], rbx);
        a.or(rcx, r12);
        a.mov(rax, r12);
        a.@lock.cmpxchg(__qword_ptr[r14 + Slot.Word], rcx);
        a.Label(ref outLabel);
        a.add(rsp, Frame.Size);
        a.PopAll(CalleeSaved);
        a.ret();

        // bool isHazard(rdi): binary search of the interior points; uses rax, rcx, r8-r10.
        a.Label(ref isHazard);
        a.mov(r9, __qword_ptr[r15 + Ctl.Hazards]);
        a.mov(rcx, __qword_ptr[r15 + Ctl.HazardCount]);
        a.xor(r8d, r8d);
        a.Label(ref ihLoop);
        a.cmp(r8, rcx);
        a.jae(ihNo);
        a.lea(r10, __[r8 + rcx]);
        a.shr(r10, 1);
        a.cmp(rdi, __qword_ptr[r9 + r10 * 8]);
        a.je(ihYes);
        a.jb(ihLeft);
        a.lea(r8, __[r10 + 1]);
        a.jmp(ihLoop);
        a.Label(ref ihLeft);
        a.mov(rcx, r10);
        a.jmp(ihLoop);
        a.Label(ref ihYes);
        a.mov(eax, 1);
        a.ret();
        a.Label(ref ihNo);
        a.xor(eax, eax);
        a.ret();
    }
}
