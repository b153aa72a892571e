using System.Runtime.InteropServices;
using Altpatch.Emit;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.SmpLocks;

/// <summary>
/// Emitted code with lock-prefixed instructions: <c>count(counters, n)</c> adds to four counters n times
/// with <c>lock xadd</c>, <c>lock add</c>, <c>lock inc</c> and a <c>lock cmpxchg</c> loop, and returns the
/// last value <c>xadd</c> saw. The counters live in unmanaged memory.
/// </summary>
internal sealed unsafe class LockFixture : IDisposable
{
    public CodeBuilder Cb { get; } = new();
    public ulong Count { get; }
    public long* Counters { get; } = (long*)NativeMemory.AlignedAlloc(64, 64);

    public LockFixture()
    {
        new Span<long>(Counters, 8).Clear();
        Count = Cb.Function("count", b =>
        {
            ulong top = b.Code(a => a.mov(eax, 1)); // each piece is assembled on its own: branches go by address
            b.Lock(a => a.xadd(__qword_ptr[rdi], rax));
            b.Lock(a => a.add(__qword_ptr[rdi + 8], 2));
            b.Lock(a => a.inc(__qword_ptr[rdi + 16]));
            b.Code(a => { a.push(rax); a.mov(rax, __qword_ptr[rdi + 24]); });
            ulong retry = b.Cursor;
            b.Code(a => { a.lea(rcx, __[rax + 3]); });
            b.Lock(a => a.cmpxchg(__qword_ptr[rdi + 24], rcx));
            b.Code(a => { a.jne(retry); a.pop(rax); a.dec(rsi); a.jnz(top); a.ret(); });
        });
        Cb.Publish();
    }

    public long Run(long n) => ((delegate* unmanaged<long*, long, long>)Count)(Counters, n);

    public long[] Values => new Span<long>(Counters, 4).ToArray();

    public void Reset() => new Span<long>(Counters, 8).Clear();

    public byte[] Text() => Tests.Run.Text(Cb);

    public byte LockByte(int site) => Tests.Run.Read(Cb.LockSites[site], 1)[0];

    public void Dispose()
    {
        Cb.Dispose();
        NativeMemory.AlignedFree(Counters);
    }
}
