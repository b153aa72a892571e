using Altpatch.Native;
using Altpatch.Sites;
using Altpatch.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Live;

/// <summary>
/// A thread held inside a site until released: either spinning in a loop in the site's own code (its
/// RIP is an interior point) or inside a function the site called (its return address is one).
/// </summary>
internal sealed unsafe class Parked : IDisposable
{
    private readonly ExecutableMemory memory;
    private readonly Thread thread;
    private int result;

    /// <summary>The site: its address, old bytes, new bytes (new: xor eax,eax; inc eax; inc eax; nops, which returns 2).</summary>
    public Poke Site { get; }

    /// <summary>The function the thread is in (the site starts it).</summary>
    public ulong Function { get; }

    /// <summary>Where the thread waits for the flag: inside the site, or in a callee.</summary>
    public bool InCallee { get; }

    private ulong Flag => (ulong)memory.WritableAddress + 4096;

    /// <summary>
    /// The site sits at an odd offset, not at the start of the mapping: the probe scans thread stacks
    /// conservatively, and a stale return address left by an earlier test's function at a reused
    /// address (often mapping start + 5, after a leading call) would otherwise hold the batch.
    /// </summary>
    private const int SiteOffset = 0x123; // data: read and written through the RW alias

    public Parked(bool inCallee)
    {
        InCallee = inCallee;
        memory = ExecutableMemory.Allocate(8192, "parked");
        memory.Writable[4096] = 1; // the flag: 1 = stay; flag+1: set by the thread when it is inside
        ulong flag = Flag;
        // The wait: mov rcx, flag; mov byte [rcx+1], 1; L: pause; cmp byte [rcx], 0; jne L; mov eax, 1; ret
        void Wait(Assembler a)
        {
            var l = a.CreateLabel();
            a.mov(rcx, flag);
            a.mov(__byte_ptr[rcx + 1], 1);
            a.Label(ref l);
            a.pause();
            a.cmp(__byte_ptr[rcx], 0);
            a.jne(l);
            a.mov(eax, 1);
            a.ret();
        }
        byte[] old;
        if (!inCallee)
        {
            // the site is the wait itself
            (Function, old) = Emit.At(memory, SiteOffset, Wait);
        }
        else
        {
            // the wait is a callee, 512 bytes on
            var (callee, _) = Emit.At(memory, SiteOffset + 512, Wait);
            // site: call callee; nop; nop; nop -- then ret, after the site
            (Function, old) = Emit.At(memory, SiteOffset, a => { a.call(callee); a.nop(); a.nop(); a.nop(); });
            Emit.Bytes(memory, SiteOffset + old.Length, [0xC3]);
        }
        var @new = new byte[old.Length];
        byte[] two = [0x31, 0xC0, 0xFF, 0xC0, 0xFF, 0xC0];
        two.CopyTo(@new, 0);
        @new.AsSpan(two.Length).Fill(0x90);
        if (!inCallee) @new[^1] = 0xC3; // the site holds the whole function: it must return
        Site = new Poke(Function, old, @new, new SiteRef(SiteKind.Raw, 7, "parked"), "test");

        ulong fn = Function;
        thread = new Thread(() => result = ((delegate* unmanaged<int>)fn)()) { IsBackground = true, Name = "parked" };
        thread.Start();
        // The code sets flag+1 just before its loop: from then on the thread is past the site's first byte.
        while (Volatile.Read(ref *(byte*)(Flag + 1)) == 0) Thread.Yield();
    }

    public PatchPlan Plan => new([Site]);

    /// <summary>
    /// Waits until <paramref name="batch"/> (applying <see cref="Plan"/>) has put its int3 on the site and is waiting for
    /// the thread. A batch that ends instead fails the test, with its exception if it threw, rather than hanging it.
    /// </summary>
    public void AwaitInt3(Background batch)
    {
        while (Run.Read(Function, 1)[0] != 0xCC && !batch.Done) Thread.Yield();
        if (batch.Done)
        {
            batch.Join(); // rethrows what the batch threw
            Assert.Fail("the batch cannot end while the thread is inside the site");
        }
    }

    /// <summary>Lets the thread leave and returns what its call returned.</summary>
    public int Release()
    {
        Volatile.Write(ref *(byte*)(memory.WritableAddress + 4096), 0);
        thread.Join();
        return result;
    }

    public void Dispose()
    {
        if (thread.IsAlive) Release();
        memory.Dispose();
    }
}
