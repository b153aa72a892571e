using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Fuzz;

/// <summary>
/// The real kernels as frames for the table targets: each table reader is fuzzed in the context of a real
/// vmlinux (its sections, addresses and text), with only the table's bytes replaced by the input. The other
/// tables are hidden (their section names blanked) so one input reads one table.
/// </summary>
public sealed class ImageFrame
{
    private readonly byte[] pristineImage;
    private readonly Dictionary<string, (int NameField, int SizeField, uint Name, long FileOffset, ulong Size)> tableFields = [];
    private readonly int sizeFieldWidth;

    private ImageFrame(string name, KernelImage image)
    {
        Name = name;
        Image = image;
        if (!MemoryMarshal.TryGetArray((ReadOnlyMemory<byte>)image.ElfBytes, out ArraySegment<byte> seg) || seg.Offset != 0)
            throw new InvalidOperationException("the ELF buffer is not an array");
        Bytes = seg.Array!;
        pristineImage = (byte[])Bytes.Clone();
        var elf = image.Elf;
        bool is64 = elf.Is64;
        ulong shoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(Bytes.AsSpan(40)) : BinaryPrimitives.ReadUInt32LittleEndian(Bytes.AsSpan(32));
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(Bytes.AsSpan(is64 ? 58 : 46));
        sizeFieldWidth = is64 ? 8 : 4;
        foreach (var s in elf.Sections)
        {
            if (s.Name is not (KernelPatchTables.AltInstructions or KernelPatchTables.ParaInstructions or KernelPatchTables.SmpLocksSection
                or KernelPatchTables.RetpolineSites or KernelPatchTables.ReturnSites))
                continue;
            int h = (int)shoff + s.Index * shentsize;
            tableFields[s.Name] = (h, h + (is64 ? 32 : 20), BinaryPrimitives.ReadUInt32LittleEndian(Bytes.AsSpan(h)), (long)s.FileOffset, s.Size);
        }
        Tables = image.Tables;
        (CapFlagsAddress, _) = ImageFeatureNumbering.FindNameArray(elf, "fpu", "vme");
        textTables = new(() => KernelTextTables.Read(Image.Elf, Image.Bitness == 64 ? Altpatch.Code.NopTable.X86_64Linux61 : Altpatch.Code.NopTable.X86_32, Symbols));
    }

    /// <summary>"amd64" or "i386".</summary>
    public string Name { get; }

    /// <summary>The real image, opened once; its bytes are <see cref="Bytes"/>.</summary>
    public KernelImage Image { get; }

    /// <summary>The vmlinux buffer the inputs are written into (restored after each input).</summary>
    public byte[] Bytes { get; }

    /// <summary>The pristine image's tables.</summary>
    public KernelPatchTables Tables { get; }

    /// <summary>The image's own kallsyms (null without).</summary>
    public KernelSymbols? Symbols => Image.TryGetSymbols(out var s) ? s : null;

    /// <summary>The pristine image's text-writer tables (jump labels, static calls, mcount), read once.</summary>
    public KernelTextTables TextTables => textTables.Value;

    private readonly Lazy<KernelTextTables> textTables;

    /// <summary>Where <c>x86_cap_flags</c> is, if found.</summary>
    public ulong? CapFlagsAddress { get; }

    /// <summary>Capacity of a table section: how many input bytes it can take.</summary>
    public int Capacity(string table) => tableFields.TryGetValue(table, out var t) ? (int)t.Size : 0;

    /// <summary>
    /// Writes <paramref name="content"/> as the only table <paramref name="table"/> (sh_size set to its length, cut
    /// at the real section's size; every other table hidden), parses the ELF again over the buffer and runs
    /// <paramref name="read"/>; then restores the buffer.
    /// </summary>
    public void WithTable(string table, ReadOnlySpan<byte> content, Action<ElfFile> read)
    {
        if (!tableFields.TryGetValue(table, out var target))
            return;
        int n = Math.Min(content.Length, (int)target.Size);
        try
        {
            foreach (var (name, t) in tableFields)
            {
                if (name != table)
                    BinaryPrimitives.WriteUInt32LittleEndian(Bytes.AsSpan(t.NameField), 0);   // "" : not found
            }
            WriteSize(target.SizeField, (ulong)n);
            content[..n].CopyTo(Bytes.AsSpan((int)target.FileOffset));
            read(ElfFile.Parse(Bytes, $"{Name} (vmlinux)"));
        }
        finally
        {
            foreach (var (_, t) in tableFields)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(Bytes.AsSpan(t.NameField), t.Name);
                WriteSize(t.SizeField, t.Size);
            }
            Restore(target.FileOffset, n);
        }
    }

    /// <summary>Writes bytes at virtual addresses, runs <paramref name="body"/>, and restores them.</summary>
    public void WithPatches(IEnumerable<(ulong Address, byte[] Bytes)> patches, Action body)
    {
        var undo = new List<(long Offset, int Length)>();
        try
        {
            foreach (var (address, bytes) in patches)
            {
                if (!Image.Elf.TryGetFileOffset(address, Math.Max(1, bytes.Length), out long off))
                    continue;
                bytes.CopyTo(Bytes.AsSpan((int)off));
                undo.Add((off, bytes.Length));
            }
            body();
        }
        finally
        {
            foreach (var (offset, length) in undo)
                Restore(offset, length);
        }
    }

    private void Restore(long offset, int length) => pristineImage.AsSpan((int)offset, length).CopyTo(Bytes.AsSpan((int)offset));

    private void WriteSize(int field, ulong size)
    {
        if (sizeFieldWidth == 8)
            BinaryPrimitives.WriteUInt64LittleEndian(Bytes.AsSpan(field), size);
        else
            BinaryPrimitives.WriteUInt32LittleEndian(Bytes.AsSpan(field), (uint)size);
    }

    /// <summary>The directory of the real images: <c>ALTPATCH_SHARED_LINUX</c>, else ../shared/linux beside the
    /// repository that holds the running program.</summary>
    public static string SharedLinux
    {
        get
        {
            if (Environment.GetEnvironmentVariable("ALTPATCH_SHARED_LINUX") is { Length: > 0 } env)
                return env;
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Altpatch.slnx")))
                    return Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared", "linux"));
            }
            return "/work/shared/linux";
        }
    }

    /// <summary>Whether the real images are there.</summary>
    public static bool Available => File.Exists(Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-cloud-amd64")) && File.Exists(Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-686"));

    private static readonly Lazy<ImageFrame> Amd64Frame = new(() => new ImageFrame("amd64", KernelImage.Open(Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-cloud-amd64"))));
    private static readonly Lazy<ImageFrame> I386Frame = new(() => new ImageFrame("i386", KernelImage.Open(Path.Combine(SharedLinux, "vmlinuz-6.1.0-50-686"))));

    /// <summary>The x86-64 frame (6.1 cloud-amd64).</summary>
    public static ImageFrame Amd64 => Amd64Frame.Value;

    /// <summary>The i386 frame (6.1 686).</summary>
    public static ImageFrame I386 => I386Frame.Value;

    /// <summary>The frame an input's first byte selects (even: x86-64, odd: i386), and the rest of the input.</summary>
    public static (ImageFrame Frame, ReadOnlyMemory<byte> Input) Select(byte[] input) =>
        input.Length == 0 ? (Amd64, ReadOnlyMemory<byte>.Empty) : ((input[0] & 1) == 0 ? Amd64 : I386, input.AsMemory(1));
}
