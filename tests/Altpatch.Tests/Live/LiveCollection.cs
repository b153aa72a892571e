namespace Altpatch.Tests.Live;

/// <summary>
/// Live-patching tests share process-wide state (the SIGTRAP disposition, the probe signal) and the
/// W^X test inspects every mapping of the process, so they run alone, one after another, after the
/// tests that run in parallel.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class LiveCollection
{
    public const string Name = "live";
}
