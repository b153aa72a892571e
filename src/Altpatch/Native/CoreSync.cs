using System.Runtime.Intrinsics.X86;

namespace Altpatch.Native;

/// <summary>
/// Making modified code visible to instruction fetch. x86 requires a serialising instruction on
/// every core that may run modified code before it runs it (SDM vol. 3, "cross-modifying code").
/// This core: <c>cpuid</c>. All cores of this process: <c>membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)</c>,
/// which the kernel implements with an IPI that ends in a serialising return to user space.
/// </summary>
public static class CoreSync
{
    private static readonly Lazy<(bool Ok, string Why)> Registration = new(Register);

    /// <summary>Executes <c>cpuid</c>, a serialising instruction, on the calling core.</summary>
    public static void SerializeThisCore() => X86Base.CpuId(0, 0);

    /// <summary>True when the kernel supports core-serialising membarrier and this process registered for it.</summary>
    public static bool IsAllCoresSyncAvailable => Registration.Value.Ok;

    /// <summary>Why all-core sync is unavailable ("" when it is available).</summary>
    public static string UnavailableReason => Registration.Value.Why;

    /// <summary>
    /// Serialises every core running a thread of this process (and this one). Throws
    /// <see cref="NativeException"/> when the kernel cannot do it: core-serialising membarrier is
    /// unavailable (<see cref="UnavailableReason"/>), or the call failed (its errno).
    /// </summary>
    public static void SyncAllCores()
    {
        if (TrySyncAllCores()) return;
        throw IsAllCoresSyncAvailable
            ? NativeException.Last("membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)")
            : new NativeException($"cannot serialise all cores: {UnavailableReason}", 0);
    }

    /// <summary>Like <see cref="SyncAllCores"/> but returns false instead of throwing; always serialises this core.</summary>
    public static bool TrySyncAllCores()
    {
        SerializeThisCore();
        if (!Registration.Value.Ok) return false;
        return Libc.Syscall(Sys.Membarrier, Sys.MembarrierPrivateExpeditedSyncCore, 0, 0) == 0;
    }

    private static (bool, string) Register()
    {
        long mask = Libc.Syscall(Sys.Membarrier, Sys.MembarrierQuery, 0, 0);
        if (mask < 0) return (false, "membarrier is not supported by this kernel");
        if ((mask & Sys.MembarrierPrivateExpeditedSyncCore) == 0) return (false, "this kernel's membarrier lacks MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE");
        if (Libc.Syscall(Sys.Membarrier, Sys.MembarrierRegisterPrivateExpeditedSyncCore, 0, 0) != 0)
            return (false, "membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) failed: " + Libc.ErrorText(System.Runtime.InteropServices.Marshal.GetLastPInvokeError()));
        return (true, "");
    }
}
