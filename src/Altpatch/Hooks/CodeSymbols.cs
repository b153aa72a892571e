using Altpatch.Code;
using Altpatch.Native;

namespace Altpatch.Hooks;

/// <summary>Checks a target against the symbol the dynamic linker knows for it.</summary>
internal static unsafe class CodeSymbols
{
    /// <summary>
    /// Throws <see cref="HookException"/> when <paramref name="target"/> lies after the start of an exported function
    /// (within <see cref="Prologue.ScanWindow"/> bytes) and decoding that function from its start steps over the
    /// target: the target is in the middle of an instruction. Where there is no symbol it cannot tell.
    /// </summary>
    public static void RefuseMidInstruction(ulong target)
    {
        if (!DynamicSymbols.TryFind(target, out _, out string? symbol, out ulong start) || symbol is null || start == 0 || start >= target || target - start >= Prologue.ScanWindow)
            return;
        int length = (int)(target - start) + X86.MaxInstructionLength;
        var code = new ReadOnlySpan<byte>((void*)start, length);
        var d = DecoderCache.Current.Start(code, start, 64);
        while (d.IP < target)
        {
            ulong ip = d.IP;
            d.Decode(out var insn);
            if (insn.IsInvalid) return; // data or padding the linear decode cannot follow: no verdict
            if (insn.NextIP > target)
                throw new HookException(target, $"the target is {symbol}+{target - start}, in the middle of the instruction at {symbol}+{ip - start} ({Disassembler.Text(code.Slice((int)(ip - start), insn.Length), ip)}); nothing written");
        }
    }
}
