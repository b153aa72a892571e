using System.Collections.Immutable;
using System.Text;

namespace Altpatch.Images;

/// <summary>
/// A Linux kernel module file (<c>.ko</c>, or <c>.ko.xz</c>/<c>.ko.zst</c> read as they are): an ELF relocatable
/// object (<c>ET_REL</c>) whose sections the module loader places, relocates and patches. Holds the parsed ELF file and
/// what <c>.modinfo</c> says (name, <c>vermagic</c>, dependencies). Data only: linking is <see cref="KernelModuleLinker"/>.
/// </summary>
public sealed class KernelModule
{
    /// <summary>The section that holds the <c>key=value</c> strings of <c>modinfo</c>.</summary>
    public const string ModinfoSection = ".modinfo";

    /// <summary>The module's <c>struct module</c> (its name is at offset 24 on x86-64).</summary>
    public const string ThisModuleSection = ".gnu.linkonce.this_module";

    private KernelModule(string fileName, ElfFile elf, PayloadCompression compression, ImmutableArray<KeyValuePair<string, string>> modinfo)
    {
        FileName = fileName;
        Elf = elf;
        Compression = compression;
        Modinfo = modinfo;
        string? Get(string key) => modinfo.FirstOrDefault(kv => kv.Key == key).Value;
        Name = Get("name") ?? NameFromFile(fileName);
        Vermagic = Get("vermagic");
        var deps = Get("depends");
        Depends = string.IsNullOrEmpty(deps) ? [] : [.. deps.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
    }

    /// <summary>The file name (for messages).</summary>
    public string FileName { get; }

    /// <summary>The full path of the file it was opened from (<see cref="Open"/>); null for one read from memory.</summary>
    public string? SourcePath { get; private set; }

    /// <summary>The module's ELF file (the decompressed bytes for <c>.ko.xz</c>/<c>.ko.zst</c>).</summary>
    public ElfFile Elf { get; }

    /// <summary>How the file was compressed (<see cref="PayloadCompression.None"/> for a plain <c>.ko</c>).</summary>
    public PayloadCompression Compression { get; }

    /// <summary>Every <c>key=value</c> of <c>.modinfo</c>, in file order.</summary>
    public ImmutableArray<KeyValuePair<string, string>> Modinfo { get; }

    /// <summary>The module's name (<c>modinfo name=</c>, else the file name without <c>.ko</c> and with '-' as '_'):
    /// the directory of <c>/sys/module</c>.</summary>
    public string Name { get; }

    /// <summary><c>vermagic=</c>: the release and build options the module was built for, or null.</summary>
    public string? Vermagic { get; }

    /// <summary>The modules this one needs (<c>depends=</c>), by name.</summary>
    public ImmutableArray<string> Depends { get; }

    /// <summary>The release <see cref="Vermagic"/> names (its first word), or null.</summary>
    public string? Release => Vermagic?.Split(' ', 2)[0];

    /// <summary>The module name a file name gives: "kvm-intel.ko.xz" → "kvm_intel".</summary>
    public static string NameFromFile(string fileName)
    {
        ArgumentNullException.ThrowIfNull(fileName);
        string n = Path.GetFileName(fileName);
        foreach (var ext in (string[])[".ko.xz", ".ko.zst", ".ko.gz", ".ko"])
        {
            if (n.EndsWith(ext, StringComparison.Ordinal))
            {
                n = n[..^ext.Length];
                break;
            }
        }
        return n.Replace('-', '_');
    }

    /// <summary>Opens a module file.</summary>
    /// <param name="path">A <c>.ko</c>, <c>.ko.xz</c> or <c>.ko.zst</c> file.</param>
    /// <exception cref="ImageFormatException">Not an x86-64 relocatable ELF file, truncated or corrupt, or a compressed
    /// file that does not decompress.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static KernelModule Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        long size = new FileInfo(path).Length;
        if (size > ImageLimits.MaxFileSize)
            throw new ImageFormatException($"{Path.GetFileName(path)}: {size} bytes is more than the {ImageLimits.MaxFileSize} bytes Altpatch reads as a module");
        var m = Load(File.ReadAllBytes(path), Path.GetFileName(path));
        m.SourcePath = Path.GetFullPath(path);
        return m;
    }

    /// <summary>Reads a module already in memory (a plain buffer is used in place).</summary>
    /// <param name="file">The file's bytes.</param>
    /// <param name="name">Its name, for messages.</param>
    /// <exception cref="ImageFormatException">As for <see cref="Open"/>.</exception>
    public static KernelModule Load(byte[] file, string name)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(name);
        if (file.Length == 0)
            throw new ImageFormatException($"{name}: empty file");
        var compression = PayloadCompression.None;
        byte[] bytes = file;
        if (!ElfFile.HasElfMagic(file))
        {
            if (!PayloadDecompressor.TryDetect(file, out compression) || compression is not (PayloadCompression.Xz or PayloadCompression.Zstd or PayloadCompression.Gzip))
                throw new ImageFormatException($"{name}: not a kernel module: no ELF magic, and not an xz, zstd or gzip file");
            bytes = PayloadDecompressor.Decompress(file, compression, -1, name);
            if (!ElfFile.HasElfMagic(bytes))
                throw new ImageFormatException($"{name}: the {PayloadDecompressor.Name(compression)} data decompressed to {bytes.Length} bytes but is not an ELF file");
        }
        var elf = ElfFile.Parse(bytes, name);
        if (elf.FileType != 1)
            throw new ImageFormatException($"{name}: not a kernel module: ELF type {elf.FileType} (a module is a relocatable object, ET_REL = 1)");
        if (!elf.Is64 || elf.Machine != ElfFile.MachineX86_64)
            throw new ImageFormatException($"{name}: an ELF{(elf.Is64 ? 64 : 32)} module for machine {elf.Machine}: Altpatch links x86-64 modules (EM_X86_64 = 62) only");
        return new KernelModule(name, elf, compression, ReadModinfo(elf));
    }

    private static ImmutableArray<KeyValuePair<string, string>> ReadModinfo(ElfFile elf)
    {
        if (elf.FindSection(ModinfoSection) is not { } sec || !sec.HasFileBytes)
            return [];
        var list = ImmutableArray.CreateBuilder<KeyValuePair<string, string>>();
        var data = elf.SectionBytes(sec).Span;
        while (!data.IsEmpty)
        {
            int z = data.IndexOf((byte)0);
            var s = z < 0 ? data : data[..z];
            data = z < 0 ? default : data[(z + 1)..];
            if (s.IsEmpty)
                continue;
            string text = Encoding.UTF8.GetString(s);
            int eq = text.IndexOf('=', StringComparison.Ordinal);
            if (eq > 0)
                list.Add(new(text[..eq], text[(eq + 1)..]));
        }
        return list.ToImmutable();
    }
}
