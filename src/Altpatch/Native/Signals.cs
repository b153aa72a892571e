using System.Runtime.InteropServices;

namespace Altpatch.Native;

/// <summary>
/// glibc's <c>struct sigaction</c> on x86-64 (152 bytes): handler, a 1024-bit mask, flags, restorer.
/// Used through libc's <c>sigaction()</c>, which adds its own restorer, so Altpatch never builds a
/// kernel <c>rt_sigaction</c> frame itself except for <c>SIG_DFL</c> (which needs no restorer).
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 152)]
internal unsafe struct SigAction
{
    /// <summary><c>sa_handler</c> / <c>sa_sigaction</c>, or <see cref="Signals.Default"/> / <see cref="Signals.Ignore"/>.</summary>
    [FieldOffset(0)] public nint Handler;

    /// <summary>The first 64 bits of <c>sa_mask</c> (Linux has 64 signals; the rest is padding).</summary>
    [FieldOffset(8)] public ulong Mask;

    /// <summary><c>sa_flags</c>.</summary>
    [FieldOffset(136)] public int Flags;

    /// <summary><c>sa_restorer</c> (set by libc).</summary>
    [FieldOffset(144)] public nint Restorer;
}

/// <summary>Signal numbers, flags and the layout of what the kernel hands a handler (x86-64).</summary>
internal static class Signals
{
    public const int SigTrap = 5;

    /// <summary><c>SIG_DFL</c>.</summary>
    public const nint Default = 0;

    /// <summary><c>SIG_IGN</c>.</summary>
    public const nint Ignore = 1;

    public const int SaSigInfo = 0x4;
    public const int SaOnStack = 0x08000000;
    public const int SaRestart = 0x10000000;
    public const int SaNoDefer = 0x40000000;
    public const int SaResetHand = unchecked((int)0x80000000);

    /// <summary><c>si_code</c> of a signal the kernel raises for a trap such as <c>int3</c>.</summary>
    public const int SiKernel = 0x80;

    /// <summary><c>si_code</c> of a signal queued by <c>rt_tgsigqueueinfo</c>.</summary>
    public const int SiQueue = -1;

    // siginfo_t
    public const int SiCodeOffset = 8;
    public const int SiPidOffset = 16;
    public const int SiUidOffset = 20;
    public const int SiValueOffset = 24;

    // ucontext_t: uc_flags, uc_link, uc_stack (24 bytes), then uc_mcontext.gregs[23].
    private const int GregsOffset = 40;
    public const int UcRdx = GregsOffset + 12 * 8;
    public const int UcRsp = GregsOffset + 15 * 8;
    public const int UcRip = GregsOffset + 16 * 8;

    /// <summary>Bit of <paramref name="signal"/> in a kernel sigset.</summary>
    public static ulong Bit(int signal) => 1UL << (signal - 1);
}

/// <summary>
/// x86-64 Linux system call numbers the emitted code uses (it never calls libc), and the membarrier
/// commands (<see cref="CoreSync"/> makes the same call through libc's <c>syscall</c>).
/// </summary>
internal static class Sys
{
    public const int RtSigaction = 13;
    public const int RtSigprocmask = 14;
    public const int SchedYield = 24;
    public const int Nanosleep = 35;
    public const int Getpid = 39;
    public const int Sigaltstack = 131;
    public const int ArchPrctl = 158;
    public const int Gettid = 186;
    public const int Getdents64 = 217;
    public const int ClockGettime = 228;
    public const int Tgkill = 234;
    public const int Openat = 257;
    public const int Close = 3;
    public const int RtTgsigqueueinfo = 297;
    public const int ProcessVmReadv = 310;
    public const int Membarrier = 324;

    public const int MembarrierQuery = 0;
    public const int MembarrierPrivateExpeditedSyncCore = 32;
    public const int MembarrierRegisterPrivateExpeditedSyncCore = 64;

    public const int Esrch = 3;
    public const int Efault = 14;
}
