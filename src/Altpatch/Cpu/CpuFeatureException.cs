namespace Altpatch.Cpu;

/// <summary>
/// A CPU description Altpatch cannot use: an unknown feature name or number, a malformed
/// <c>/proc/cpuinfo</c> text, or a processor without <c>CPUID</c>. The message names the bad input.
/// </summary>
public sealed class CpuFeatureException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public CpuFeatureException(string message) : base(message) { }

    /// <summary>Creates the exception with a one-line message and the error that caused it.</summary>
    public CpuFeatureException(string message, Exception? inner) : base(message, inner) { }
}
