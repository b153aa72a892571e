using System.Runtime.InteropServices;

namespace Altpatch.Native;

/// <summary>The dynamic linker's view of an address (<c>dladdr</c>): the loaded object and the nearest exported symbol.</summary>
public static unsafe partial class DynamicSymbols
{
    [StructLayout(LayoutKind.Sequential)]
    private struct DlInfo
    {
        public nint FileName;
        public nint FileBase;
        public nint SymbolName;
        public nint SymbolAddress;
    }

    [LibraryImport("libc", EntryPoint = "dladdr")]
    private static partial int Dladdr(nint address, DlInfo* info);

    /// <summary>
    /// The object (<paramref name="file"/>) holding <paramref name="address"/> and the exported symbol at or before it
    /// (<paramref name="symbol"/>, at <paramref name="start"/>; null and 0 when there is none). False when no loaded
    /// object holds the address (JIT code, anonymous memory).
    /// </summary>
    public static bool TryFind(ulong address, out string? file, out string? symbol, out ulong start)
    {
        DlInfo info;
        file = symbol = null;
        start = 0;
        if (Dladdr((nint)address, &info) == 0) return false;
        file = info.FileName == 0 ? null : Marshal.PtrToStringUTF8(info.FileName);
        if (info.SymbolName != 0)
        {
            symbol = Marshal.PtrToStringUTF8(info.SymbolName);
            start = (ulong)info.SymbolAddress;
        }
        return true;
    }
}
