using System.Diagnostics.CodeAnalysis;

namespace Altpatch.Images;

public sealed partial class KernelImage
{
    private Lazy<KernelSymbols?>? kallsymsTable;

    private Lazy<KernelSymbols?> Kallsyms =>
        LazyInitializer.EnsureInitialized(ref kallsymsTable, () => new Lazy<KernelSymbols?>(() => KernelSymbols.DecodeKallsyms(Elf)));

    /// <summary>The image's symbols, decoded from its own kallsyms tables on first use (once per image; a stripped image
    /// needs no symbol table).</summary>
    /// <exception cref="ImageFormatException">The image has no kallsyms tables, or they are corrupt (thrown on every
    /// use).</exception>
    public KernelSymbols Symbols => Kallsyms.Value ?? throw new ImageFormatException(KernelSymbols.NoKallsymsMessage(Elf));

    /// <summary>Starts decoding the kallsyms tables on the thread pool, so the decoding overlaps whatever the caller does
    /// next (reading the patch tables, planning passes that need no symbol yet); <see cref="Symbols"/> and
    /// <see cref="TryGetSymbols"/> wait for it, and throw what it threw. The tables are data: patching the image's code
    /// meanwhile does not change them.</summary>
    public void DecodeSymbolsInBackground() =>
        ThreadPool.UnsafeQueueUserWorkItem(static lazy =>
        {
            try
            {
                _ = lazy.Value;
            }
            catch (Exception)
            {
                // kept by the Lazy and thrown to the caller that uses the symbols (never here: a thread-pool item must not throw)
            }
        }, Kallsyms, preferLocal: false);

    /// <summary>The image's symbols as <see cref="Symbols"/>; false when the image has no kallsyms tables at all
    /// (<c>CONFIG_KALLSYMS=n</c>).</summary>
    /// <exception cref="ImageFormatException">Kallsyms tables were found but are corrupt or truncated.</exception>
    public bool TryGetSymbols([NotNullWhen(true)] out KernelSymbols? symbols)
    {
        symbols = Kallsyms.Value;
        return symbols is not null;
    }
}
