using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Sites;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Patching;

/// <summary>
/// The native backend (the kernel's <c>native_patch</c> and the native pv_ops): small ops are copied
/// inline where the site has room and allows what they clobber (<c>pushfq; pop rax</c>,
/// <c>rdtsc; shl rdx, 32; or rax, rdx</c>, <c>popcnt rax, rdi</c>, <c>mov rax, rdi</c>), everything
/// else gets the default patch: a direct call, a jump for the jump op, NOPs for the no-op, <c>ud2</c>
/// for the op user space cannot do. Its functions are emitted into an <see cref="ICodeSpace"/> (such as
/// <c>Altpatch.Emit.CodeBuilder</c>) by <see cref="Emit"/>; ops whose function clobbers more than rax get a callee-save thunk for the ops
/// table, so indirect calls are right at every site.
/// </summary>
public sealed class NativeBackend : ParavirtBackend
{
    private readonly (byte[] Bytes, Clobbers Clobbers)?[] inline;

    private NativeBackend(string name, IReadOnlyList<OpImplementation> ops, (byte[], Clobbers)?[] inline) : base(name, ops) => this.inline = inline;

    /// <summary>
    /// The inline sequence of op <paramref name="type"/> and what it clobbers, or null when the op has none
    /// (the kernel's DEF_NATIVE table). Position-independent: copied as it is.
    /// </summary>
    public (ReadOnlyMemory<byte> Bytes, Clobbers Clobbers)? InlineSequence(int type) =>
        (uint)type < (uint)inline.Length && inline[type] is { } s ? (s.Bytes, s.Clobbers) : null;

    /// <summary>
    /// <c>native_patch</c>: the op's inline sequence when it fits and its clobbers fit the site's,
    /// otherwise <see cref="Paravirt.PatchDefault"/>.
    /// </summary>
    public override int Patch(int type, Clobbers clobbers, Span<byte> buffer, ulong address, int length)
    {
        if ((uint)type < (uint)inline.Length && inline[type] is { } s && s.Bytes.Length <= length && s.Clobbers.FitsIn(clobbers))
            return Paravirt.PatchInsns(buffer, length, s.Bytes);
        return Paravirt.PatchDefault(this, type, clobbers, buffer, address, length);
    }

    /// <summary>
    /// Emits the native implementations of <see cref="ParavirtOps"/> into <paramref name="code"/> and returns
    /// the backend. <paramref name="cpu"/> decides whether <see cref="ParavirtOps.Popcount"/> uses
    /// <c>popcnt</c> (inline and in its function) or a portable bit count (direct calls only).
    /// Make the code visible (<c>CodeBuilder.Publish</c>) before running it.
    /// </summary>
    public static NativeBackend Emit(ICodeSpace code, CpuFeatures cpu, string name = "native")
    {
        ArgumentNullException.ThrowIfNull(code);
        ArgumentNullException.ThrowIfNull(cpu);
        bool popcnt = cpu.Has(CpuFeature.Popcnt);
        var ops = new OpImplementation[ParavirtOps.Count];
        var inl = new (byte[], Clobbers)?[ParavirtOps.Count];

        ulong bug = Fn(code, a => a.ud2());                 // paravirt_BUG
        ulong ret = Fn(code, a => a.ret());                 // paravirt_nop

        ops[ParavirtOps.SaveFl] = OpImplementation.Call(Fn(code, a => { a.pushfq(); a.pop(rax); a.ret(); }), Clobbers.Rax);
        inl[ParavirtOps.SaveFl] = (Bytes(a => { a.pushfq(); a.pop(rax); }), Clobbers.Rax);

        ulong tsc = Fn(code, a => { a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.ret(); });
        ulong tscSaved = Fn(code, a => { a.push(rdx); a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.pop(rdx); a.ret(); });
        ops[ParavirtOps.ReadTsc] = OpImplementation.Call(tsc, Clobbers.Rax | Clobbers.Rdx, tscSaved);
        inl[ParavirtOps.ReadTsc] = (Bytes(a => { a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); }), Clobbers.Rax | Clobbers.Rdx);

