using Altpatch.Code;

namespace Altpatch.Patching;

/// <summary>Options of the paravirt patcher.</summary>
public sealed record ParavirtOptions
{
    /// <summary>The NOPs that pad a backend's code to its site's length. Default: today's x86-64 table.</summary>
    public NopTable Nops { get; init; } = NopTable.X86_64;

    /// <summary>A name for the site table, used in messages and reports (a module, a section).</summary>
    public string? TableName { get; init; }

    /// <summary>
    /// The kernel's <c>noreplace-paravirt</c> boot option: plan nothing, so every site keeps its
    /// indirect call through the ops table (which still follows the active backend).
    /// </summary>
    public bool NoReplace { get; init; }

    /// <summary>
    /// The debug switch: when set, every site's decision and its bytes before and after are written
    /// here (as <see cref="AlternativeOptions.Log"/> does for alternatives).
    /// </summary>
    public TextWriter? Log { get; init; }

    /// <summary>
    /// When a backend's code is one instruction that leaves exactly one byte of the site, fill that byte
    /// with a CS segment-override prefix (0x2E) in front of the instruction instead of a NOP after it, as
    /// 6.1's retpoline patching does for 6-byte sites: <c>2E E8 rel32</c> instead of <c>E8 rel32; nop</c>.
    /// The prefix is ignored in 64-bit code but saves the NOP's issue slot. Applied only to
    /// <c>call/jmp rel32</c> and to instructions whose operands are registers and immediates (checked by
    /// re-decoding); anything else is NOP-padded. Off by default: the seed's padding.
    /// </summary>
    public bool PrefixPadding { get; init; }

    /// <summary>The defaults.</summary>
    public static ParavirtOptions Default { get; } = new();
}
