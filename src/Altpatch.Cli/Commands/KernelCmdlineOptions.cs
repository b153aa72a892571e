using System.CommandLine;
using Altpatch.Images.Boot;

namespace Altpatch.Cli.Commands;

/// <summary>
/// <c>--cmdline "…"</c> and <c>--cmdline-file FILE</c>: the kernel command line the boot-time patching is predicted
/// for, parsed as the image's kernel version parses it (<see cref="KernelCommandLine"/>).
/// </summary>
internal sealed class KernelCmdlineOptions
{
    public Option<string?> Cmdline { get; } = new("--cmdline") { Description = "The kernel command line, e.g. \"mitigations=off preempt=full\": options that change patched text are read as the image's kernel line (6.1 or 6.12) reads them, others ignored." };
    public Option<FileInfo?> CmdlineFile { get; } = new("--cmdline-file") { Description = "Read the kernel command line from a file, e.g. a saved /proc/cmdline." };

    /// <summary>Adds the options and their check to <paramref name="cmd"/>.</summary>
    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Cmdline);
        cmd.Options.Add(CmdlineFile);
        cmd.Validators.Add(r =>
        {
            if (r.GetValue(Cmdline) is not null && r.GetValue(CmdlineFile) is not null)
                r.AddError("give the command line with either --cmdline or --cmdline-file, not both");
        });
    }

    /// <summary>Whether the parse gives a command line.</summary>
    public bool Given(ParseResult parse) => parse.GetValue(Cmdline) is not null || parse.GetValue(CmdlineFile) is not null;

    /// <summary>The command line given, else <paramref name="fallback"/> (e.g. the running kernel's), else the empty one.</summary>
    /// <exception cref="FileNotFoundException">--cmdline-file names no file.</exception>
    public KernelCommandLine Read(ParseResult parse, string? fallback = null)
    {
        if (parse.GetValue(CmdlineFile) is { } f)
        {
            if (!f.Exists)
                throw new FileNotFoundException($"{f.FullName}: no such file");
            return KernelCommandLine.Parse(Terminal.ReadInputText(f.FullName).Trim());
        }
        return KernelCommandLine.Parse(parse.GetValue(Cmdline) ?? fallback ?? "");
    }
}
