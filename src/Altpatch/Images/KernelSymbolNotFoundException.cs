namespace Altpatch.Images;

/// <summary>
/// A symbol a caller needs is not among a kernel's symbols (<see cref="KernelSymbols.AddressOf"/>). The message names
/// the symbol and where the symbols came from.
/// </summary>
public sealed class KernelSymbolNotFoundException : AltpatchException
{
    /// <summary>Creates the exception for <paramref name="symbolName"/> with a one-line message.</summary>
    public KernelSymbolNotFoundException(string symbolName, string message) : base(message) => SymbolName = symbolName;

    /// <summary>The symbol that was looked up.</summary>
    public string SymbolName { get; }
}
