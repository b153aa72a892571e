using Altpatch.Sites;

namespace Altpatch.Text;

/// <summary>
/// A site cannot be patched as asked, or a plan cannot be carried out: the replacement does not
/// fit, the site is not in mapped executable memory, sites overlap, the bytes in memory are not what
/// the plan recorded, a relocated branch no longer reaches. The message names the site (kind, table,
/// index, address) and the problem. When this is thrown by a poker, nothing was written (or what was
/// written has been reverted).
/// </summary>
public sealed class PatchException : AltpatchException
{
    /// <summary>The site concerned.</summary>
    public SiteRef Site { get; }

    /// <summary>The site's address.</summary>
    public ulong Address { get; }

    /// <summary>Creates the exception for a site.</summary>
    public PatchException(SiteRef site, ulong address, string problem, Exception? inner = null)
        : base($"{site} at 0x{address:x}: {problem}", inner)
    {
        Site = site;
        Address = address;
    }
}
