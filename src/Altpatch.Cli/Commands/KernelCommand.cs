using System.CommandLine;
using Altpatch.Images;
using Altpatch.Images.Boot;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>altpatch kernel …</c>: read real Linux kernel images (bzImage or vmlinux ELF) and their patch
/// site tables. Subcommands: <c>info</c> (<see cref="KernelInfoCommand"/>), <c>sites</c>
/// (<see cref="KernelSitesCommand"/>), <c>patch</c> (<see cref="KernelPatchCommand"/>), <c>symbols</c>
/// (<see cref="KernelSymbolsCommand"/>) and <c>verify</c> (<see cref="KernelVerifyCommand"/>).
/// </summary>
public static class KernelCommand
{
    /// <summary>Builds the <c>kernel</c> command and its subcommands.</summary>
    public static Command Create()
    {
        var kernel = new Command("kernel",
            "Read Linux x86 kernel images (bzImage or vmlinux ELF, i386 or x86-64): version, payload, the alternative, paravirt, SMP lock, retpoline and return patch sites; patch them as the kernel does at boot for a given CPU; and verify a running kernel's text against them.");
        kernel.Subcommands.Add(KernelInfoCommand.Create());
        kernel.Subcommands.Add(KernelSitesCommand.Create());
        kernel.Subcommands.Add(KernelPatchCommand.Create());
        kernel.Subcommands.Add(KernelSymbolsCommand.Create());
        kernel.Subcommands.Add(KernelVerifyCommand.Create());
        kernel.Subcommands.Add(KernelModuleCommand.Create());
        return kernel;
    }

    /// <summary>The IMAGE argument shared by the subcommands.</summary>
    internal static Argument<FileInfo> ImageArgument() => new("IMAGE")
    {
        Description = "A bzImage (e.g. /boot/vmlinuz-*; any CONFIG_KERNEL_* compression) or a vmlinux ELF file.",
    };

    /// <summary>The --json option shared by the subcommands.</summary>
    internal static Option<bool> JsonOption(string what) => new("--json") { Description = $"Write {what} as JSON (addresses as \"0x…\" strings) instead of text." };

    /// <summary>The --ignore-crc option every command that reads an image has.</summary>
    /// <summary><c>--rules LINE</c>: apply a kernel line's rules whatever the image's version (unverified).</summary>
    internal static Option<string?> RulesOption() => new("--rules")
    {
        Description = "Apply the boot-time rules of this kernel line (6.12, 6.1, 2.6.22) instead of the image's own: for an image whose line has none, with a warning that the result is unverified. Default: the line of the image's version and table formats.",
    };

    /// <summary>The line <c>--rules</c> names (null without it); a line that is not the image's own is reported with a
    /// one-line warning on the error writer.</summary>
    internal static KernelLine? Rules(ParseResult parse, Option<string?> option, KernelImage image)
    {
        if (parse.GetValue(option) is not { } name)
            return null;
        var line = KernelLines.Find(name);
        if (KernelLines.ForcedWarning(image, line) is { } warning)
            parse.InvocationConfiguration.Error.WriteLine($"altpatch: warning: {warning}");
        return line;
    }

    internal static Option<bool> IgnoreCrcOption() => new("--ignore-crc")
    {
        Description = "Read a bzImage whose build CRC-32 does not match (a corrupt or modified file) anyway, with a warning. Default: refuse it.",
    };

    /// <summary>Opens the image named by the argument; the CRC check is overridden by --ignore-crc (when the command
    /// has it), with a one-line warning on the error writer.</summary>
    internal static KernelImage Open(FileInfo file, ParseResult? parse = null, Option<bool>? ignoreCrc = null)
    {
        if (!file.Exists)
            throw new FileNotFoundException($"{file.FullName}: no such file");
        bool ignore = parse is not null && ignoreCrc is not null && parse.GetValue(ignoreCrc);
        var options = new KernelImageOptions { IgnoreCrc = ignore };
        var img = OpenMapped(file, options) ?? KernelImage.Open(file.FullName, options);
        if (img.Integrity is { CrcMatches: false } bad && parse is not null)
            parse.InvocationConfiguration.Error.WriteLine($"altpatch: warning: {bad.FailureMessage(img.Name).Replace(" (--ignore-crc reads it anyway)", "", StringComparison.Ordinal)}; reading it anyway (--ignore-crc)");
        return img;
    }

    /// <summary>A bzImage read through a read-only mapping of the file instead of a copy of it (<see cref="MappedFile"/>): once
    /// the payload is decompressed, the file's pages leave the resident set. The mapping stays for the rest of the process
    /// (the image's <see cref="KernelImage.BzImage"/> views it; a command runs once per process). Null where the file is not
    /// mapped (then it is read); a raw ELF file is copied by <see cref="KernelImage.Load(ReadOnlyMemory{byte}, string, KernelImageOptions)"/>
    /// and its mapping closed.</summary>
    private static KernelImage? OpenMapped(FileInfo file, KernelImageOptions options)
    {
        if (file.Length > ImageLimits.MaxFileSize)
            return null;   // KernelImage.Open says so
        var mapped = MappedFile.TryOpen(file.FullName);
        if (mapped is null)
            return null;
        try
        {
            var img = KernelImage.Load(mapped.Memory, file.Name, options);
            if (img.BzImage is null)
                ((IDisposable)mapped).Dispose();
            else
                mapped.DropResidentPages();
            return img;
        }
        catch
        {
            ((IDisposable)mapped).Dispose();
            throw;
        }
    }

    /// <summary>The architecture as the text output names it: "x86-64" or "i386".</summary>
    internal static string ArchitectureName(KernelImage img) => img.Architecture == KernelArchitecture.X86_64 ? "x86-64" : "i386";
}
