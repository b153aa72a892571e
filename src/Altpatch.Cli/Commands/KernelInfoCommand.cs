using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Altpatch.Images;
using Spectre.Console;

namespace Altpatch.Cli.Commands;

/// <summary><c>altpatch kernel info IMAGE [--json]</c>: version, architecture, payload compression and sizes,
/// the table formats found and the number of sites of each kind.</summary>
public static class KernelInfoCommand
{
    /// <summary>Builds the command.</summary>
    public static Command Create()
    {
        var image = KernelCommand.ImageArgument();
        var json = KernelCommand.JsonOption("the summary");
        var cmd = new Command("info",
            "Show a kernel image's version, architecture, payload compression and sizes, the patch table formats found and the number of sites of each kind.");
        cmd.Arguments.Add(image);
        cmd.Options.Add(json);
        var ignoreCrc = KernelCommand.IgnoreCrcOption();
        cmd.Options.Add(ignoreCrc);
        cmd.SetAction(parseResult =>
        {
            var output = Terminal.Out(parseResult);
            var sw = Stopwatch.StartNew();
            var img = KernelCommand.Open(parseResult.GetValue(image)!, parseResult, ignoreCrc);
            var openTime = sw.Elapsed;
            var tables = img.Tables;
            var tableTime = sw.Elapsed - openTime;
            if (parseResult.GetValue(json))
                WriteJson(output, img, tables);
            else
                WriteText(Terminal.Console(output), img, tables, openTime, tableTime);
            return 0;
        });
        return cmd;
    }

    private static void WriteText(IAnsiConsole console, KernelImage img, KernelPatchTables tables, TimeSpan openTime, TimeSpan tableTime)
    {
        var inv = CultureInfo.InvariantCulture;
        void Row(string k, string v) => Terminal.Field(console, k, v);
        Row("File", string.Create(inv, $"{img.Name} ({img.FileSize:N0} bytes)"));
        if (img.BzImage is { } bz)
        {
            var h = bz.Header;
            Row("Container", string.Create(inv, $"bzImage, boot protocol {h.ProtocolText}, setup {h.SetupSects} + 1 sectors ({h.SetupSize:N0} bytes), syssize 0x{h.SysSize:x}"));
            Row("Payload", string.Create(inv,
                $"{PayloadDecompressor.Name(bz.Compression)} at file offset 0x{bz.PayloadFileOffset:x}: {bz.PayloadLength:N0} bytes -> {bz.DecompressedSize:N0} bytes (x{(double)bz.DecompressedSize / bz.PayloadLength:F2})"));
            if (h.KernelVersion is { } kv)
                Row("Setup version", kv);
            if (img.Integrity is { } integrity)
            {
                Row("CRC32", integrity.Status);
                if (integrity.Signature is { } sig)
                {
                    Row("Signed", string.Join("; ", sig.Certificates.Select(c => c.Description)) + $" (certificate table at 0x{sig.Offset:x}, {sig.Size} bytes)");
                    Row("PE checksum", sig.PeChecksumMatches ? $"0x{sig.PeChecksum:x} matches" : $"0x{sig.PeChecksum:x} does not match the file's 0x{sig.ComputedPeChecksum:x} (the signature was changed)");
                }
                else
                    Row("Signed", "no (no PE certificate table)");
            }
        }
        else
            Row("Container", "ELF file (no bzImage wrapper, not compressed)");
        Row("Version", img.Version?.Banner ?? "(no version banner found)");
        if (img.Version is { } v)
            Row("Release", v.Release);
        var elf = img.Elf;
        Row("Architecture", string.Create(inv,
            $"{KernelCommand.ArchitectureName(img)} (ELF{(elf.Is64 ? 64 : 32)}, machine {elf.Machine}, entry 0x{elf.Entry:x}, {elf.Sections.Count} sections, {elf.Segments.Count} program headers, {elf.Symbols.Count:N0} symbols, ELF {elf.ElfEnd:N0} of {elf.Bytes.Length:N0} bytes)"));
        Row("Time", string.Create(inv, $"open + decompress {openTime.TotalMilliseconds:F0} ms, tables {tableTime.TotalMilliseconds:F0} ms"));
        console.WriteLine();

        var t = new Table().Border(TableBorder.Simple)
            .AddColumn("kind").AddColumn("section").AddColumn("address").AddColumn(new TableColumn("size").RightAligned())
            .AddColumn("format").AddColumn(new TableColumn("entry").RightAligned()).AddColumn(new TableColumn("entries").RightAligned())
            .AddColumn(new TableColumn("sites").RightAligned());
        foreach (var ti in tables.Tables)
        {
            t.AddRow(Markup.Escape(ti.Kind.ShortName()), Markup.Escape(ti.Section), Terminal.Addr(ti.Address),
                ti.Size.ToString("N0", inv), Markup.Escape(ti.Format), ti.EntrySize.ToString(inv), ti.Entries.ToString("N0", inv), ti.Sites.ToString("N0", inv));
        }
        if (tables.Tables.Count == 0)
            console.WriteLine("No patch site tables found.");
        else
            console.Write(t);
        if (tables.PvOps is { } pv)
        {
            console.WriteLine(string.Create(inv,
                $"pv_ops: {Terminal.Addr(pv.Address)} in {pv.Section}, {pv.SlotCount} slots used by sites; {pv.SitesAgreeing} of {tables.Paravirt.Length} sites agree ({pv.SitesDisagreeing} disagree, {pv.SitesSkipped} not an indirect call)"));
        }
    }

