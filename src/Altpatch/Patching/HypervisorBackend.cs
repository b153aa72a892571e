using System.Runtime.InteropServices;
using Altpatch.Code;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Patching;

/// <summary>
/// A hypervisor-like backend: the same ops as another backend (usually <see cref="NativeBackend"/>),
/// each routed through a counting shim that increments the op's counter in data memory and then
/// jumps to the real implementation, the role VMI's ROM played in the seed. Sites get direct calls
/// (or jumps) to the shims through the default patch, nothing inline, so every call is counted;
/// no-ops are counted too, and ops without implementation stay <c>ud2</c>. Shims keep every register
/// and the flags, so each op clobbers what its implementation clobbers. Disposing frees the counters;
/// the shims' code stays in the builder's memory.
/// </summary>
public sealed unsafe class HypervisorBackend : ParavirtBackend, IDisposable
{
    private long* counters;
    private readonly int count;

    private HypervisorBackend(string name, IReadOnlyList<OpImplementation> ops, long* counters, int count) : base(name, ops)
    {
        this.counters = counters;
        this.count = count;
    }

    /// <summary>
    /// Emits a counting shim for every implemented op of <paramref name="inner"/> into <paramref name="code"/>
    /// and returns the backend. Make the code visible (<c>CodeBuilder.Publish</c>) before running it.
    /// </summary>
    public static HypervisorBackend Emit(ICodeSpace code, ParavirtBackend inner, string name = "hypervisor")
    {
        ArgumentNullException.ThrowIfNull(code);
        ArgumentNullException.ThrowIfNull(inner);
        int n = inner.OpCount;
        var mem = (long*)NativeMemory.AlignedAlloc((nuint)Math.Max(n * 8, 64), 64);
        new Span<long>(mem, n).Clear();
        var ops = new OpImplementation[n];
        try
        {
            for (int i = 0; i < n; i++)
            {
                var op = inner.Implementation(i);
                ulong counter = (ulong)(mem + i);
                switch (op.Kind)
                {
                    case OpKind.Missing:
                        ops[i] = op;
                        break;
                    case OpKind.Nop:
                        ops[i] = OpImplementation.Call(Shim(code, counter, op.Slot), Sites.Clobbers.None);
                        break;
                    case OpKind.Jump:
                        ops[i] = OpImplementation.Jump(Shim(code, counter, op.Target));
                        break;
                    default:
                        ulong target = Shim(code, counter, op.Target);
                        ulong slot = op.Slot == op.Target ? target : Shim(code, counter, op.Slot);
                        ops[i] = OpImplementation.Call(target, op.Clobbers, slot);
                        break;
                }
            }
            return new HypervisorBackend(name, ops, mem, n);
        }
        catch
        {
            NativeMemory.AlignedFree(mem); // no backend whose shims count into it was returned
            throw;
        }
    }

    /// <summary>
    /// <c>pushfq; push rax; mov rax, counter; lock inc qword [rax]; pop rax; popfq; jmp target</c>:
    /// counts the call and goes on to <paramref name="target"/> with every register and flag as it was.
    /// </summary>
    private static ulong Shim(ICodeSpace code, ulong counter, ulong target)
    {
        code.Align(16);
        return code.Code(a =>
        {
            a.pushfq();
            a.push(rax);
            a.mov(rax, counter);
            a.@lock.inc(__qword_ptr[rax]);
            a.pop(rax);
            a.popfq();
            a.jmp(target);
        });
    }

    /// <summary>Calls of op <paramref name="type"/> counted so far (through any site, patched or not).</summary>
    public long Calls(int type)
    {
        ObjectDisposedException.ThrowIf(counters == null, this);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)type, (uint)count, nameof(type));
        return Volatile.Read(ref counters[type]);
    }

    /// <summary>Calls of every op counted so far.</summary>
    public long TotalCalls
    {
        get
        {
            long total = 0;
            for (int i = 0; i < count; i++) total += Calls(i);
            return total;
        }
    }

    /// <summary>Sets every counter to 0.</summary>
    public void ResetCounters()
    {
        ObjectDisposedException.ThrowIf(counters == null, this);
        for (int i = 0; i < count; i++) Volatile.Write(ref counters[i], 0);
    }

    /// <summary>Frees the counters: the shims must not run any more.</summary>
    public void Dispose()
    {
        if (counters == null) return;
        NativeMemory.AlignedFree(counters);
        counters = null;
    }
}
