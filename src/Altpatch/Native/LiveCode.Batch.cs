using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

// The batch: the whole write of a plan in the steps of docs/live.md (1. int3s, serialise; 2. probe; 3. tails,
// serialise; 4. first bytes, serialise), with the poking thread's signals blocked.
internal sealed unsafe partial class LiveCode
{
    // int batch(BatchDescriptor* rdi). rbx = desc, r15 = control block throughout. The steps are docs/live.md's.
    private static void EmitBatch(Assembler a, ulong ctl, ref Label entry)
    {
        var sync = a.CreateLabel();
        var probeAll = a.CreateLabel();
        var step1 = a.CreateLabel();
        var step1Next = a.CreateLabel();
        var step1Done = a.CreateLabel();
        var step3 = a.CreateLabel();
        var step3Loop = a.CreateLabel();
        var step3Next = a.CreateLabel();
        var step3Done = a.CreateLabel();
        var step4 = a.CreateLabel();
        var step4Loop = a.CreateLabel();
        var step4Write = a.CreateLabel();
        var step4Next = a.CreateLabel();
        var step4Done = a.CreateLabel();
        var finish = a.CreateLabel();
        var syncFailed = a.CreateLabel();
        var probeFailed = a.CreateLabel();
        var rollback = a.CreateLabel();
        var rbLoop = a.CreateLabel();
        var rbNext = a.CreateLabel();
        var rbDone = a.CreateLabel();
        var restore = a.CreateLabel();

        // Profiling (benchmarks): when desc->Stamps is set, store the time-stamp counter at stamp k. Clobbers rax,
        // rdx, r8; every place it is emitted has them free.
        void Stamp(BatchStamp k)
        {
            var skip = a.CreateLabel();
            a.mov(r8, __qword_ptr[rbx + Desc.Stamps]);
            a.test(r8, r8);
            a.jz(skip);
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(__qword_ptr[r8 + (int)k * 8], rax);
            a.Label(ref skip);
        }

        a.Label(ref entry);
        a.PushAll(CalleeSaved);
        a.sub(rsp, 8);
        a.mov(rbx, rdi);
        a.mov(r15, ctl);
        Stamp(BatchStamp.Entry);
        // Block signals on this thread: no handler may run here (it could run a site being patched).
        a.mov(eax, Sys.RtSigprocmask);
        a.xor(edi, edi);                                  // SIG_BLOCK
        a.lea(rsi, __[r15 + Ctl.BlockSet]);
        a.lea(rdx, __[r15 + Ctl.SavedMask]);
        a.mov(r10d, 8);
        a.syscall();
        Stamp(BatchStamp.Blocked);

        // Step 1: int3 over the first byte of every site longer than one byte, then serialise every core.
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step1);
        a.test(rcx, rcx);
        a.jz(step1Done);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(step1Next);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], X86.Int3);
        a.Label(ref step1Next);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(step1);
        a.Label(ref step1Done);
        Stamp(BatchStamp.Int3Written);
        a.call(sync);
        a.test(eax, eax);
        a.jnz(syncFailed);
        Stamp(BatchStamp.Int3Synced);

        // Step 2 (when the sites have interior points): probe the other threads until none is at one.
        a.test(__qword_ptr[rbx + Desc.Flags], 1);
        a.jz(step3);
        a.call(probeAll);
        a.test(eax, eax);
        a.jnz(probeFailed);

        // Step 3: bytes 1..n-1 of every site whose tail changes, then serialise (when any did).
        a.Label(ref step3);
        Stamp(BatchStamp.Probed);
        a.xor(r12d, r12d);
        a.mov(r13, __qword_ptr[rbx + Desc.Count]);
        a.mov(r14, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step3Loop);
        a.test(r13, r13);
        a.jz(step3Done);
        a.mov(rcx, __qword_ptr[r14 + Desc.TailLength]);
        a.test(rcx, rcx);
        a.jz(step3Next);
        a.mov(rdi, __qword_ptr[r14 + Desc.Rw]);
        a.inc(rdi);
        a.mov(rsi, __qword_ptr[r14 + Desc.Tail]);
        a.rep.movsb();
        a.mov(r12d, 1);
        a.Label(ref step3Next);
        a.add(r14, Desc.EntrySize);
        a.dec(r13);
        a.jmp(step3Loop);
        a.Label(ref step3Done);
        Stamp(BatchStamp.TailsWritten);
        a.xor(ebp, ebp);
        a.test(r12, r12);
        a.jz(step4);
        a.call(sync);
        a.test(eax, eax);
        a.jz(step4);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(ebp, (int)BatchResult.LateSyncFailed);

        // Step 4: the first bytes (and the one-byte sites), then serialise.
        a.Label(ref step4);
        Stamp(BatchStamp.TailsSynced);
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step4Loop);
        a.test(rcx, rcx);
        a.jz(step4Done);
        a.mov(al, __byte_ptr[rsi + Desc.NewFirst]);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(step4Write);
        a.cmp(al, X86.Int3);
        a.je(step4Next);                                  // the new first byte is our int3 already
        a.Label(ref step4Write);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], al);
        a.Label(ref step4Next);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(step4Loop);
        a.Label(ref step4Done);
        Stamp(BatchStamp.FirstWritten);
        a.call(sync);
        a.test(eax, eax);
        a.jz(finish);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(ebp, (int)BatchResult.LateSyncFailed);
        a.Label(ref finish);
        Stamp(BatchStamp.FirstSynced);
        a.mov(r12d, ebp);
        a.jmp(restore);

        a.Label(ref syncFailed);
        a.mov(__qword_ptr[rbx + Desc.OutErrno], rax);
        a.mov(r12d, (int)BatchResult.SyncFailed);
        a.jmp(rollback);
        a.Label(ref probeFailed);
        a.mov(r12d, eax);
        a.Label(ref rollback);                            // steps 1-2 only wrote first bytes: put them back
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref rbLoop);
        a.test(rcx, rcx);
        a.jz(rbDone);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(rbNext);
        a.mov(al, __byte_ptr[rsi + Desc.OldFirst]);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], al);
        a.Label(ref rbNext);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(rbLoop);
        a.Label(ref rbDone);
        a.call(sync);

        // This core runs no site during the batch (its signals are blocked): it serialises once, here, before it
        // returns to code that may run them. The other cores were serialised after every step by sync.
        a.Label(ref restore);
        a.push(rbx);
        a.xor(eax, eax);
        a.xor(ecx, ecx);
        a.cpuid();
        a.pop(rbx);
        Stamp(BatchStamp.SelfSerialised);
        a.mov(eax, Sys.RtSigprocmask);
        a.mov(edi, 2);                                    // SIG_SETMASK
        a.lea(rsi, __[r15 + Ctl.SavedMask]);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        Stamp(BatchStamp.Restored);
        a.mov(eax, r12d);
        a.add(rsp, 8);
        a.PopAll(CalleeSaved);
        a.ret();

        // int sync(): membarrier(PRIVATE_EXPEDITED_SYNC_CORE) for every other core running a thread of this
        // process. Returns 0 or errno. This core's cpuid is paid once, at the end of the batch (a cpuid is a VM
        // exit under a hypervisor: on the benchmark VM it cost as much as the membarrier itself).
        a.Label(ref sync);
        a.mov(eax, Sys.Membarrier);
        a.mov(edi, Sys.MembarrierPrivateExpeditedSyncCore);
        a.xor(esi, esi);
        a.xor(edx, edx);
        a.syscall();
        a.neg(rax);
        a.ret();

        EmitProbeAll(a, probeAll);
    }
}
