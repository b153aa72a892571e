using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Iced.Intel;
using Decoder = Iced.Intel.Decoder;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel sites IMAGE [--kind K] [--json] [--syntax att|intel]</c>: every patch site of a kernel
/// image with its original bytes and their disassembly; for alternatives also the feature and the
/// replacement bytes, disassembled at the replacement's own address.
/// </summary>
public static class KernelSitesCommand
{
    private static readonly string[] Kinds = [.. KernelSiteKinds.All.Select(k => k.ShortName())];

    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var kind = new Option<string?>("--kind")
        {
            Description = "Only sites of one kind: alt (.altinstructions), para (.parainstructions), lock (.smp_locks), retpoline (.retpoline_sites) or return (.return_sites). Default: all.",
        };
        kind.AcceptOnlyFromAmong(Kinds);
        var json = KernelCommand.JsonOption("the sites");
        var syntax = new Option<string>("--syntax")
        {
            Description = "Disassembly syntax: att (GNU as / objdump, the kernel's own) or intel.",
            DefaultValueFactory = _ => "att",
        };
        syntax.AcceptOnlyFromAmong("att", "intel");
        var cmd = new Command("sites",
            "List a kernel image's patch sites: index, address, length, feature (alternatives), op type and clobbers (paravirt), original bytes and replacement bytes with their disassembly.");
        cmd.Arguments.Add(image);
        cmd.Options.Add(kind);
        cmd.Options.Add(json);
        cmd.Options.Add(syntax);
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        cmd.Options.Add(ignoreCrc);
        cmd.SetAction(parseResult =>
        {
            var output = Terminal.Out(parseResult);
            var img = KernelCommand.Open(parseResult.GetValue(image)!, parseResult, ignoreCrc);
            var tables = img.Tables;
            string? only = parseResult.GetValue(kind);
            Formatter formatter = parseResult.GetValue(syntax) == "intel" ? new IntelFormatter() : new GasFormatter();
            formatter.Options.UppercaseHex = false;
            formatter.Options.HexPrefix = "0x";
            formatter.Options.HexSuffix = null;
            formatter.Options.SpaceAfterOperandSeparator = true;
            var rows = Collect(img, tables, only, formatter);
            if (parseResult.GetValue(json))
                WriteJson(output, img, only, rows);
            else
                WriteText(output, rows);
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// The feature of an alternative site in the image's own numbering (<see cref="ImageFeatureNumbering.Read"/>): its
    /// 6.1 macro (X86_FEATURE_* / X86_BUG_*) when the image numbers features as 6.1.176 does, else the name the
    /// image's own <c>x86_cap_flags</c> gives it, with the "!" of an inverted site and the kernel's own
    /// "word*32+bit" spelling; the number alone when nothing names it.
    /// </summary>
    internal static string DescribeFeature(KernelAltSite site, ImageFeatureNumbering numbering) =>
        numbering.FeatureName(site.Cpuid) is { } name
            ? $"{(site.Not ? "!" : "")}{name} ({site.FeatureWord}*32+{site.FeatureBit})"
            : site.FeatureText;

    /// <summary>One site, ready to print.</summary>
    private sealed record Row(
        KernelSiteKind Kind, int Index, ulong Address, int Length, byte[] Original, IReadOnlyList<string> OriginalAsm,
        KernelAltSite? Alt = null, byte[]? Replacement = null, IReadOnlyList<string>? ReplacementAsm = null,
        KernelParavirtSite? Para = null, ulong? SlotAddress = null, ulong? SlotTarget = null, string? Feature = null);

    private static List<Row> Collect(KernelImage img, KernelPatchTables tables, string? only, Formatter formatter)
    {
        bool Want(KernelSiteKind k) => only is null || only == k.ShortName();
        var rows = new List<Row>();
        int bitness = img.Bitness;
        if (Want(KernelSiteKind.Alternative))
        {
            var numbering = ImageFeatureNumbering.Read(img);
            foreach (var a in tables.Alternatives)
            {
                var orig = img.ReadBytes(a.Address, a.InstrLen).ToArray();
                var repl = img.ReadBytes(a.ReplacementAddress, a.ReplacementLen).ToArray();
                rows.Add(new Row(KernelSiteKind.Alternative, a.Index, a.Address, a.InstrLen, orig,
                    Disassemble(orig, a.Address, bitness, formatter), a, repl, Disassemble(repl, a.ReplacementAddress, bitness, formatter),
                    Feature: DescribeFeature(a, numbering)));
            }
        }
        if (Want(KernelSiteKind.Paravirt))
        {
            var pv = tables.PvOps;
            foreach (var p in tables.Paravirt)
            {
                var orig = img.ReadBytes(p.Address, p.Len).ToArray();
                ulong? slot = pv?.SlotAddress(p.Type);
                ulong? target = pv is not null && p.Type < pv.SlotCount ? pv.Slots[p.Type] : null;
                rows.Add(new Row(KernelSiteKind.Paravirt, p.Index, p.Address, p.Len, orig, Disassemble(orig, p.Address, bitness, formatter),
                    Para: p, SlotAddress: slot, SlotTarget: target));
            }
        }
        if (Want(KernelSiteKind.SmpLock))
            foreach (var l in tables.SmpLocks) rows.Add(OneInstruction(img, KernelSiteKind.SmpLock, l.Index, l.Address, formatter));
        if (Want(KernelSiteKind.Retpoline))
            foreach (var r in tables.Retpolines) rows.Add(OneInstruction(img, KernelSiteKind.Retpoline, r.Index, r.Address, formatter));
        if (Want(KernelSiteKind.Return))
            foreach (var r in tables.Returns) rows.Add(OneInstruction(img, KernelSiteKind.Return, r.Index, r.Address, formatter));
        return rows;
    }

    /// <summary>A site that names one instruction (lock prefix, retpoline call/jump, return jump): decode it to find its length.</summary>
    private static Row OneInstruction(KernelImage img, KernelSiteKind kind, int index, ulong address, Formatter formatter)
    {
        var sec = img.Elf.SectionContaining(address);
        int avail = sec is { } s ? (int)Math.Min(15UL, s.EndAddress - address) : 1;
        var bytes = img.ReadBytes(address, avail).ToArray();
        var decoder = Decoder.Create(img.Bitness, new ByteArrayCodeReader(bytes), address);
        decoder.Decode(out var insn);
        int len = insn.IsInvalid ? 1 : insn.Length;
        var code = bytes.AsSpan(0, len).ToArray();
        return new Row(kind, index, address, len, code, Disassemble(code, address, img.Bitness, formatter));
    }

    /// <summary>Disassembles <paramref name="code"/> as if at <paramref name="ip"/>; "(bad)" marks bytes that do not decode.</summary>
    private static List<string> Disassemble(byte[] code, ulong ip, int bitness, Formatter formatter)
    {
        var list = new List<string>();
        var decoder = Decoder.Create(bitness, new ByteArrayCodeReader(code), ip);
        var output = new StringOutput();
        ulong end = ip + (ulong)code.Length;
        while (decoder.IP < end)
        {
            decoder.Decode(out var insn);
            if (insn.IsInvalid)
            {
                list.Add("(bad)");
                break;
            }
            formatter.Format(insn, output);
            list.Add(output.ToStringAndReset());
        }
        return list;
    }

    /// <summary>"0f 1f 44 00 00".</summary>
    private static string HexBytes(byte[] b) => string.Join(' ', b.Select(x => x.ToString("x2", CultureInfo.InvariantCulture)));

    private static void WriteText(TextWriter output, List<Row> rows)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        foreach (var r in rows)
        {
            string info = r.Kind switch
            {
                KernelSiteKind.Alternative => $"feature {r.Feature}",
                KernelSiteKind.Paravirt => string.Create(inv, $"type {r.Para!.Value.Type} clobbers 0x{r.Para.Value.Clobbers:x}"),
                _ => "",
            };
            sb.Append(inv, $"{r.Kind.ShortName(),-9} {r.Index,6} 0x{r.Address:x} len {r.Length,3}  {info,-22} {HexBytes(r.Original),-30}  {string.Join("; ", r.OriginalAsm)}");
            if (r.SlotAddress is { } slot)
                sb.Append(inv, $"  [pv_ops slot 0x{slot:x}{(r.SlotTarget is { } t ? $" -> 0x{t:x}" : "")}]");
            sb.Append('\n');
            if (r.Alt is { } a)
                sb.Append(inv, $"{"",16} repl 0x{a.ReplacementAddress:x} len {a.ReplacementLen,3}{(a.PadLen != 0 ? $" pad {a.PadLen}" : "")}{(a.Flags != 0 ? $" flags 0x{a.Flags:x}" : "")}  {HexBytes(r.Replacement!),-30}  {string.Join("; ", r.ReplacementAsm!)}\n");
        }
        sb.Append(inv, $"{rows.Count} sites\n");
        output.Write(sb.ToString());
    }

    private static void WriteJson(TextWriter output, KernelImage img, string? only, List<Row> rows)
    {
        Terminal.WriteJson(output, w =>
        {
            w.WriteStartObject();
            w.WriteString("file", img.Name);
            w.WriteString("kind", only ?? "all");
            w.WriteNumber("count", rows.Count);
            w.WriteStartArray("sites");
            foreach (var r in rows)
            {
                w.WriteStartObject();
                w.WriteString("kind", r.Kind.ShortName());
                w.WriteNumber("index", r.Index);
                w.WriteString("address", Terminal.Addr(r.Address));
                w.WriteNumber("length", r.Length);
                if (r.Alt is { } a)
                {
                    w.WriteString("feature", r.Feature);
                    w.WriteNumber("cpuid", a.Cpuid);
                    w.WriteBoolean("not", a.Not);
                    w.WriteNumber("flags", a.Flags);
                    w.WriteNumber("padLength", a.PadLen);
                }
                if (r.Para is { } p)
                {
                    w.WriteNumber("type", p.Type);
                    w.WriteNumber("clobbers", p.Clobbers);
                    if (r.SlotAddress is { } slot) w.WriteString("pvOpsSlot", Terminal.Addr(slot));
                    if (r.SlotTarget is { } t) w.WriteString("pvOpsTarget", Terminal.Addr(t));
                }
                w.WriteString("bytes", Terminal.Hex(r.Original));
                WriteStrings(w, "asm", r.OriginalAsm);
                if (r.Alt is { } alt)
                {
                    w.WriteString("replacementAddress", Terminal.Addr(alt.ReplacementAddress));
                    w.WriteNumber("replacementLength", alt.ReplacementLen);
                    w.WriteString("replacementBytes", Terminal.Hex(r.Replacement!));
                    WriteStrings(w, "replacementAsm", r.ReplacementAsm!);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        });
    }

    private static void WriteStrings(Utf8JsonWriter w, string name, IReadOnlyList<string> values)
    {
        w.WriteStartArray(name);
        foreach (var v in values)
            w.WriteStringValue(v);
        w.WriteEndArray();
    }
}