        if (popcnt)
        {
            ops[ParavirtOps.Popcount] = OpImplementation.Call(Fn(code, a => { a.popcnt(rax, rdi); a.ret(); }), Clobbers.Rax);
            inl[ParavirtOps.Popcount] = (Bytes(a => a.popcnt(rax, rdi)), Clobbers.Rax);
        }
        else
        {
            ulong sw = Fn(code, a =>
            {
                a.mov(rax, rdi); a.shr(rax, 1); a.mov(rdx, 0x5555_5555_5555_5555UL); a.and(rax, rdx);
                a.mov(rdx, rdi); a.sub(rdx, rax);
                a.mov(rax, rdx); a.shr(rdx, 2); a.mov(rcx, 0x3333_3333_3333_3333UL); a.and(rax, rcx); a.and(rdx, rcx); a.add(rax, rdx);
                a.mov(rdx, rax); a.shr(rdx, 4); a.add(rax, rdx); a.mov(rcx, 0x0F0F_0F0F_0F0F_0F0FUL); a.and(rax, rcx);
                a.mov(rcx, 0x0101_0101_0101_0101UL); a.imul(rax, rcx); a.shr(rax, 56);
                a.ret();
            });
            ops[ParavirtOps.Popcount] = OpImplementation.Call(sw, Clobbers.Rax | Clobbers.Rcx | Clobbers.Rdx, CalleeSaveThunk(code, sw));
        }

        ops[ParavirtOps.Ident64] = OpImplementation.Call(Fn(code, a => { a.mov(rax, rdi); a.ret(); }), Clobbers.Rax);
        inl[ParavirtOps.Ident64] = (Bytes(a => a.mov(rax, rdi)), Clobbers.Rax);

        ulong mix = Fn(code, a =>
        {
            a.mov(rax, rdi); a.mov(rcx, 0x9E37_79B9_7F4A_7C15UL); a.imul(rax, rcx);
            a.mov(rdx, rax); a.shr(rdx, 29); a.xor(rax, rdx); a.ret();
        });
        ops[ParavirtOps.Mix64] = OpImplementation.Call(mix, Clobbers.Rax | Clobbers.Rcx | Clobbers.Rdx, CalleeSaveThunk(code, mix));

        ops[ParavirtOps.IoDelay] = OpImplementation.Nop(ret);
        ops[ParavirtOps.TailReturn] = OpImplementation.Jump(Fn(code, a => { a.lea(rax, __[rdi + rdi]); a.ret(); }));
        ops[ParavirtOps.SafeHalt] = OpImplementation.Missing(bug);
        return new NativeBackend(name, ops, inl);
    }

    /// <summary>
    /// Emits a callee-save thunk for <paramref name="target"/> (the kernel's PV_CALLEE_SAVE): keeps rcx, rdx,
    /// rsi, rdi and r8–r11, so that only rax (and flags) change across it. Returns its address.
    /// </summary>
    public static ulong CalleeSaveThunk(ICodeSpace code, ulong target)
    {
        ArgumentNullException.ThrowIfNull(code);
        AssemblerRegister64[] saved = [rcx, rdx, rsi, rdi, r8, r9, r10, r11];
        return Fn(code, a =>
        {
            a.PushAll(saved);
            a.sub(rsp, 8); // 8 pushes keep rsp at 8 mod 16: realign for the call
            a.call(target);
            a.add(rsp, 8);
            a.PopAll(saved);
            a.ret();
        });
    }

    private static ulong Fn(ICodeSpace code, Action<Assembler> emit)
    {
        code.Align(16);
        return code.Code(emit);
    }

    private static byte[] Bytes(Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var w = new ArrayCodeWriter();
        a.Assemble(w, 0);
        return w.Written.ToArray();
    }
}
