using Altpatch.Code;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Patching;

/// <summary>
/// The paravirt patcher (the kernel's <c>apply_paravirt()</c>) as a pure function from sites and a
/// backend to a <see cref="PatchPlan"/>, and the seed's patch helpers (<c>paravirt_patch_default</c>,
/// <c>_call</c>, <c>_jmp</c>, <c>_insns</c>). For each site, a buffer of
/// <see cref="X86.MaxPatchLength"/> bytes is prepared with the site's original bytes, the
/// backend's <see cref="ParavirtBackend.Patch"/> writes its code there and says how many bytes it
/// used, the rest is padded with NOPs, and the whole site becomes one poke. Every site is planned
/// from its original bytes, whatever memory holds now, so switching backends and back gives back
/// exactly the bytes the first backend produced.
/// </summary>
public static class Paravirt
{
    /// <summary>
    /// Plans <paramref name="sites"/> for <paramref name="backend"/>, reading each site's current bytes
    /// through <paramref name="code"/>. Memory may hold the original bytes, the bytes this backend
    /// produces (no poke), or the bytes <paramref name="previous"/> produced (the backend being switched
    /// away from). Throws <see cref="PatchException"/> naming the site for: an unknown op type, a site
    /// shorter than an indirect call (6 bytes) or longer than 254, original bytes not of the site's
    /// length, overlapping sites, a backend that uses more bytes than the site has (or fails), a site
    /// that cannot be read, and memory that holds none of the known states. Nothing is written.
    /// When <paramref name="decisions"/> is given, each site's outcome is appended to it.
    /// With <see cref="ParavirtOptions.NoReplace"/> the plan is empty.
    /// </summary>
    public static PatchPlan Plan(IReadOnlyList<ParavirtSite> sites, ParavirtBackend backend, ICodeReader code,
                                 ParavirtOptions? options = null, ParavirtBackend? previous = null,
                                 ICollection<ParavirtDecision>? decisions = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return PlanCore(sites, backend, code, options ?? ParavirtOptions.Default, previous, decisions);
    }

    /// <summary>
    /// Plans the way back to the original indirect calls, from memory that holds the original bytes or
    /// what <paramref name="previous"/> produced. Same checks as <see cref="Plan"/>.
    /// </summary>
    public static PatchPlan PlanRestore(IReadOnlyList<ParavirtSite> sites, ICodeReader code, ParavirtBackend? previous,
                                        ParavirtOptions? options = null) =>
        PlanCore(sites, null, code, options ?? ParavirtOptions.Default, previous, null);

    private static PatchPlan PlanCore(IReadOnlyList<ParavirtSite> sites, ParavirtBackend? backend, ICodeReader code,
                                      ParavirtOptions options, ParavirtBackend? previous, ICollection<ParavirtDecision>? decisions)
    {
        ArgumentNullException.ThrowIfNull(sites);
        ArgumentNullException.ThrowIfNull(code);
        if (options.NoReplace && backend is not null)
        {
            options.Log?.WriteLine($"paravirt: noreplace-paravirt: {sites.Count} site(s) keep their indirect calls");
            return PatchPlan.Empty;
        }

        int[] order = SiteTable.OrderByAddress(sites);
        var builder = new PlanBuilder(sites.Count);
        Span<byte> wanted = stackalloc byte[X86.MaxPatchLength];
        Span<byte> current = stackalloc byte[X86.MaxPatchLength];
        Span<byte> other = stackalloc byte[X86.MaxPatchLength];
        var overlaps = new SiteTable.Overlaps();

        foreach (int i in order)
        {
            var s = sites[i];
            CheckShape(s, i, backend ?? previous, options);
            if (overlaps.Problem(s.Address) is { } overlap)
                throw Error(i, s, options, overlap);

            int len = s.Length;
            var want = wanted[..len];
            int used;
            if (backend is null)
            {
                s.Original.Span.CopyTo(want);
                used = len;
            }
            else used = AssembleInto(s, i, backend, wanted, options);

            var cur = current[..len];
            if (!code.TryRead(s.Address, cur, out var problem))
                throw Error(i, s, options, problem);

            ParavirtDecision decision = backend is null
                ? new ParavirtDecision(i, s.Address, s.Type, ParavirtStrategy.Indirect, len, "original indirect call", ParavirtReason.Restored)
                : Describe(s, i, backend, want, used);
            decisions?.Add(decision);

            if (!cur.SequenceEqual(want))
            {
                bool known = cur.SequenceEqual(s.Original.Span);
                if (!known && previous is not null)
                {
                    AssembleInto(s, i, previous, other, options);
                    known = cur.SequenceEqual(other[..len]);
                }
                if (!known)
                    throw Error(i, s, options,
                        SiteTable.UnknownState(cur, s.Original.Span, previous is null ? null : $"what backend '{previous.Name}' produces"));
                string why = backend is null ? "restore: indirect call" : $"{backend.Name}: {decision.Detail}";
                builder.Add(s.Address, cur, want, Site(i, options), why);
                options.Log?.WriteLine($"paravirt: {Ref(i, options)} 0x{s.Address:x} {ParavirtOps.Name(s.Type)} clobbers {s.Clobbers.ToRegisterList()} len {len} {why}: {Convert.ToHexString(cur)} -> {Convert.ToHexString(want)}");
            }
            else
            {
                options.Log?.WriteLine($"paravirt: {Ref(i, options)} 0x{s.Address:x} {ParavirtOps.Name(s.Type)} clobbers {s.Clobbers.ToRegisterList()} len {len} unchanged ({decision.Detail}): {Convert.ToHexString(cur)}");
            }
            overlaps.Add(Site(i, options), s.Address, len);
        }
        return builder.Build();
    }

