namespace Altpatch.Native;

/// <summary>
/// The live poker's signal handlers cannot be installed or uninstalled as asked: another component
/// owns the probe signal, SIGTRAP's handler was replaced after Altpatch installed its own, a live batch
/// is in flight, or a thread did not answer the grace-period probe.
/// </summary>
public sealed class TrapHandlerException : AltpatchException
{
    /// <summary>Creates the exception with a one-line message.</summary>
    public TrapHandlerException(string message) : base(message) { }
}
