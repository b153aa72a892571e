namespace Altpatch.Images;

/// <summary>The x86 flavour a kernel image was built for (the kernel's <c>ARCH=i386</c> / <c>ARCH=x86_64</c>).</summary>
public enum KernelArchitecture
{
    /// <summary>32-bit x86: ELF32, <c>EM_386</c>, 4-byte pointers; decoded with bitness 32.</summary>
    I386,
    /// <summary>x86-64: ELF64, <c>EM_X86_64</c>, 8-byte pointers; decoded with bitness 64.</summary>
    X86_64,
}

/// <summary>Names of the architectures.</summary>
public static class KernelArchitectures
{
    /// <summary>The name <c>uname -m</c> gives, which reports use: <c>x86_64</c> or <c>i386</c>.</summary>
    public static string MachineName(this KernelArchitecture architecture) =>
        architecture == KernelArchitecture.X86_64 ? "x86_64" : "i386";
}