    /// <summary>
    /// Assembles one site's new bytes for <paramref name="backend"/> in <paramref name="buffer"/> (at
    /// least <see cref="X86.MaxPatchLength"/> bytes; the site's bytes are its first
    /// <see cref="ParavirtSite.Length"/>): original bytes, the backend's code, NOP padding. Pure: touches
    /// no code. Returns the bytes of backend code before the padding. Throws <see cref="PatchException"/>
    /// for the same site errors as <see cref="Plan"/>.
    /// </summary>
    public static int Assemble(in ParavirtSite site, ParavirtBackend backend, Span<byte> buffer, ParavirtOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        options ??= ParavirtOptions.Default;
        if (buffer.Length < X86.MaxPatchLength)
            throw new ArgumentException($"buffer of {buffer.Length} bytes is shorter than MAX_PATCH_LEN ({X86.MaxPatchLength})", nameof(buffer));
        CheckShape(site, 0, backend, options);
        return AssembleInto(site, 0, backend, buffer, options);
    }

    private static int AssembleInto(in ParavirtSite s, int index, ParavirtBackend backend, Span<byte> buffer, ParavirtOptions options)
    {
        // Prepare the buffer with the original instructions (as 6.1's apply_paravirt does; the seed left it
        // uninitialised, so a backend that kept the site wrote garbage), then let the backend write.
        var full = buffer[..X86.MaxPatchLength];
        full.Clear();
        s.Original.Span.CopyTo(full);
        int used;
        try
        {
            used = backend.Patch(s.Type, s.Clobbers, full, s.Address, s.Length);
        }
        catch (Exception e) when (e is ArgumentException or IndexOutOfRangeException or InvalidOperationException)
        {
            throw Error(index, s, options, $"backend '{backend.Name}' failed: {e.Message}", e);
        }
        if (used < 0 || used > s.Length)
            throw Error(index, s, options, $"backend '{backend.Name}' used {used} bytes for op {s.Type} ({ParavirtOps.Name(s.Type)}), but the site has {s.Length}");
        options.Nops.AddNops(full[used..s.Length]);
        return used;
    }

    // ---- The seed's helpers: each fills the buffer and returns the bytes used ----

