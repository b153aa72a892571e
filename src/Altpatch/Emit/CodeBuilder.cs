using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Native;
using Altpatch.Sites;
using Altpatch.Text;
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
/// </summary>
public sealed class CodeBuilder : IDisposable
{
    private readonly List<AlternativeSite> alternatives = [];
    private readonly Dictionary<string, ulong> functions = new(StringComparer.Ordinal);
    private readonly ulong textEnd, replacementStart, replacementEnd, dataStart, dataEnd;
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
        replacement = replacementStart = textEnd;
        replacementEnd = replacementStart + (ulong)replacementSize;
        data = dataStart = replacementEnd;
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
        if (length > PatchPlan.MaxPatchLength)
            throw new ArgumentException($"alternative at 0x{site:x} would be {length} bytes, more than MAX_PATCH_LEN ({PatchPlan.MaxPatchLength})");
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
    public void Dispose() => Memory.Dispose();
}
