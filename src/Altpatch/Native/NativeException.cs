using System.Runtime.InteropServices;

namespace Altpatch.Native;

/// <summary>An operating-system call that Altpatch needs failed (mmap, mprotect, membarrier, ...).</summary>
public sealed class NativeException : AltpatchException
{
    /// <summary>The errno value the call left, 0 when not applicable.</summary>
    public int Errno { get; }

    /// <summary>Creates the exception; <paramref name="what"/> says which call on what.</summary>
    public NativeException(string what, int errno)
        : base(errno == 0 ? what : $"{what}: {Libc.ErrorText(errno)}") => Errno = errno;

    /// <summary>Creates the exception from the last P/Invoke error.</summary>
    internal static NativeException Last(string what) => new(what, Marshal.GetLastPInvokeError());
}
