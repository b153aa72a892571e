using Altpatch.Code;
using Altpatch.Native;
using Altpatch.Tests.Live;
using Iced.Intel;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Hooks;

/// <summary>
/// The W^X path for code Altpatch did not allocate: a page that threads are running is replaced by a memfd copy
/// (same address, same bytes) with a read-write alias, and the threads never notice.
/// </summary>
[Collection(LiveCollection.Name)]
public unsafe class AdoptTextTests(ITestOutputHelper output)
{
    [Fact]
    public void Pages_that_threads_run_are_remapped_to_a_memfd_copy_without_a_wrong_result_or_an_rwx_mapping()
    {
        const int Pages = 200, Page = 4096;
        using var code = ExecutableMemory.Allocate(Page, "adopt-loop");
        // loop(n, fn): calls fn(i) n times, returns how many results were not i.
        var loop = Altpatch.Tests.Live.Emit.At(code, 0, a =>
        {
            var top = a.CreateLabel();
            var ok = a.CreateLabel();
            a.push(rbx); a.push(r12); a.push(r13); a.push(r14);
            a.sub(rsp, 8);
            a.mov(rbx, rdi); a.mov(r12, rsi); a.xor(r13d, r13d); a.xor(r14d, r14d);
            a.Label(ref top);
            a.mov(edi, r14d);
            a.call(r12);
            a.cmp(eax, r14d);
            a.je(ok);
            a.inc(r13);
            a.Label(ref ok);
            a.inc(r14);
            a.cmp(r14, rbx);
            a.jb(top);
            a.mov(rax, r13);
            a.add(rsp, 8);
            a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbx);
            a.ret();
        }).Address;
        var f = (delegate* unmanaged<long, nint, long>)loop;
        long wrong = 0, calls = 0;
        nint current = 0;
        bool stop = false;
        var threads = Enumerable.Range(0, 2).Select(_ => new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                nint fn = Volatile.Read(ref current);
                if (fn == 0) continue;
                Interlocked.Add(ref wrong, f(2000, fn));
                Interlocked.Add(ref calls, 2000);
            }
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        bool rwx = false;
        for (int i = 0; i < Pages; i++)
        {
            nint page = Libc.Mmap(0, Page, Libc.ProtRead | Libc.ProtWrite, Libc.MapPrivate | Libc.MapAnonymous, -1, 0);
            Assert.NotEqual(Libc.MapFailed, page);
            // f(x) = x, spread over the page so that threads run all of it
            var a = new Assembler(64);
            a.mov(eax, edi);
            for (int k = 0; k < 800; k++) { a.inc(eax); a.dec(eax); }
            a.ret();
            var w = new ArrayCodeWriter();
            a.Assemble(w, (ulong)page);
            w.Written.CopyTo(new Span<byte>((void*)page, Page));
            Assert.Equal(0, Libc.Mprotect(page, Page, Libc.ProtRead | Libc.ProtExec));
            Volatile.Write(ref current, page);
            long seen = Interlocked.Read(ref calls);
            while (Interlocked.Read(ref calls) < seen + 4000) Thread.Yield();
            var adopted = ExecutableMemory.AdoptText((ulong)page, Page, "adopt-test");
            seen = Interlocked.Read(ref calls);
            while (Interlocked.Read(ref calls) < seen + 4000) Thread.Yield();
            Assert.True(adopted.Adopted);
            Assert.True(ExecutableMemory.TryGetWritableAlias((ulong)page, 16, out _));
            var maps = MemoryMap.Read();
            Assert.True(maps.TryFind((ulong)page, out var region));
            Assert.Equal("r-xs", region.Permissions);
            Assert.Contains("memfd:adopt-test", region.Path, StringComparison.Ordinal);
            rwx |= maps.Regions.Any(r => (r.Protection & MapProtection.Write) != 0 && (r.Protection & MapProtection.Execute) != 0);
        }
        Volatile.Write(ref stop, true);
        threads.ForEach(t => t.Join());
        output.WriteLine($"{Pages} pages remapped while 2 threads ran them: {calls} calls, {wrong} wrong");
        Assert.Equal(0, wrong);
        Assert.False(rwx, "a mapping was writable and executable");
    }
}
