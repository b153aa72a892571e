using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Patching;

/// <summary>Whether lock prefixes are in place (SMP) or patched away (UP).</summary>
public enum SmpMode
{
    /// <summary>Every registered lock site holds its <c>lock</c> prefix (0xF0).</summary>
    Smp,
    /// <summary>Every registered lock site holds the UP byte (<see cref="SmpLockOptions.UpByte"/>).</summary>
    Up,
}

/// <summary>
/// The SMP lock patcher (the kernel's <c>alternatives_smp_lock/unlock()</c>) as a pure function from
/// lock tables to a <see cref="PatchPlan"/>: for UP, each <c>lock</c> prefix (0xF0) becomes the UP byte
/// (0x3E by default, 0x90 as the seed wrote); for SMP, the UP byte becomes 0xF0 again. One 1-byte poke
/// per site that is not already in the wanted state. Each site is checked first: inside its module's
/// text, holding 0xF0 or the UP byte, and 0xF0 there prefixing an instruction that can be locked
/// (with the 0x90 byte also: the instruction after the NOP decodes as the same instruction). Any
/// failure is a <see cref="PatchException"/> naming the site, and nothing is planned.
/// </summary>
public static class SmpLocks
{
    /// <summary>Plans every site of every module for <paramref name="mode"/>; empty with <see cref="SmpLockOptions.NoReplace"/>.</summary>
    public static PatchPlan Plan(IEnumerable<SmpLockModule> modules, SmpMode mode, ICodeReader code, SmpLockOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(modules);
        ArgumentNullException.ThrowIfNull(code);
        options ??= SmpLockOptions.Default;
        if (options.NoReplace)
        {
            options.Log?.WriteLine($"smp locks: noreplace-smp: lock prefixes stay ({mode} not applied)");
            return PatchPlan.Empty;
        }
        var builder = new PlanBuilder();
        foreach (var m in modules) PlanModule(m, mode, code, options, builder);
        return builder.Build();
    }

    /// <summary>Plans one module's sites for <paramref name="mode"/>; empty with <see cref="SmpLockOptions.NoReplace"/>.</summary>
    public static PatchPlan Plan(SmpLockModule module, SmpMode mode, ICodeReader code, SmpLockOptions? options = null) =>
        Plan([module], mode, code, options);

    private static void PlanModule(SmpLockModule m, SmpMode mode, ICodeReader code, SmpLockOptions options, PlanBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(m);
        byte up = (byte)options.UpByte;
        byte want = mode == SmpMode.Smp ? X86.LockPrefix : up;
        string why = mode == SmpMode.Smp ? "SMP: lock prefix" : $"UP: lock prefix -> {(options.UpByte == UpLockByte.Nop ? "nop" : "ds prefix")}";
        Span<byte> bytes = stackalloc byte[X86.MaxInstructionLength];
        Span<byte> wanted = [want];
        for (int k = 0; k < m.Locks.Count; k++)
        {
            ulong at = m.Locks[k];
            if (at < m.TextStart || at >= m.TextEnd)
                throw Error(m, k, at, $"is outside the module's text 0x{m.TextStart:x}-0x{m.TextEnd:x}");
            int n = (int)Math.Min((ulong)X86.MaxInstructionLength, m.TextEnd - at);
            var buf = bytes[..n];
            if (!code.TryRead(at, buf, out _))
            {
                buf = bytes[..1];
                if (!code.TryRead(at, buf, out var problem)) throw Error(m, k, at, problem);
            }
            byte b = buf[0];
            if (b != X86.LockPrefix && b != up)
                throw Error(m, k, at, $"holds 0x{b:X2}, neither a lock prefix (F0) nor the UP byte ({up:X2})");
            CheckInstruction(m, k, at, buf, options.UpByte);
            if (b == want)
            {
                options.Log?.WriteLine($"smp locks: {Ref(m, k)} 0x{at:x} unchanged: {b:X2}");
                continue;
            }
            builder.Add(at, buf[..1], wanted, new SiteRef(SiteKind.Lock, k, m.Name), why);
            options.Log?.WriteLine($"smp locks: {Ref(m, k)} 0x{at:x} {why}: {b:X2} -> {want:X2}");
        }
    }

    /// <summary>
    /// The site must be the lock prefix of a lockable instruction: F0 followed by the rest decodes as one
    /// valid locked instruction inside the bytes read. With 0x90, the rest alone must decode as the same
    /// instruction without the prefix, so that the NOP is harmless.
    /// </summary>
    private static void CheckInstruction(SmpLockModule m, int k, ulong at, Span<byte> buf, UpLockByte upByte)
    {
        if (buf.Length < 2)
            throw Error(m, k, at, "cannot read the instruction the prefix belongs to");
        byte saved = buf[0];
        buf[0] = X86.LockPrefix;
        var d = DecoderCache.Current.Start(buf, at, 64);
        d.Decode(out var locked);
        buf[0] = saved;
        if (locked.IsInvalid || !locked.HasLockPrefix || locked.Length > buf.Length)
            throw Error(m, k, at, $"0xF0 there does not prefix a lockable instruction ({Convert.ToHexString(buf[..Math.Min(buf.Length, 8)])}…)");
        if (upByte == UpLockByte.Nop)
        {
            var rest = DecoderCache.Current.Start(buf[1..], at + 1, 64);
            rest.Decode(out var plain);
            if (plain.IsInvalid || plain.Mnemonic != locked.Mnemonic || plain.Length != locked.Length - 1)
                throw Error(m, k, at, $"a nop in place of the lock prefix would change the instruction ({locked.Mnemonic} of {locked.Length} bytes)");
        }
    }

    private static string Ref(SmpLockModule m, int k) => new SiteRef(SiteKind.Lock, k, m.Name).ToString();

    private static PatchException Error(SmpLockModule m, int k, ulong at, string problem) =>
        new(new SiteRef(SiteKind.Lock, k, m.Name), at, problem);
}
