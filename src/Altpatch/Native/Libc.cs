using System.Runtime.InteropServices;

namespace Altpatch.Native;

/// <summary>
/// The few libc entry points Altpatch needs (Linux x86-64), bound with source-generated
/// <see cref="LibraryImportAttribute"/>. Callers check return values and turn failures into
/// <see cref="NativeException"/> with <see cref="Marshal.GetLastPInvokeError"/>.
/// </summary>
internal static partial class Libc
{
    private const string Lib = "libc";

    public const int ProtNone = 0;
    public const int ProtRead = 1;
    public const int ProtWrite = 2;
    public const int ProtExec = 4;

    public const int MapShared = 0x01;
    public const int MapPrivate = 0x02;
    public const int MapFixed = 0x10;
    public const int MapAnonymous = 0x20;
    public const int MapNoReserve = 0x4000;
    public static readonly nint MapFailed = -1;

    public const uint MfdCloexec = 1;

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint addr, nuint length, int prot);

    [LibraryImport(Lib, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall(long number, long a1, long a2, long a3);

    /// <summary>The text of an errno value, for error messages.</summary>
    public static string ErrorText(int errno) => $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";

    // Signals and limits, for the live poker's trap handler (Native/TrapHandler.cs).

    [LibraryImport(Lib, EntryPoint = "sigaction", SetLastError = true)]
    public static unsafe partial int Sigaction(int signal, SigAction* action, SigAction* previous);

    [LibraryImport(Lib, EntryPoint = "__libc_current_sigrtmax")]
    public static partial int CurrentSigrtmax();

    [LibraryImport(Lib, EntryPoint = "getrlimit", SetLastError = true)]
    public static unsafe partial int Getrlimit(int resource, ulong* limits);

    [LibraryImport(Lib, EntryPoint = "getpid")]
    public static partial int Getpid();

    [LibraryImport(Lib, EntryPoint = "getuid")]
    public static partial uint Getuid();

    [LibraryImport(Lib, EntryPoint = "gettid")]
    public static partial int Gettid();

    public const int RlimitStack = 3;
    public const int RlimitCore = 4;
}
