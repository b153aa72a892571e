using System.Runtime.Intrinsics.X86;
using Altpatch.Code;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Native;

// The batch: the whole write of a plan in the steps of docs/live.md (1. int3s, serialise; 2. probe; 3. tails,
// serialise; 4. first bytes, serialised only when the batch has one-byte sites), with the poking thread's signals blocked.
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
        var step1Sync = a.CreateLabel();
        var step1Synced = a.CreateLabel();
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

        // Step 1: int3 over the first byte of every site longer than one byte, then serialise every core (when an
        // int3 was written, or before a probe: a grace period's batch has no sites and serialises here).
        a.xor(r12d, r12d);
        a.mov(rcx, __qword_ptr[rbx + Desc.Count]);
        a.mov(rsi, __qword_ptr[rbx + Desc.Entries]);
        a.Label(ref step1);
        a.test(rcx, rcx);
        a.jz(step1Done);
        a.cmp(__byte_ptr[rsi + Desc.Single], 0);
        a.jne(step1Next);
        a.mov(rdi, __qword_ptr[rsi + Desc.Rw]);
        a.mov(__byte_ptr[rdi], X86.Int3);
        a.mov(r12d, 1);
        a.Label(ref step1Next);
        a.add(rsi, Desc.EntrySize);
        a.dec(rcx);
        a.jmp(step1);
        a.Label(ref step1Done);
        Stamp(BatchStamp.Int3Written);
        a.test(r12, r12);
        a.jnz(step1Sync);
        a.test(__qword_ptr[rbx + Desc.Flags], 1);
        a.jz(step1Synced);                                // only one-byte sites: nothing to fence off yet
        a.Label(ref step1Sync);
        a.call(sync);
        a.test(eax, eax);
        a.jnz(syncFailed);
        a.Label(ref step1Synced);
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
        // The last serialisation only when a one-byte site changed without an int3 (flag bit 1). After step 3's
        // serialisation the only byte of an int3 site that a core can still see change is its first, from the int3
        // to the new byte: a core that runs the int3 late traps, and the handler sends it back to the site, whose
        // byte it reads as data (docs/live.md, "Why each serialisation").
        a.test(__qword_ptr[rbx + Desc.Flags], 2);
        a.jz(finish);
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
        EmitSerialiseThisCore(a);
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
        a.@lock.inc(__qword_ptr[r15 + Ctl.Syncs]);
        a.mov(eax, Sys.Membarrier);
        a.mov(edi, Sys.MembarrierPrivateExpeditedSyncCore);
        a.xor(esi, esi);
        a.xor(edx, edx);
        a.syscall();
        a.neg(rax);
        a.ret();

        EmitProbeAll(a, probeAll);
    }

    /// <summary>True when the processor has <c>SERIALIZE</c> (CPUID.(EAX=7,ECX=0):EDX[14]).</summary>
    private static bool HasSerializeInstruction => X86Base.IsSupported && (X86Base.CpuId(7, 0).Edx & (1 << 14)) != 0;

    // Serialises the executing core, the way the kernel's sync_core() does (arch/x86/include/asm/sync_core.h): SERIALIZE
    // where the processor has it, otherwise IRET to the next instruction. IRET is serialising on Intel and AMD, works
    // at any privilege level and, unlike cpuid, never exits to a hypervisor (cpuid did, 1.5 µs a batch on the PVM guest
    // of docs/benchmarks.md). A thread with a CET shadow stack would fault on an IRET its shadow stack did not see
    // coming: rdsspq (a NOP that leaves rax 0 when shadow stacks are off) finds that case, which takes cpuid.
    // Clobbers rax, rcx, rdx, flags; keeps rbx and the stack.
    private static void EmitSerialiseThisCore(Assembler a)
    {
        if (HasSerializeInstruction)
        {
            a.serialize();
            return;
        }
        var useCpuid = a.CreateLabel();
        var resume = a.CreateLabel();
        var done = a.CreateLabel();
        a.xor(eax, eax);
        a.rdsspq(rax);
        a.test(rax, rax);
        a.jnz(useCpuid);
        a.mov(eax, ss);                                   // the frame IRETQ pops: RIP, CS, RFLAGS, RSP, SS
        a.push(rax);
        a.lea(rax, __[rsp + 8]);
        a.push(rax);
        a.pushfq();
        a.mov(eax, cs);
        a.push(rax);
        a.lea(rax, __[resume]);
        a.push(rax);
        a.iretq();
        a.Label(ref resume);
        a.jmp(done);
        a.Label(ref useCpuid);
        a.push(rbx);
        a.xor(eax, eax);
        a.xor(ecx, ecx);
        a.cpuid();
        a.pop(rbx);
        a.Label(ref done);
    }
}
