using System.Runtime.InteropServices;
using Altpatch.Native;
using Altpatch.Pokers;
using Altpatch.Text;

namespace Altpatch.TortureChild;

/// <summary>
/// A child process for what the test process must not do to itself: the negative control (a naive
/// poker that may crash the process) and SIGTRAP chaining to SIG_DFL (which must kill it).
/// <code>
/// Altpatch.TortureChild torture naive|kernel|live FLIPS THREADS MULTI IMMEDIATE LONG
///     naive: byte-by-byte copy; kernel: the int3 protocol without the probe for threads inside sites;
///     live: the live poker. Exit 0: every call returned a valid result; 3: some did not; killed by a
///     signal: crashed
/// Altpatch.TortureChild hook-torture naive|live ROUNDS THREADS
///     threads call a hooked function in an anonymous executable page while its hook goes in and out: naive is
///     mprotect RWX + a plain copy of the jump (what peers do), live is NativeHook.Enable/Disable. Exit as torture
/// Altpatch.TortureChild cli PEAKFILE ARGS…
///     runs the altpatch command line ARGS in this process (Altpatch.Cli's Program.Run, its real output and
///     error), then writes this process's peak resident set (VmHWM of /proc/self/status, in KiB) to PEAKFILE:
///     the limit tests' measure of what a command needs for a given input. Exit: the command's
/// Altpatch.TortureChild trap-default
///     SIGTRAP set to SIG_DFL, Altpatch's handler installed over it, an unrelated int3 executed:
///     the process must die of SIGTRAP (exit 0 would mean it survived: 4)
/// </code>
/// </summary>
public static unsafe partial class Program
{
    /// <summary>Entry point.</summary>
    public static int Main(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        NoCoreDumps();
        switch (args.Length > 0 ? args[0] : "")
        {
            case "torture" when args.Length == 7:
            {
                ITextPoker poker = args[1] switch
                {
                    "naive" => new NaivePoker(),
                    "kernel" => new LivePoker { ProbeInteriorPoints = false },
                    _ => new LivePoker(),
                };
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                using var torture = new Torture(int.Parse(args[4], inv), int.Parse(args[5], inv), int.Parse(args[6], inv));
                var r = torture.Run(poker, long.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture),
                                    int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture), stopOnWrong: true);
                Console.WriteLine(r);
                return r.Wrong == 0 ? 0 : 3;
            }
            case "hook-torture" when args.Length == 4:
            {
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                return HookTorture.Run(args[1], int.Parse(args[2], inv), int.Parse(args[3], inv)) == 0 ? 0 : 3;
            }
            case "cli" when args.Length >= 2:
            {
                int exit = Altpatch.Cli.Program.Run(args[2..], Console.Out, Console.Error);
                Console.Out.Flush();
                var hwm = File.ReadAllLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
                File.WriteAllText(args[1], hwm.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
                return exit;
            }
            case "trap-default":
            {
                var dfl = new byte[152];
                fixed (byte* p = dfl)
                    if (Sigaction(5, p, null) != 0) return 5;
                TrapHandler.Install();
                using var mem = ExecutableMemory.Allocate(4096, "int3");
                byte[] code = [0xCC, 0xB8, 7, 0, 0, 0, 0xC3]; // int3; mov eax, 7; ret
                code.CopyTo(mem.Writable);
                CoreSync.TrySyncAllCores();
                Console.WriteLine("executing int3 with SIGTRAP's previous disposition SIG_DFL");
                Console.Out.Flush();
                int r = ((delegate* unmanaged<int>)mem.Address)();
                Console.WriteLine($"survived the int3 (returned {r})");
                return 4;
            }
            default:
                Console.Error.WriteLine("usage: torture naive|kernel|live FLIPS THREADS MULTI IMMEDIATE LONG | trap-default");
                return 2;
        }
    }

    private static void NoCoreDumps()
    {
        ulong* limits = stackalloc ulong[2];
        limits[0] = limits[1] = 0;
        _ = Setrlimit(4, limits); // RLIMIT_CORE: a crash is the expected outcome here, not worth a core file
    }

    [LibraryImport("libc", EntryPoint = "setrlimit")]
    private static partial int Setrlimit(int resource, ulong* limits);

    [LibraryImport("libc", EntryPoint = "sigaction")]
    private static partial int Sigaction(int signal, byte* action, byte* previous);
}
