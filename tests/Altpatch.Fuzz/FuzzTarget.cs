namespace Altpatch.Fuzz;

/// <summary>
/// One reader under fuzzing: a name (the corpus folder under <c>tests/data/fuzz/</c>), what it covers, and the
/// code that feeds it one input. The reader may refuse the input only with the exception types of its failure
/// family (<see cref="Allowed"/>); anything else (an <see cref="IndexOutOfRangeException"/>, an
/// <see cref="OutOfMemoryException"/>, …) escapes <see cref="Execute"/> and is a crash.
/// </summary>
/// <param name="Name">Short name, e.g. "elf".</param>
/// <param name="Description">What the target feeds the input to.</param>
/// <param name="Body">Runs one input.</param>
/// <param name="Allowed">The exception types that are the reader's clear refusal.</param>
/// <param name="NeedsSharedImages">Whether the target reads its frame from the real images (../shared/linux).</param>
public sealed record FuzzTarget(string Name, string Description, Action<byte[]> Body, Type[] Allowed, bool NeedsSharedImages = false)
{
    /// <summary>Runs one input; a refusal of an allowed type is swallowed, anything else propagates.</summary>
    public void Execute(byte[] input)
    {
        try
        {
            Body(input);
        }
        catch (Exception e) when (Allowed.Any(t => t.IsInstanceOfType(e)))
        {
        }
    }
}
