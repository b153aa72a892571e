using BenchmarkDotNet.Running;

namespace Altpatch.Bench;

/// <summary>
/// Runs the benchmarks: <c>dotnet run -c Release --project bench/Altpatch.Bench -- --filter '*'</c>;
/// <c>-- --interleaved [rounds]</c> runs the paravirt and lock loops round-robin instead (<see cref="Interleaved"/>);
/// <c>-- --live-interleaved [rounds] [batches]</c> a one-site live batch beside its floor, with its breakdown (<see cref="LiveInterleaved"/>).
/// </summary>
public static class Program
{
    /// <summary>Entry point; arguments go to BenchmarkDotNet's switcher.</summary>
    public static void Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "--interleaved")
        {
            Interleaved.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 2000, Console.Out);
            return;
        }
        if (args.Length > 0 && args[0] == "--live-interleaved")
        {
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            LiveInterleaved.Run(args.Length > 1 ? int.Parse(args[1], inv) : 21, args.Length > 2 ? int.Parse(args[2], inv) : 500, Console.Out);
            return;
        }
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
    }
}
