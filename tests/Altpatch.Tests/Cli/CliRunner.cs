using Altpatch.Cli;

namespace Altpatch.Tests.Cli;

/// <summary>Runs the altpatch command line in-process with captured output (no global Console state).</summary>
internal static class CliRunner
{
    public static (int Exit, string Out, string Err) Run(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        int exit = Program.Run(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }
}
