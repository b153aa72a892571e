using System.CommandLine;
using Altpatch;

namespace Altpatch.Cli;

/// <summary>Entry point of the <c>altpatch</c> command.</summary>
public static class Program
{
    /// <summary>Builds the command tree. Each command lives in its own file under Commands/.</summary>
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("altpatch: the Linux kernel's x86 code patching (alternatives, paravirt, SMP locks, text_poke) for live code and kernel images.");
        root.Subcommands.Add(Commands.KernelCommand.Create());
        return root;
    }

    /// <summary>Runs the command line; user errors become one line on stderr and a non-zero exit code.</summary>
    public static int Main(string[] args)
    {
        try
        {
            return BuildRoot().Parse(args).Invoke();
        }
        catch (AltpatchException e)
        {
            Console.Error.WriteLine($"altpatch: error: {e.Message}");
            return 1;
        }
    }
}