    private static void WriteIntegrity(System.Text.Json.Utf8JsonWriter w, BzImageIntegrity integrity)
    {
        w.WriteStartObject("crc");
        w.WriteString("status", integrity.Problem is not null ? "unchecked" : integrity.CrcMatches ? "match" : "mismatch");
        w.WriteString("stored", $"0x{integrity.StoredCrc:x8}");
        w.WriteString("computed", $"0x{integrity.ComputedCrc:x8}");
        w.WriteNumber("offset", integrity.CrcOffset);
        w.WriteNumber("builtLength", integrity.BuiltLength);
        w.WriteString("problem", integrity.Problem);
        w.WriteEndObject();
        if (integrity.Signature is not { } sig)
        {
            w.WriteNull("signature");
            return;
        }
        w.WriteStartObject("signature");
        w.WriteNumber("offset", sig.Offset);
        w.WriteNumber("size", sig.Size);
        w.WriteString("peChecksum", $"0x{sig.PeChecksum:x}");
        w.WriteBoolean("peChecksumMatches", sig.PeChecksumMatches);
        w.WriteStartArray("certificates");
        foreach (var c in sig.Certificates)
        {
            w.WriteStartObject();
            w.WriteNumber("offset", c.Offset);
            w.WriteNumber("length", c.Length);
            w.WriteString("revision", $"0x{c.Revision:x4}");
            w.WriteNumber("type", c.Type);
            w.WriteString("format", c.Type == WinCertificate.TypePkcsSignedData ? "authenticode-pkcs7" : "other");
            w.WriteString("digest", c.DigestAlgorithm);
            w.WriteString("signer", c.Signer);
            w.WriteString("issuer", c.Issuer);
            w.WriteString("problem", c.Problem);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteJson(TextWriter output, KernelImage img, KernelPatchTables tables)
    {
        Terminal.WriteJson(output, w =>
        {
            w.WriteStartObject();
            w.WriteString("file", img.Name);
            w.WriteNumber("fileSize", img.FileSize);
            w.WriteString("container", img.BzImage is null ? "elf" : "bzImage");
            if (img.BzImage is { } bz)
            {
                var h = bz.Header;
                w.WriteStartObject("bzImage");
                w.WriteString("bootProtocol", h.ProtocolText);
                w.WriteNumber("setupSects", h.SetupSects);
                w.WriteNumber("setupSize", h.SetupSize);
                w.WriteNumber("syssize", h.SysSize);
                w.WriteString("setupVersion", h.KernelVersion);
                w.WriteNumber("payloadOffset", bz.PayloadFileOffset);
                w.WriteEndObject();
                w.WriteStartObject("payload");
                w.WriteString("compression", PayloadDecompressor.Name(bz.Compression));
                w.WriteNumber("compressedSize", bz.PayloadLength);
                w.WriteNumber("decompressedSize", bz.DecompressedSize);
                w.WriteEndObject();
                if (img.Integrity is { } integrity)
                    WriteIntegrity(w, integrity);
            }
            else
                w.WriteString("payload", "none");
            if (img.Version is { } v)
            {
                w.WriteStartObject("version");
                w.WriteString("banner", v.Banner);
                w.WriteString("release", v.Release);
                w.WriteNumber("major", v.Major);
                w.WriteNumber("minor", v.Minor);
                w.WriteNumber("patch", v.Patch);
                w.WriteEndObject();
            }
            else
                w.WriteNull("version");
            w.WriteString("architecture", img.Architecture.MachineName());
            w.WriteNumber("bitness", img.Bitness);
            w.WriteStartObject("elf");
            w.WriteNumber("class", img.Elf.Is64 ? 64 : 32);
            w.WriteNumber("machine", img.Elf.Machine);
            w.WriteString("entry", Terminal.Addr(img.Elf.Entry));
            w.WriteNumber("sections", img.Elf.Sections.Count);
            w.WriteNumber("programHeaders", img.Elf.Segments.Count);
            w.WriteNumber("symbols", img.Elf.Symbols.Count);
            w.WriteNumber("elfSize", img.Elf.ElfEnd);
            w.WriteNumber("bufferSize", img.Elf.Bytes.Length);
            w.WriteEndObject();
            w.WriteStartArray("tables");
            foreach (var ti in tables.Tables)
            {
                w.WriteStartObject();
                w.WriteString("kind", ti.Kind.ShortName());
                w.WriteString("section", ti.Section);
                w.WriteString("address", Terminal.Addr(ti.Address));
                w.WriteNumber("size", ti.Size);
                w.WriteString("format", ti.Format);
                w.WriteNumber("entrySize", ti.EntrySize);
                w.WriteNumber("entries", ti.Entries);
                w.WriteNumber("sites", ti.Sites);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("counts");
            foreach (var kind in Enum.GetValues<KernelSiteKind>())
                w.WriteNumber(kind.ShortName(), tables.Count(kind));
            w.WriteEndObject();
            if (tables.PvOps is { } pv)
            {
                w.WriteStartObject("pvOps");
                w.WriteString("address", Terminal.Addr(pv.Address));
                w.WriteString("section", pv.Section);
                w.WriteNumber("pointerSize", pv.PointerSize);
                w.WriteNumber("slotCount", pv.SlotCount);
                w.WriteNumber("sitesAgreeing", pv.SitesAgreeing);
                w.WriteNumber("sitesDisagreeing", pv.SitesDisagreeing);
                w.WriteNumber("sitesSkipped", pv.SitesSkipped);
                w.WriteStartArray("slots");
                foreach (var s in pv.Slots)
                    w.WriteStringValue(Terminal.Addr(s));
                w.WriteEndArray();
                w.WriteEndObject();
            }
            else
                w.WriteNull("pvOps");
            w.WriteEndObject();
        });
    }
}
