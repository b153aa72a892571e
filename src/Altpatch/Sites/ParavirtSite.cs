using Altpatch.Code;

namespace Altpatch.Sites;

/// <summary>
/// One paravirt op call site (the kernel's <c>struct paravirt_patch_site</c>): at <see cref="Address"/>,
/// <see cref="Length"/> bytes that start as an indirect call (or, for a jump op, an indirect jump)
/// through the ops table slot of op <see cref="Type"/>, <c>call [rip+slot]</c>, padded with NOPs when
/// the site leaves room for inline code. A backend may replace them with a direct call, a jump,
/// an inline sequence, NOPs or <c>ud2</c>, as long as what it clobbers fits in <see cref="Clobbers"/>.
/// This is data only: nothing here reads or writes code.
/// </summary>
/// <param name="Address">Final address of the site: where the code runs.</param>
/// <param name="Type">The op type: the index of the op's slot in the ops table (the kernel's PARAVIRT_PATCH(op)).</param>
/// <param name="Clobbers">The registers the site lets the op change.</param>
/// <param name="Length">Length of the site in bytes, 6..254 (an indirect call is 6 bytes).</param>
/// <param name="Original">The site's original bytes (the indirect call and its padding), exactly <paramref name="Length"/> of them.</param>
public readonly record struct ParavirtSite(ulong Address, int Type, Clobbers Clobbers, int Length, ReadOnlyMemory<byte> Original) : IPatchSite
{
    /// <summary>Length of <c>call [rip+disp32]</c> / <c>jmp [rip+disp32]</c>: the shortest paravirt site.</summary>
    public const int IndirectCallLength = X86.IndirectRipSize;
}
