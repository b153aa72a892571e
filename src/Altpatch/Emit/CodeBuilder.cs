using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Native;
using Altpatch.Patching;
using Altpatch.Sites;
using Iced.Intel;

namespace Altpatch.Emit;

/// <summary>
/// Builds x86-64 code in W^X <see cref="ExecutableMemory"/> with Iced's <see cref="Assembler"/>,
/// recording patch sites the way the kernel's macros do. The memory is laid out like a small kernel
/// image: text (functions and sites), then replacements (the kernel's .altinstr_replacement), then
/// read-only data. <see cref="Alternative"/> is the kernel's <c>ALTERNATIVE(old, new, feature)</c>:
/// the original instructions go in the text, padded with NOPs to the longer of old and new; the
/// replacement is kept aside, assembled at its own address; the site is recorded in <see cref="AlternativeSites"/>.
/// Each piece of code is assembled at its final address, so labels are local to one piece; refer to
/// other pieces (functions, data) by address.
/// <see cref="ParavirtCall"/> is the kernel's <c>PVOP_CALL</c>: an indirect call through the
/// <see cref="OpsTable"/> slot of an op, recorded in <see cref="ParavirtSites"/>; <see cref="Lock"/> is
/// <c>LOCK_PREFIX</c>: a lock-prefixed instruction whose prefix is recorded in <see cref="LockSites"/>.
/// </summary>
public sealed class CodeBuilder : ICodeSpace, IDisposable
{
    private readonly List<AlternativeSite> alternatives = [];
    private readonly List<ParavirtSite> paravirt = [];
    private readonly List<ulong> locks = [];
    private OpsTable? ops;
    private bool ownsOps;
    private readonly Dictionary<string, ulong> functions = new(StringComparer.Ordinal);
    private readonly ulong textEnd, replacementEnd, dataEnd;
    private readonly ArrayCodeWriter writer = new();
    private ulong text, replacement, data;

    /// <summary>The memory the code lives in (owned by this builder).</summary>
    public ExecutableMemory Memory { get; }

    /// <summary>NOPs used to pad original code.</summary>
    public NopTable Nops { get; }

    /// <summary>Where the next piece of text goes.</summary>
    public ulong Cursor => text;

    /// <summary>Start of the text area.</summary>
    public ulong TextStart => Memory.Address;

    /// <summary>The alternative sites recorded so far, in emission order (the table).</summary>
    public IReadOnlyList<AlternativeSite> AlternativeSites => alternatives;

    /// <summary>The paravirt call sites recorded so far, in emission order (the kernel's .parainstructions).</summary>
    public IReadOnlyList<ParavirtSite> ParavirtSites => paravirt;

    /// <summary>Addresses of the lock prefixes emitted so far, in emission order (the kernel's .smp_locks).</summary>
    public IReadOnlyList<ulong> LockSites => locks;

    /// <summary>The ops table paravirt sites call through, once created or set.</summary>
    public OpsTable? OpsTable => ops;

    /// <summary>One past the end of the text area.</summary>
    public ulong TextEnd => textEnd;

    /// <summary>Functions by name.</summary>
    public IReadOnlyDictionary<string, ulong> Functions => functions;

    /// <summary>Allocates W^X memory for text, replacements and data of the given sizes.</summary>
    public CodeBuilder(int textSize = 64 * 1024, int replacementSize = 16 * 1024, int dataSize = 4096, NopTable? nops = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(textSize);
        ArgumentOutOfRangeException.ThrowIfNegative(replacementSize);
        ArgumentOutOfRangeException.ThrowIfNegative(dataSize);
        Nops = nops ?? NopTable.X86_64;
        Memory = ExecutableMemory.Allocate(textSize + replacementSize + dataSize, "altpatch-code");
        text = Memory.Address;
        textEnd = text + (ulong)textSize;
        replacement = textEnd;
        replacementEnd = replacement + (ulong)replacementSize;
        data = replacementEnd;
        dataEnd = Memory.Address + (ulong)Memory.Size;
    }

    /// <summary>Assembles <paramref name="emit"/> at the cursor and returns its address.</summary>
    public ulong Code(Action<Assembler> emit)
    {
        ArgumentNullException.ThrowIfNull(emit);
        var bytes = Assemble(emit, text);
        return Put(ref text, textEnd, bytes, "text");
    }

    /// <summary>Places raw bytes in the text and returns their address.</summary>
    public ulong Bytes(ReadOnlySpan<byte> bytes) => Put(ref text, textEnd, bytes, "text");

