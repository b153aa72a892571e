using Altpatch.Code;

namespace Altpatch.Patching;

/// <summary>The byte a <c>lock</c> prefix becomes on a uniprocessor.</summary>
public enum UpLockByte : byte
{
    /// <summary>0x3E, the DS segment-override prefix: a prefix that does nothing in 64-bit code, so the instruction keeps its length and form (what x86-64 Linux writes today).</summary>
    DsPrefix = X86.DsPrefix,
    /// <summary>0x90, <c>nop</c>: the prefix becomes an instruction of its own before the unlocked instruction (what the seed's <c>add_nops(insn, 1)</c> wrote).</summary>
    Nop = X86.Nop,
}

/// <summary>Options of the SMP lock patcher.</summary>
public sealed record SmpLockOptions
{
    /// <summary>What a <c>lock</c> prefix becomes in UP mode. Default: <see cref="UpLockByte.DsPrefix"/>.</summary>
    public UpLockByte UpByte { get; init; } = UpLockByte.DsPrefix;

    /// <summary>The kernel's <c>noreplace-smp</c> boot option: never patch lock prefixes (every plan is empty).</summary>
    public bool NoReplace { get; init; }

    /// <summary>The debug switch: when set, every site's bytes before and after are written here.</summary>
    public TextWriter? Log { get; init; }

    /// <summary>The defaults.</summary>
    public static SmpLockOptions Default { get; } = new();
}
