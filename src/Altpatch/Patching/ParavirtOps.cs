namespace Altpatch.Patching;

/// <summary>
/// The op types of Altpatch's standard op set, which <see cref="NativeBackend"/> and
/// <see cref="HypervisorBackend"/> implement: ops that make sense in user space, each in the role of
/// a kernel pv op. Values are slot indices in the <see cref="OpsTable"/> (the kernel's
/// <c>PARAVIRT_PATCH(op)</c>). Calling convention: arguments in rdi, the result in rax; what else an
/// implementation may change is its <see cref="Sites.Clobbers"/>.
/// </summary>
public static class ParavirtOps
{
    /// <summary>rax = RFLAGS (the kernel's <c>irq.save_fl</c>; native: <c>pushfq; pop rax</c>).</summary>
    public const int SaveFl = 0;
    /// <summary>rax = the time-stamp counter (2.6.22's <c>read_tsc</c>; native: <c>rdtsc; shl rdx, 32; or rax, rdx</c>).</summary>
    public const int ReadTsc = 1;
    /// <summary>rax = popcount(rdi) (the role of <c>arch_hweight64</c>; native: <c>popcnt rax, rdi</c> when the CPU has POPCNT).</summary>
    public const int Popcount = 2;
    /// <summary>rax = rdi (the kernel's <c>_paravirt_ident_64</c> behind pte_val/make_pte; native: <c>mov rax, rdi</c>).</summary>
    public const int Ident64 = 3;
    /// <summary>rax = a 64-bit mix of rdi; too long to inline, clobbers rax, rcx, rdx: native sites get a direct call when they allow that.</summary>
    public const int Mix64 = 4;
    /// <summary>Nothing (the role of <c>cpu.io_delay</c> under KVM, <c>paravirt_nop</c>): native sites become NOPs.</summary>
    public const int IoDelay = 5;
    /// <summary>A jump op (the role of <c>iret</c>): sites jump to it at the end of a function, and it returns rdi * 2 to that function's caller.</summary>
    public const int TailReturn = 6;
    /// <summary>No implementation in user space (<c>irq.safe_halt</c>, <c>sti; hlt</c>, is privileged): sites become <c>ud2</c>.</summary>
    public const int SafeHalt = 7;

    /// <summary>Number of op types.</summary>
    public const int Count = 8;

    private static readonly string[] Names = ["save_fl", "read_tsc", "popcount", "ident_64", "mix64", "io_delay", "tail_return", "safe_halt"];

    /// <summary>The op's name ("save_fl"), or "op N" for a type outside the set.</summary>
    public static string Name(int type) => (uint)type < (uint)Names.Length ? Names[type] : $"op {type}";

    /// <summary>The reference result of <see cref="Mix64"/> (for tests and the demo).</summary>
    public static ulong Mix64Reference(ulong x)
    {
        ulong v = x * 0x9E3779B97F4A7C15UL;
        return v ^ (v >> 29);
    }
}