    /// <summary>Pads the text with <c>int3</c> to a multiple of <paramref name="alignment"/>.</summary>
    public ulong Align(int alignment)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(alignment);
        ulong a = (ulong)alignment;
        ulong next = (text + a - 1) / a * a;
        if (next > textEnd) throw new InvalidOperationException("text area is full");
        text = next;
        return text;
    }

    /// <summary>
    /// Starts a function: aligns to 16, records <paramref name="name"/>, runs <paramref name="body"/>
    /// (which appends code and sites through this builder) and returns the function's address.
    /// </summary>
    public ulong Function(string name, Action<CodeBuilder> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (functions.ContainsKey(name)) throw new ArgumentException($"function '{name}' already exists", nameof(name));
        ulong start = Align(16);
        functions[name] = start;
        body(this);
        return start;
    }

    /// <summary>Places read-only data (aligned to 8) and returns its address.</summary>
    public ulong Data(ReadOnlySpan<byte> bytes)
    {
        data = (data + 7) & ~7UL;
        return Put(ref data, dataEnd, bytes, "data");
    }

    /// <summary>
    /// The kernel's <c>ALTERNATIVE(original, replacement, feature)</c>: emits <paramref name="original"/>
    /// at the cursor padded with NOPs to the longer of the two, keeps <paramref name="replacement"/>
    /// aside, records the site and returns its index in <see cref="AlternativeSites"/>.
    /// </summary>
    public int Alternative(Action<Assembler> original, Action<Assembler> replacement, CpuFeature feature, AltFlags flags = AltFlags.None) =>
        AlternativeN(original, [(replacement, feature, flags)]);

    /// <summary>
    /// The kernel's <c>ALTERNATIVE_2</c>: two replacements for one site; when both conditions hold,
    /// the second wins. Returns the index of the first of the two sites.
    /// </summary>
    public int Alternative2(Action<Assembler> original,
                            Action<Assembler> replacement1, CpuFeature feature1,
                            Action<Assembler> replacement2, CpuFeature feature2) =>
        AlternativeN(original, [(replacement1, feature1, AltFlags.None), (replacement2, feature2, AltFlags.None)]);

    /// <summary>Any number of alternatives for one site (the last whose condition holds wins).</summary>
    public int AlternativeN(Action<Assembler> original, IReadOnlyList<(Action<Assembler> Replacement, CpuFeature Feature, AltFlags Flags)> replacements)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(replacements);
        ulong site = text;
        byte[] old = Assemble(original, site);
        var repl = new List<(byte[] Bytes, ulong Address, CpuFeature Feature, AltFlags Flags)>();
        int length = old.Length;
        foreach (var (r, f, fl) in replacements)
        {
            ulong at = replacement;
            byte[] bytes = Assemble(r, at);
            Put(ref replacement, replacementEnd, bytes, "replacement");
            repl.Add((bytes, at, f, fl));
            length = Math.Max(length, bytes.Length);
        }
        if (length > X86.MaxPatchLength)
            throw new ArgumentException($"alternative at 0x{site:x} would be {length} bytes, more than MAX_PATCH_LEN ({X86.MaxPatchLength})");
        if (length == 0)
            throw new ArgumentException($"alternative at 0x{site:x} is empty");
        var body = new byte[length];
        old.CopyTo(body, 0);
        Nops.AddNops(body.AsSpan(old.Length));
        Put(ref text, textEnd, body, "text");
        int first = alternatives.Count;
        foreach (var (bytes, at, f, fl) in repl)
            alternatives.Add(new AlternativeSite(site, length, body, bytes, at, f, fl));
        return first;
    }

    /// <summary>
    /// Creates the ops table the paravirt sites of this builder call through: <paramref name="count"/> slots
    /// of read-write data placed within rel32 reach of the builder's memory, freed with the builder.
    /// </summary>
    public OpsTable CreateOpsTable(int count)
    {
        if (ops is not null) throw new InvalidOperationException("this builder already has an ops table");
        ops = OpsTable.Allocate(count, Memory.Address, Memory.Size);
        ownsOps = true;
        return ops;
    }

    /// <summary>Uses <paramref name="table"/> (owned by the caller) for paravirt sites; it must be within rel32 reach of the builder's memory.</summary>
    public void UseOpsTable(OpsTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (ops is not null) throw new InvalidOperationException("this builder already has an ops table");
        if (!table.IsInReach(Memory.Address, Memory.Address + (ulong)Memory.Size))
            throw new ArgumentException($"the ops table at 0x{table.Address:x} is out of rip-relative reach of the code at 0x{Memory.Address:x}", nameof(table));
        ops = table;
    }

    /// <summary>
    /// The kernel's <c>PVOP_CALL</c>: emits <c>call [rip+slot]</c> through the ops table slot of
    /// <paramref name="type"/>, padded with NOPs to <paramref name="length"/> bytes (longer sites leave room
    /// for inline code), records the site with the registers it lets the op change and returns its index
    /// in <see cref="ParavirtSites"/>. Arguments go in rdi, the result comes back in rax.
    /// </summary>
    public int ParavirtCall(int type, Clobbers clobbers, int length = ParavirtSite.IndirectCallLength) =>
        EmitParavirt(X86.CallRipModRm, type, clobbers, length);

    /// <summary>
    /// A jump op's site (the kernel's <c>jmp *pv_ops.iret</c>): emits <c>jmp [rip+slot]</c> padded to
    /// <paramref name="length"/>, records it and returns its index. The op ends the function.
    /// </summary>
    public int ParavirtJump(int type, int length = ParavirtSite.IndirectCallLength) =>
        EmitParavirt(X86.JmpRipModRm, type, Clobbers.Any, length);

    private int EmitParavirt(byte modrm, int type, Clobbers clobbers, int length)
    {
        if (ops is null) throw new InvalidOperationException("create an ops table first (CreateOpsTable) or set one (UseOpsTable)");
        ArgumentOutOfRangeException.ThrowIfLessThan(length, ParavirtSite.IndirectCallLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, X86.MaxPatchLength);
        ulong slot = ops.SlotAddress(type);
        ulong site = text;
        if (!X86.TryRel32(slot, site + ParavirtSite.IndirectCallLength, out int disp))
            throw new InvalidOperationException($"the ops table slot 0x{slot:x} is out of rip-relative reach of 0x{site:x}");
        var body = new byte[length];
        body[0] = X86.IndirectBranch;
        body[1] = modrm; // call/jmp qword [rip+disp32]
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(body.AsSpan(2), disp);
        Nops.AddNops(body.AsSpan(ParavirtSite.IndirectCallLength));
        Put(ref text, textEnd, body, "text");
        paravirt.Add(new ParavirtSite(site, type, clobbers, length, body));
        return paravirt.Count - 1;
    }

    /// <summary>
    /// The kernel's <c>LOCK_PREFIX</c>: emits <paramref name="instruction"/> (one instruction written
    /// without the prefix, e.g. <c>a =&gt; a.xadd(__qword_ptr[rdi], rax)</c>) with a <c>lock</c> prefix
    /// in front, records the prefix's address and returns its index in <see cref="LockSites"/>. Throws
    /// when the instruction cannot be locked.
    /// </summary>
    public int Lock(Action<Assembler> instruction)
    {
        ArgumentNullException.ThrowIfNull(instruction);
        ulong site = text;
        byte[] plain = Assemble(instruction, site + 1); // RIP-relative operands end where they will end
        var body = new byte[plain.Length + 1];
        body[0] = X86.LockPrefix;
        plain.CopyTo(body, 1);
        var d = Decoder.Create(64, new ByteArrayCodeReader(body), site);
        d.Decode(out var insn);
        if (insn.IsInvalid || !insn.HasLockPrefix || insn.Length != body.Length)
            throw new ArgumentException($"'{Convert.ToHexString(plain)}' is not one instruction that can take a lock prefix", nameof(instruction));
        Put(ref text, textEnd, body, "text");
        locks.Add(site);
        return locks.Count - 1;
    }

    /// <summary>This builder's lock table as a module named <paramref name="name"/>: the whole text area and <see cref="LockSites"/>.</summary>
    public SmpLockModule LockModule(string name) => new(name, TextStart, textEnd, [.. locks]);

    /// <summary>Makes everything written so far visible to instruction fetch on every core.</summary>
    public void Publish() => CoreSync.TrySyncAllCores();

    private byte[] Assemble(Action<Assembler> emit, ulong rip)
    {
        var a = new Assembler(64);
        emit(a);
        writer.Clear();
        if (a.Instructions.Count == 0) return [];
        a.Assemble(writer, rip);
        return writer.Written.ToArray();
    }

    private ulong Put(ref ulong cursor, ulong limit, ReadOnlySpan<byte> bytes, string area)
    {
        if ((ulong)bytes.Length > limit - cursor)
            throw new InvalidOperationException($"the {area} area is full ({bytes.Length} more bytes do not fit)");
        ulong at = cursor;
        bytes.CopyTo(Memory.Writable[(int)(at - Memory.Address)..]);
        cursor += (ulong)bytes.Length;
        return at;
    }

    /// <summary>Frees the memory; code in it must not run any more.</summary>
    public void Dispose()
    {
        Memory.Dispose();
        if (ownsOps) ops?.Dispose();
    }
}
