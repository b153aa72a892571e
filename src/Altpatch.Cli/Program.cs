using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Text.RegularExpressions;
using Altpatch.Cli.Commands;

namespace Altpatch.Cli;

/// <summary>Entry point of the <c>altpatch</c> command.</summary>
public static class Program
{
    /// <summary>
    /// Builds the command tree. Each command lives in its own file under Commands/. The root is named
    /// "altpatch" (the tool's command name) rather than after the assembly, so help shows what users type.
    /// With no command at all, <c>altpatch</c> runs its built-in default job, the demo.
    /// </summary>
    public static Command BuildRoot()
    {
        var root = new Command("altpatch", "altpatch: the Linux kernel's x86 code patching (alternatives, paravirt, SMP locks, text_poke) for live code and kernel images.")
        {
            Options = { new HelpOption(), new VersionOption() },
        };
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(CpuCommand.Create());
        root.Subcommands.Add(KernelCommand.Create());
        root.SetAction(parse =>
        {
            parse.InvocationConfiguration.Output.WriteLine("altpatch: no command given: running 'altpatch demo' (see 'altpatch --help' for the others)");
            return DemoCommand.Execute(parse, json: false);
        });
        return root;
    }

    /// <summary>Runs the command line; user errors become one line on stderr and a non-zero exit code.</summary>
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>
    /// Runs the command line with the given output and error writers (tests use this). Usage errors (an unknown
    /// command or option, a missing or invalid argument) are one <c>altpatch: error:</c> line too, naming the
    /// command whose <c>--help</c> to read; nothing goes to the output.
    /// </summary>
    public static int Run(string[] args, TextWriter output, TextWriter error)
    {
        ArgumentNullException.ThrowIfNull(error);
        var config = new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false };
        try
        {
            var parse = BuildRoot().Parse(args);
            if (parse.Action is ParseErrorAction)
            {
                error.WriteLine($"altpatch: error: {string.Join("; ", parse.Errors.Select(e => OneLine(e.Message)))} (see '{CommandPath(parse.CommandResult)} --help')");
                return 1;
            }
            return parse.Invoke(config);
        }
        catch (AltpatchException e)
        {
            error.WriteLine($"altpatch: error: {e.Message.ReplaceLineEndings(" ")}");
            return 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            error.WriteLine($"altpatch: error: {e.Message.ReplaceLineEndings(" ")}");
            return 1;
        }
        catch (OutOfMemoryException)
        {
            // The readers' limits (docs/bad-input.md) keep any input under 1 GiB; this is a machine with less.
            error.WriteLine("altpatch: error: out of memory");
            return 1;
        }
        catch (Exception e)
        {
            // A bug, not a user error: still one line and no stack trace, but named as such.
            error.WriteLine($"altpatch: internal error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")} (a bug in altpatch: please report it with the input)");
            return 1;
        }
    }

    /// <summary>A parser message on one line ("Must be one of:\n\t'alt'\n\t'para'…" becomes "Must be one of: 'alt' 'para'…").</summary>
    private static string OneLine(string message) => Regex.Replace(message, @"\s+", " ").Trim();

    /// <summary>"altpatch kernel sites": the names from the root down to <paramref name="command"/>.</summary>
    private static string CommandPath(CommandResult command)
    {
        var names = new List<string>();
        for (SymbolResult? r = command; r is not null; r = r.Parent)
        {
            if (r is CommandResult c)
                names.Add(c.Command.Name);
        }
        names.Reverse();
        return string.Join(' ', names);
    }
}
