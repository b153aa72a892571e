using Altpatch.Native;
using Altpatch.Text;

namespace Altpatch.Hooks;

/// <summary>
/// Gives a target in code Altpatch did not allocate (a library's text) a writable alias before a hook writes it,
/// so that the live poker never needs a writable and executable page: <see cref="ExecutableMemory.AdoptText"/>.
/// </summary>
internal static class ForeignText
{
    /// <summary>Remaps the pages <paramref name="poke"/> writes, once, unless they already are Altpatch's memory.</summary>
    public static void Adopt(in Poke poke)
    {
        if (ExecutableMemory.Owner(poke.Address, poke.Length) is not null) return;
        ulong page = (ulong)Environment.SystemPageSize;
        ulong start = poke.Address & ~(page - 1), end = (poke.End + page - 1) & ~(page - 1);
        try
        {
            ExecutableMemory.AdoptText(start, (int)(end - start), "altpatch-text");
        }
        catch (NativeException e)
        {
            throw new HookException(poke.Address, $"cannot give the target's page a writable alias: {e.Message}; nothing written (ForeignTextMode.WritableExecutable writes it through an RWX page instead)", e);
        }
    }
}