    /// <summary>
    /// The seed's <c>paravirt_patch_default</c>: no implementation → <c>ud2</c>; a no-op → nothing (all
    /// NOPs); a jump op → <c>jmp rel32</c>; otherwise a direct <c>call rel32</c> when the target's
    /// clobbers fit in the site's, else the indirect call stays (returns <paramref name="length"/>).
    /// </summary>
    public static int PatchDefault(ParavirtBackend backend, int type, Clobbers clobbers, Span<byte> buffer, ulong address, int length)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var op = backend.Implementation(type);
        return op.Kind switch
        {
            OpKind.Missing => PatchInsns(buffer, length, X86.Ud2),
            OpKind.Nop => 0,
            OpKind.Jump => PatchJump(op.Target, buffer, address, length),
            _ => PatchCall(buffer, op.Target, op.Clobbers, address, clobbers, length),
        };
    }

    /// <summary>
    /// The seed's <c>paravirt_patch_call</c>: writes <c>call rel32</c> to <paramref name="target"/>, its
    /// offset computed against <paramref name="address"/> (the site), and returns 5; returns
    /// <paramref name="length"/> (keep the site) when the target clobbers registers the site does not
    /// allow, the site is shorter than 5 bytes, or the target is beyond rel32 reach of the site.
    /// </summary>
    public static int PatchCall(Span<byte> buffer, ulong target, Clobbers targetClobbers, ulong address, Clobbers siteClobbers, int length)
    {
        if (!targetClobbers.FitsIn(siteClobbers)) return length; // target would clobber too much for this site
        return Branch(X86.Call, target, buffer, address, length);
    }

    /// <summary>
    /// The seed's <c>paravirt_patch_jmp</c>: writes <c>jmp rel32</c> to <paramref name="target"/> computed
    /// against <paramref name="address"/> and returns 5, or returns <paramref name="length"/> when the site
    /// is too short or the target out of rel32 reach.
    /// </summary>
    public static int PatchJump(ulong target, Span<byte> buffer, ulong address, int length) => Branch(X86.Jmp32, target, buffer, address, length);

    private static int Branch(byte opcode, ulong target, Span<byte> buffer, ulong address, int length) =>
        length >= X86.CallSize && X86.TryWriteBranch(buffer, opcode, address, target) ? X86.CallSize : length;

    /// <summary>
    /// The seed's <c>paravirt_patch_insns</c>: copies <paramref name="insns"/> (position-independent
    /// instructions, the kernel's DEF_NATIVE) into the buffer and returns their length, or returns
    /// <paramref name="length"/> (keep the site) when they do not fit.
    /// </summary>
    public static int PatchInsns(Span<byte> buffer, int length, ReadOnlySpan<byte> insns)
    {
        if (insns.Length > length) return length;
        insns.CopyTo(buffer);
        return insns.Length;
    }

    // ---- Reports ----

    private static ParavirtDecision Describe(in ParavirtSite s, int index, ParavirtBackend backend, ReadOnlySpan<byte> bytes, int used)
    {
        var op = backend.Implementation(s.Type);
        if (used == 0)
            return new(index, s.Address, s.Type, ParavirtStrategy.Nop, 0, "no-op: NOPs");
        if (used == X86.Ud2.Length && bytes[..used].SequenceEqual(X86.Ud2))
            return new(index, s.Address, s.Type, ParavirtStrategy.Ud2, used, "no implementation: ud2");
        if (used == s.Length && bytes.SequenceEqual(s.Original.Span))
        {
            var (reason, why) = WhyIndirect(s, op);
            return new(index, s.Address, s.Type, ParavirtStrategy.Indirect, used, "indirect call kept: " + why, reason, why);
        }
        if (used == X86.CallSize && bytes[0] is X86.Call or X86.Jmp32)
        {
            ulong target = X86.Rel32Target(s.Address, X86.CallSize, bytes[1..]);
            return bytes[0] == X86.Call
                ? new(index, s.Address, s.Type, ParavirtStrategy.DirectCall, used, $"direct call to 0x{target:x}")
                : new(index, s.Address, s.Type, ParavirtStrategy.Jump, used, $"jump to 0x{target:x}");
        }
        return new(index, s.Address, s.Type, ParavirtStrategy.Inline, used, $"inline {used} byte(s)");
    }

    private static (ParavirtReason, string) WhyIndirect(in ParavirtSite s, in OpImplementation op)
    {
        if (op.Kind == OpKind.Call && !op.Clobbers.FitsIn(s.Clobbers))
            return (ParavirtReason.ClobbersNotAllowed, $"target clobbers {op.Clobbers.ToRegisterList()}, the site allows {s.Clobbers.ToRegisterList()}");
        if (op.Kind is OpKind.Call or OpKind.Jump && !X86.TryRel32(op.Target, s.Address + X86.CallSize, out _))
            return (ParavirtReason.OutOfReach, $"target 0x{op.Target:x} is beyond rel32 reach of the site");
        return (ParavirtReason.BackendChoice, "the backend's choice");
    }

    // ---- Checks ----

    private static void CheckShape(in ParavirtSite s, int index, ParavirtBackend? backend, ParavirtOptions options)
    {
        if (s.Length < ParavirtSite.IndirectCallLength)
            throw Error(index, s, options, $"length {s.Length} is shorter than an indirect call through the ops table ({ParavirtSite.IndirectCallLength} bytes)");
        if (SiteTable.BufferProblem(s) is { } problem)
            throw Error(index, s, options, problem);
        if (backend is not null && (uint)s.Type >= (uint)backend.OpCount)
            throw Error(index, s, options, $"unknown op type {s.Type}: backend '{backend.Name}' has op types 0..{backend.OpCount - 1}");
    }

    private static SiteRef Site(int index, ParavirtOptions options) => new(SiteKind.Paravirt, index, options.TableName);

    private static string Ref(int index, ParavirtOptions options) => Site(index, options).ToString();

    private static PatchException Error(int index, in ParavirtSite s, ParavirtOptions options, string problem, Exception? inner = null) =>
        new(Site(index, options), s.Address, problem, inner);
}
