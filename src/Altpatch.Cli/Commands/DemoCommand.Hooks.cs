using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Altpatch.Code;
using Altpatch.Hooks;
using Altpatch.Native;
using Altpatch.Emit;
using Spectre.Console;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Cli.Commands;

/// <summary>The demo's native hook part: libc's <c>abs</c> hooked live while threads call it.</summary>
internal static partial class DemoCommand
{
    private const int HookMagic = -42;

    private sealed record HookDemo(string? Skipped, ulong Target, string Before, string After, string Trampoline, string Moved, string Mapping,
                                   int Threads, long OriginalResults, long HookedResults, long WrongResults, bool BytesRestored, string Restored)
    {
        public bool Ok => Skipped is not null || (WrongResults == 0 && HookedResults > 0 && OriginalResults > 0 && BytesRestored);

        public JsonObject ToJson() => Skipped is not null ? new JsonObject { ["skipped"] = Skipped } : new()
        {
            ["function"] = "abs",
            ["target"] = Terminal.Addr(Target),
            ["beforeAsm"] = Before,
            ["afterAsm"] = After,
            ["trampolineAsm"] = Trampoline,
            ["moved"] = Moved,
            ["mapping"] = Mapping,
            ["threads"] = Threads,
            ["originalResults"] = OriginalResults,
            ["hookedResults"] = HookedResults,
            ["wrongResults"] = WrongResults,
            ["restoredAsm"] = Restored,
            ["bytesRestored"] = BytesRestored,
        };

        public void Print(IAnsiConsole console)
        {
            console.MarkupLine("[bold]Native hook[/]: libc's abs hooked and unhooked live (int3 protocol) while threads call it");
            if (Skipped is not null)
            {
                console.MarkupLine(Markup.Escape($"skipped: {Skipped}"));
                return;
            }
            var t = new Table().Border(TableBorder.Simple).AddColumns("", "code at " + Terminal.Addr(Target));
            t.AddRow("before", Markup.Escape(Before));
            t.AddRow("hooked", Markup.Escape(After));
            t.AddRow("Original (trampoline)", Markup.Escape(Trampoline));
            t.AddRow("after removal", Markup.Escape(Restored));
            console.Write(t);
            console.MarkupLine(Markup.Escape($"Moved instructions: {Moved}. The page is now {Mapping} (W^X: a memfd copy with a writable alias, never RWX)."));
            console.MarkupLine($"{Threads} threads calling abs({HookMagic}) throughout: {OriginalResults} original results (42), {HookedResults} hooked (4242), {WrongResults} other " +
                               (WrongResults == 0 ? "[green]ok[/]" : "[red]WRONG RESULTS[/]"));
            console.MarkupLine(BytesRestored ? "Removal: abs's bytes are back exactly. [green]ok[/]" : "[red]Removal: abs's bytes differ![/]");
        }
    }

    private static unsafe HookDemo RunHook()
    {
        if (!CoreSync.IsAllCoresSyncAvailable) return new HookDemo(CoreSync.UnavailableReason, 0, "", "", "", "", "", 0, 0, 0, 0, true, "");
        nint abs = NativeLibrary.GetExport(NativeLibrary.Load("libc.so.6"), "abs");
        var before = new ReadOnlySpan<byte>((void*)abs, 8).ToArray();
        var cb = new CodeBuilder(4096, 0, 4096);
        ulong slot = cb.Data(new byte[8]);
        // detour: abs(-42) answers 4242; every other call goes to Original (through the slot).
        ulong detour = cb.Code(a =>
        {
            var passOn = a.CreateLabel();
            a.cmp(edi, HookMagic);
            a.jne(passOn);
            a.mov(eax, 4242);
            a.ret();
            a.Label(ref passOn);
            a.mov(r11, slot);
            a.jmp(__qword_ptr[r11]);
        });
        CoreSync.TrySyncAllCores();

        long orig = 0, hooked = 0, wrong = 0;
        bool stop = false;
        var f = (delegate* unmanaged<int, int>)abs;
        var threads = Enumerable.Range(0, 2).Select(_ => new Thread(() =>
        {
            long o = 0, h = 0, x = 0;
            while (!Volatile.Read(ref stop))
            {
                int r = f(HookMagic);
                if (r == 42) o++; else if (r == 4242) h++; else x++;
            }
            Interlocked.Add(ref orig, o);
            Interlocked.Add(ref hooked, h);
            Interlocked.Add(ref wrong, x);
        }) { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        Thread.Sleep(20);
        var hook = NativeHook.Create(abs, (nint)detour);
        *(ulong*)(cb.Memory.WritableAddress + (nint)(slot - cb.Memory.Address)) = (ulong)hook.Original;
        CoreSync.TrySyncAllCores();
        hook.Enable();
        var after = new ReadOnlySpan<byte>((void*)abs, hook.PatchLength).ToArray();
        Thread.Sleep(30);
        var tramp = new ReadOnlySpan<byte>((void*)hook.Original, hook.PatchLength + 5).ToArray();
        MemoryMap.Read().TryFind((ulong)abs, out var region);
        string moved = hook.MovedInstructions;
        hook.Dispose();
        Thread.Sleep(20);
        Volatile.Write(ref stop, true);
        threads.ForEach(t => t.Join());
        if (hook.WaitUntilReleased(TimeSpan.FromSeconds(5))) cb.Dispose(); // else a thread may still be in the detour: keep it
        var restored = new ReadOnlySpan<byte>((void*)abs, 8).ToArray();
        return new HookDemo(null, (ulong)abs, Disassembler.Text(before, (ulong)abs), Disassembler.Text(after, (ulong)abs),
                            Disassembler.Text(tramp, (ulong)hook.Original), moved, $"{region.Permissions} {region.Path}", threads.Count,
                            orig, hooked, wrong, before.AsSpan().SequenceEqual(restored), Disassembler.Text(restored, (ulong)abs));
    }
}
