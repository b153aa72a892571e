using System.Text;
using Iced.Intel;

namespace Altpatch.Code;

/// <summary>Formats machine code for people (Iced's GNU-style or Intel syntax), with addresses.</summary>
public static class Disassembler
{
    /// <summary>
    /// Disassembles <paramref name="code"/> as if it were at <paramref name="address"/>: one string per
    /// instruction ("mov eax,edi"); undecodable bytes become "(bad)".
    /// </summary>
    public static IReadOnlyList<string> Lines(ReadOnlySpan<byte> code, ulong address, int bitness = 64)
    {
        var result = new List<string>();
        var formatter = CreateFormatter();
        var output = new StringOutput();
        var d = DecoderCache.Current.Start(code, address, bitness);
        ulong end = address + (ulong)code.Length;
        while (d.IP < end)
        {
            d.Decode(out var insn);
            if (insn.IsInvalid || insn.NextIP > end)
            {
                result.Add("(bad)");
                break;
            }
            formatter.Format(insn, output);
            result.Add(output.ToStringAndReset());
        }
        return result;
    }

    /// <summary>The formatter these lines are written with: Intel syntax, "0x" hex, lower case, "op a, b".</summary>
    internal static Formatter CreateFormatter()
    {
        var formatter = new IntelFormatter();
        formatter.Options.FirstOperandCharIndex = 0;
        formatter.Options.SpaceAfterOperandSeparator = true;
        formatter.Options.HexPrefix = "0x";
        formatter.Options.HexSuffix = "";
        formatter.Options.UppercaseHex = false;
        return formatter;
    }

    /// <summary>The instructions joined with "; ".</summary>
    public static string Text(ReadOnlySpan<byte> code, ulong address, int bitness = 64)
    {
        var lines = Lines(code, address, bitness);
        var sb = new StringBuilder();
        for (int i = 0; i < lines.Count; i++)
        {
            if (i > 0) sb.Append("; ");
            sb.Append(lines[i]);
        }
        return sb.ToString();
    }
}
