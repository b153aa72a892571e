using Altpatch.Sites;

namespace Altpatch.Patching;

/// <summary>
/// A paravirt backend (the kernel's <c>pv_ops</c> contents plus its <c>patch</c> function): an
/// implementation of each op type and the seed's patch interface, <see cref="Patch"/>, which writes a
/// site's new code into a buffer and returns how many bytes it used; the planner pads the rest with
/// NOPs and the poker writes the site once. The default <see cref="Patch"/> is the seed's
/// <c>paravirt_patch_default</c> (<see cref="Paravirt.PatchDefault"/>); derived backends override it to
/// copy native instruction sequences inline (<see cref="Paravirt.PatchInsns"/>), as <c>native_patch</c> does.
/// </summary>
public class ParavirtBackend
{
    private readonly OpImplementation[] ops;

    /// <summary>Creates a backend named <paramref name="name"/> with one implementation per op type (index = type).</summary>
    public ParavirtBackend(string name, IReadOnlyList<OpImplementation> ops)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(ops);
        Name = name;
        this.ops = [.. ops];
        for (int i = 0; i < this.ops.Length; i++)
        {
            var op = this.ops[i];
            if (op.Slot == 0)
                throw new ArgumentException($"backend '{name}': op {i} ({ParavirtOps.Name(i)}) has no slot target (indirect calls need one, even a ud2 stub)", nameof(ops));
            if (op.Kind is OpKind.Call or OpKind.Jump && op.Target == 0)
                throw new ArgumentException($"backend '{name}': op {i} ({ParavirtOps.Name(i)}) is a {op.Kind} op without a target", nameof(ops));
        }
    }

    /// <summary>The backend's name, used in messages and reports ("native", "hypervisor").</summary>
    public string Name { get; }

    /// <summary>Number of op types the backend implements (0..OpCount-1).</summary>
    public int OpCount => ops.Length;

    /// <summary>The implementation of op <paramref name="type"/>.</summary>
    public OpImplementation Implementation(int type)
    {
        if ((uint)type >= (uint)ops.Length)
            throw new ArgumentOutOfRangeException(nameof(type), type, $"backend '{Name}' has op types 0..{ops.Length - 1}");
        return ops[type];
    }

    /// <summary>
    /// The seed's <c>patch(type, clobbers, insnbuf, addr, len)</c>: writes the code for a site of op
    /// <paramref name="type"/> that lets <paramref name="clobbers"/> be changed into
    /// <paramref name="buffer"/> (which holds the site's original bytes on entry) and returns the number of bytes used, at most
    /// <paramref name="length"/>. Returning <paramref name="length"/> without writing keeps the site as it
    /// is (the indirect call). Every relative operand must be computed against <paramref name="address"/>,
    /// the site's final address, never against the buffer.
    /// </summary>
    public virtual int Patch(int type, Clobbers clobbers, Span<byte> buffer, ulong address, int length) =>
        Paravirt.PatchDefault(this, type, clobbers, buffer, address, length);

    /// <summary>Points every slot of <paramref name="table"/> at this backend's implementations.</summary>
    public void FillSlots(OpsTable table)
    {
        ArgumentNullException.ThrowIfNull(table);
        CheckCanFill(table, nameof(table));
        for (int i = 0; i < table.Count; i++) table[i] = ops[i].Slot;
    }

    /// <summary>Throws <see cref="ArgumentException"/> (for <paramref name="paramName"/>) when <paramref name="table"/> has a slot this backend has no op for.</summary>
    internal void CheckCanFill(OpsTable table, string paramName)
    {
        if (table.Count > ops.Length)
            throw new ArgumentException($"backend '{Name}' implements {ops.Length} op types, the ops table has {table.Count} slots", paramName);
    }

    /// <inheritdoc />
    public override string ToString() => Name;
}
