using System.Runtime.InteropServices;
using Altpatch.Hooks;
using Altpatch.Native;
using Altpatch.Tests.Live;
using Xunit.Abstractions;
using static Altpatch.Tests.Hooks.HookTestCode;

namespace Altpatch.Tests.Hooks;

/// <summary>
/// Threads call real libc functions with different prologues (a RIP-relative load: __libc_current_sigrtmin; an
/// IFUNC-resolved implementation: strlen; a syscall wrapper: getppid; abs; atoi, whose prologue ends before a call) through
/// function pointers in tight loops while their hooks go in and out, in batches and one by one. Every result must be
/// the original one or the hooked one, both must be seen, and the bytes must come back exactly. Not getpagesize or
/// getpid: glibc calls them with every signal blocked (a thread's exit, pthread_kill), where a live int3 kills the
/// process, and NativeHook refuses them (HookRefusalTests).
/// </summary>
[Collection(LiveCollection.Name)]
public unsafe class HookTortureTests(ITestOutputHelper output)
{
    private static int Rounds => int.TryParse(Environment.GetEnvironmentVariable("ALTPATCH_HOOK_ROUNDS"), out int n) ? n : 2000;

    [SkippableFact]
    public void Libc_functions_hooked_and_unhooked_while_threads_call_them_return_only_original_or_hooked_results()
    {
        Skip.IfNot(CoreSync.IsAllCoresSyncAvailable, CoreSync.UnavailableReason);
        using var detours = new Detours();
        byte* text = (byte*)NativeMemory.Alloc(16);
        "31337\0"u8.CopyTo(new Span<byte>(text, 6));
        try
        {
            var targets = new (string Name, nint Address, (nint Detour, int Slot) D)[]
            {
                ("__libc_current_sigrtmin", Libc("__libc_current_sigrtmin"), detours.Counting(0)),
                ("strlen", Libc("strlen"), detours.Answering(true, (ulong)text, 99_999, 1)),
                ("getppid", Libc("getppid"), detours.Counting(2)),
                ("abs", Libc("abs"), detours.Answering(false, unchecked((ulong)Magic), 777, 3)),
                ("atoi", Libc("atoi"), detours.Answering(true, (ulong)text, 4242, 4)),
            };
            var before = targets.Select(t => new ReadOnlySpan<byte>((void*)t.Address, 32).ToArray()).ToArray();
            var hooks = new List<NativeHook>();
            foreach (var t in targets)
            {
                var h = CreateOrSkip(t.Address, t.D.Detour);
                detours.SetOriginal(t.D.Slot, h);
                hooks.Add(h);
                output.WriteLine($"{t.Name,-12} 0x{t.Address:x}: moves {h.MovedInstructions} ({h.PatchLength} bytes)");
            }

            var sigrtmin = (delegate* unmanaged<int>)targets[0].Address;
            var getppid = (delegate* unmanaged<int>)targets[2].Address;
            int rtmin = sigrtmin(), ppid = getppid();
            var strlen = (delegate* unmanaged<byte*, nuint>)targets[1].Address;
            var abs = (delegate* unmanaged<int, int>)targets[3].Address;
            var atoi = (delegate* unmanaged<byte*, int>)targets[4].Address;
            long wrong = 0, calls = 0, hookedSeen = 0, originalSeen = 0;
            string? firstWrong = null;
            bool stop = false;
            var threads = Enumerable.Range(0, 3).Select(i => new Thread(() =>
            {
                long c = 0, hk = 0, orig = 0;
                while (!Volatile.Read(ref stop))
                {
                    int p = sigrtmin();
                    nuint l = strlen(text);
                    int id = getppid();
                    int a = abs(Magic);
                    int n = atoi(text);
                    c += 5;
                    if (l == 99_999) hk++; else if (l == 5) orig++; else Fail($"strlen {l}");
                    if (a == 777) hk++; else if (a == 123457) orig++; else Fail($"abs {a}");
                    if (n == 4242) hk++; else if (n == 31337) orig++; else Fail($"atoi {n}");
                    if (p != rtmin) Fail($"__libc_current_sigrtmin {p}");
                    if (id != ppid) Fail($"getppid {id}");
                }
                Interlocked.Add(ref calls, c);
                Interlocked.Add(ref hookedSeen, hk);
                Interlocked.Add(ref originalSeen, orig);
            }) { IsBackground = true, Name = $"caller{i}" }).ToList();

            void Fail(string what)
            {
                Interlocked.Increment(ref wrong);
                Interlocked.CompareExchange(ref firstWrong, what, null);
            }

            threads.ForEach(t => t.Start());
            int rounds = Rounds;
            for (int r = 0; r < rounds; r++)
            {
                if (r % 2 == 0)
                {
                    NativeHook.EnableAll(hooks);
                    Thread.SpinWait(2000);
                    NativeHook.DisableAll(hooks);
                }
                else
                {
                    foreach (var h in hooks) h.Enable();
                    Thread.SpinWait(2000);
                    foreach (var h in hooks) h.Disable();
                }
            }
            Volatile.Write(ref stop, true);
            threads.ForEach(t => t.Join());
            foreach (var h in hooks) h.Dispose();

            output.WriteLine($"{rounds} rounds, {calls} calls, {hookedSeen} hooked results, {originalSeen} original results, {wrong} wrong; detour calls {string.Join(", ", Enumerable.Range(0, 5).Select(i => detours.Counters[i]))}");
            Assert.True(wrong == 0, $"{wrong} wrong results, the first: {firstWrong}");
            Assert.True(calls >= 100_000, $"only {calls} calls: the threads did not run enough");
            Assert.True(hookedSeen > 0 && originalSeen > 0, "both the hooked and the original functions must have run");
            for (int i = 0; i < targets.Length; i++)
                Assert.Equal(before[i], new ReadOnlySpan<byte>((void*)targets[i].Address, 32).ToArray());
        }
        finally
        {
            NativeMemory.Free(text);
        }
    }
}
