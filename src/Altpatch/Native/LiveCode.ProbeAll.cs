using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

// Step 2 of the batch, probeAll: lists the threads, probes each, and asks again those inside a site until all are
// clear or the timeout passes; with its helpers enumerate, sendOne and nowNs.
internal sealed unsafe partial class LiveCode
{
    // int probeAll(): lists the threads (twice: a thread exiting during a listing can hide another),
    // probes every other thread, and probes again the ones inside a site until all are clear or the
    // timeout passes. Uses rbp, r12-r14 (saved), rbx = desc, r15 = control block.
    private static void EmitProbeAll(Assembler a, Label entry)
    {
        ReadOnlySpan<AssemblerRegister64> saved = [rbp, r12, r13, r14];
        var enumerate = a.CreateLabel();
        var sendOne = a.CreateLabel();
        var nowNs = a.CreateLabel();
        var sendLoop = a.CreateLabel();
        var waitStart = a.CreateLabel();
        var wait = a.CreateLabel();
        var check = a.CreateLabel();
        var pending = a.CreateLabel();
        var slotNext = a.CreateLabel();
        var checkedAll = a.CreateLabel();
        var timeout = a.CreateLabel();
        var tLoop = a.CreateLabel();
        var tFound = a.CreateLabel();
        var tNone = a.CreateLabel();
        var tNext = a.CreateLabel();
        var tKeep = a.CreateLabel();
        var tOut = a.CreateLabel();
        var ok = a.CreateLabel();
        var ret = a.CreateLabel();
        var sleepSet = a.CreateLabel();

        a.Label(ref entry);
        a.PushAll(saved);
        a.mov(r14, __qword_ptr[r15 + Ctl.Slots]);
        a.xor(r13d, r13d);                                // thread count
        a.call(enumerate);
        a.test(eax, eax);
        a.jnz(ret);
        a.call(enumerate);
        a.test(eax, eax);
        a.jnz(ret);
        a.mov(__qword_ptr[rbx + Desc.OutThreads], r13);
        a.xor(r12d, r12d);
        a.Label(ref sendLoop);
        a.cmp(r12, r13);
        a.jae(waitStart);
        a.mov(rdi, r12);
        a.call(sendOne);
        a.inc(r12);
        a.jmp(sendLoop);

        a.Label(ref waitStart);
        a.call(nowNs);
        a.add(rax, __qword_ptr[rbx + Desc.TimeoutNs]);
        a.mov(rbp, rax);                                  // deadline
        a.mov(__qword_ptr[r15 + Ctl.WaitIterations], 0);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime], 0);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime + Time.Nanoseconds], FirstSleepNs);
        a.Label(ref wait);
        a.xor(r12d, r12d);
        a.mov(__qword_ptr[r15 + Ctl.Pending], 0);
        a.Label(ref check);
        a.cmp(r12, r13);
        a.jae(checkedAll);
        a.mov(rax, r12);
        a.shl(rax, Slot.Shift);
        a.movzx(eax, __byte_ptr[r14 + rax + Slot.Word]);
        a.cmp(eax, (int)ProbeStatus.Clear);
        a.je(slotNext);
        a.inc(__qword_ptr[r15 + Ctl.Pending]);
        a.test(eax, eax);
        a.jz(pending);
        a.mov(rcx, r12);                                  // inside a site (or stack unknown): remember
        a.shl(rcx, Slot.Shift);                           // the answer for the report, then ask again
        a.mov(__qword_ptr[r14 + rcx + Slot.LastAnswer], rax);
        a.mov(rdi, r12);
        a.call(sendOne);
        a.jmp(slotNext);
        a.Label(ref pending);                             // no answer yet: is the thread still alive?
        a.test(__qword_ptr[r15 + Ctl.WaitIterations], 15);
        a.jnz(slotNext);
        a.mov(rax, r12);
        a.shl(rax, Slot.Shift);
        a.mov(rsi, __qword_ptr[r14 + rax + Slot.Tid]);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.xor(edx, edx);
        a.mov(eax, Sys.Tgkill);
        a.syscall();
        a.cmp(rax, -Sys.Esrch);
        a.jne(slotNext);
        a.mov(rax, r12);
        a.shl(rax, Slot.Shift);
        a.mov(__byte_ptr[r14 + rax + Slot.Word], (int)ProbeStatus.Clear); // it exited
        a.dec(__qword_ptr[r15 + Ctl.Pending]);
        a.Label(ref slotNext);
        a.inc(r12);
        a.jmp(check);
        a.Label(ref checkedAll);
        a.cmp(__qword_ptr[r15 + Ctl.Pending], 0);
        a.je(ok);
        a.inc(__qword_ptr[r15 + Ctl.WaitIterations]);
        a.call(nowNs);
        a.cmp(rax, rbp);
        a.ja(timeout);
        a.mov(eax, Sys.Nanosleep);
        a.lea(rdi, __[r15 + Ctl.SleepTime]);
        a.xor(esi, esi);
        a.syscall();
        a.mov(rax, __qword_ptr[r15 + Ctl.SleepTime + Time.Nanoseconds]); // sleep twice as long next time, up to 1 ms:
        a.add(rax, rax);                                  // a thread stuck inside a site is not flooded
        a.cmp(rax, MaxSleepNs);                           // with probes while it tries to leave
        a.jbe(sleepSet);
        a.mov(eax, MaxSleepNs);
        a.Label(ref sleepSet);
        a.mov(__qword_ptr[r15 + Ctl.SleepTime + Time.Nanoseconds], rax);
        a.jmp(wait);

        // Report a thread that is not clear: one that said it was inside if there is one (its slot may
        // be pending again, re-probed), else one that never answered.
        a.Label(ref timeout);
        a.mov(r12, -1);                                   // first not-clear slot
        a.xor(edx, edx);
        a.Label(ref tLoop);
        a.cmp(rdx, r13);
        a.jae(tNone);
        a.mov(rax, rdx);
        a.shl(rax, Slot.Shift);
        a.movzx(ecx, __byte_ptr[r14 + rax + Slot.Word]);
        a.cmp(ecx, (int)ProbeStatus.Clear);
        a.je(tNext);
        a.cmp(r12, -1);
        a.jne(tKeep);
        a.mov(r12, rdx);
        a.Label(ref tKeep);
        a.test(ecx, ecx);
        a.jnz(tFound);
        a.mov(rcx, __qword_ptr[r14 + rax + Slot.LastAnswer]);
        a.test(rcx, rcx);
        a.jnz(tFound);
        a.Label(ref tNext);
        a.inc(rdx);
        a.jmp(tLoop);
        a.Label(ref tNone);                               // nobody said inside: report the first silent one
        a.cmp(r12, -1);
        a.je(tOut);
        a.mov(rax, r12);
        a.shl(rax, Slot.Shift);
        a.xor(ecx, ecx);
        a.Label(ref tFound);
        a.mov(__qword_ptr[rbx + Desc.OutStatus], rcx);
        a.mov(rdx, __qword_ptr[r14 + rax + Slot.Tid]);
        a.mov(__qword_ptr[rbx + Desc.OutTid], rdx);
        a.mov(rdx, __qword_ptr[r14 + rax + Slot.Detail]);
        a.mov(__qword_ptr[rbx + Desc.OutDetail], rdx);
        a.Label(ref tOut);
        a.mov(eax, (int)BatchResult.ProbeTimedOut);
        a.jmp(ret);
        a.Label(ref ok);
        a.xor(eax, eax);
        a.Label(ref ret);
        a.PopAll(saved);
        a.ret();

        EmitEnumerate(a, enumerate);
        EmitSendOne(a, sendOne);

        // long nowNs(): CLOCK_MONOTONIC in nanoseconds.
        a.Label(ref nowNs);
        a.mov(eax, Sys.ClockGettime);
        a.mov(edi, 1);
        a.lea(rsi, __[r15 + Ctl.TimeScratch]);
        a.syscall();
        a.mov(rax, __qword_ptr[r15 + Ctl.TimeScratch]);
        a.imul(rax, rax, 1_000_000_000);
        a.add(rax, __qword_ptr[r15 + Ctl.TimeScratch + Time.Nanoseconds]);
        a.ret();
    }

    // int enumerate(): adds the tids in /proc/self/task (but this thread's) to the slots r14[0..r13),
    // skipping ones already there. 0, ThreadsUnlisted (errno in the desc) or TooManyThreads.
    private static void EmitEnumerate(Assembler a, Label entry)
    {
        ReadOnlySpan<AssemblerRegister64> saved = [rbp, r12];
        var read = a.CreateLabel();
        var entryLoop = a.CreateLabel();
        var digits = a.CreateLabel();
        var parsed = a.CreateLabel();
        var dedupe = a.CreateLabel();
        var add = a.CreateLabel();
        var next = a.CreateLabel();
        var closeOk = a.CreateLabel();
        var readFailed = a.CreateLabel();
        var openFailed = a.CreateLabel();
        var tooMany = a.CreateLabel();

        a.Label(ref entry);
        a.PushAll(saved);
        a.mov(eax, Sys.Openat);
        a.mov(edi, -100);                                 // AT_FDCWD
        a.lea(rsi, __[r15 + Ctl.ProcTaskPath]);
        a.mov(edx, 0x90000);                              // O_RDONLY | O_DIRECTORY | O_CLOEXEC
        a.xor(r10d, r10d);
        a.syscall();
        a.test(rax, rax);
        a.js(openFailed);
        a.mov(r12, rax);
        a.Label(ref read);
        a.mov(eax, Sys.Getdents64);
        a.mov(rdi, r12);
        a.lea(rsi, __[r15 + DataLayout.DirentOffset]);
        a.mov(edx, DataLayout.DirentSize);
        a.syscall();
        a.test(rax, rax);
        a.jz(closeOk);
        a.js(readFailed);
        a.lea(rbp, __[r15 + DataLayout.DirentOffset]);
        a.lea(r9, __[rbp + rax]);
        a.Label(ref entryLoop);
        a.cmp(rbp, r9);
        a.jae(read);
        a.movzx(r10d, __word_ptr[rbp + Dirent.Reclen]);
        a.lea(rsi, __[rbp + Dirent.Name]);
        a.movzx(eax, __byte_ptr[rsi]);
        a.sub(eax, '0');
        a.cmp(eax, 9);
        a.ja(next);                                       // "." and ".."
        a.xor(edi, edi);
        a.Label(ref digits);
        a.movzx(eax, __byte_ptr[rsi]);
        a.sub(eax, '0');
        a.cmp(eax, 9);
        a.ja(parsed);
        a.imul(rdi, rdi, 10);
        a.add(rdi, rax);
        a.inc(rsi);
        a.jmp(digits);
        a.Label(ref parsed);
        a.cmp(rdi, __qword_ptr[rbx + Desc.SelfTid]);
        a.je(next);
        a.xor(ecx, ecx);
        a.Label(ref dedupe);
        a.cmp(rcx, r13);
        a.jae(add);
        a.mov(rax, rcx);
        a.shl(rax, Slot.Shift);
        a.cmp(__qword_ptr[r14 + rax + Slot.Tid], rdi);
        a.je(next);
        a.inc(rcx);
        a.jmp(dedupe);
        a.Label(ref add);
        a.cmp(r13, __qword_ptr[r15 + Ctl.SlotCapacity]);
        a.jae(tooMany);
        a.mov(rax, r13);
        a.shl(rax, Slot.Shift);
        a.mov(__qword_ptr[r14 + rax + Slot.Word], 0);
        a.mov(__qword_ptr[r14 + rax + Slot.Detail], 0);
        a.mov(__qword_ptr[r14 + rax + Slot.Tid], rdi);
        a.mov(__qword_ptr[r14 + rax + Slot.LastAnswer], 0);
        a.inc(r13);
        a.Label(ref next);
        a.add(rbp, r10);
        a.jmp(entryLoop);

        a.Label(ref closeOk);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.xor(eax, eax);
        a.PopAll(saved);
        a.ret();
        a.Label(ref readFailed);
        a.neg(rax);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.mov(eax, (int)BatchResult.ThreadsUnlisted);
        a.PopAll(saved);
        a.ret();
        a.Label(ref openFailed);
        a.neg(rax);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(eax, (int)BatchResult.ThreadsUnlisted);
        a.PopAll(saved);
        a.ret();
        a.Label(ref tooMany);
        a.mov(eax, Sys.Close);
        a.mov(rdi, r12);
        a.syscall();
        a.mov(eax, (int)BatchResult.TooManyThreads);
        a.PopAll(saved);
        a.ret();
    }

    // void sendOne(rdi = slot index): a new generation for the slot, then rt_tgsigqueueinfo with
    // si_value = gen << 20 | index. A thread that no longer exists counts as clear.
    private static void EmitSendOne(Assembler a, Label entry)
    {
        var done = a.CreateLabel();
        a.Label(ref entry);
        a.mov(rax, __qword_ptr[r15 + Ctl.ProbeGen]);
        a.inc(rax);
        a.mov(__qword_ptr[r15 + Ctl.ProbeGen], rax);
        a.mov(rcx, rdi);
        a.shl(rcx, Slot.Shift);
        a.lea(r8, __[r14 + rcx]);
        a.mov(rdx, rax);
        a.shl(rdx, 8);
        a.mov(__qword_ptr[r8 + Slot.Word], rdx);
        a.shl(rax, 20);
        a.or(rax, rdi);
        a.mov(__qword_ptr[r15 + Ctl.SigInfo + Signals.SiValueOffset], rax);
        a.inc(__qword_ptr[r15 + Ctl.ProbesSent]);
        a.mov(rsi, __qword_ptr[r8 + Slot.Tid]);
        a.mov(rdi, __qword_ptr[r15 + Ctl.Pid]);
        a.mov(rdx, __qword_ptr[r15 + Ctl.ProbeSignal]);
        a.lea(r10, __[r15 + Ctl.SigInfo]);
        a.mov(eax, Sys.RtTgsigqueueinfo);
        a.syscall();
        a.cmp(rax, -Sys.Esrch);
        a.jne(done);
        a.mov(__byte_ptr[r8 + Slot.Word], (int)ProbeStatus.Clear);
        a.Label(ref done);
        a.ret();
    }
}
