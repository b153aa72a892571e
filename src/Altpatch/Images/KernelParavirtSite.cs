namespace Altpatch.Images;

/// <summary>
/// One <c>.parainstructions</c> entry (<c>struct paravirt_patch_site</c>): the <see cref="Len"/> bytes at
/// <see cref="Address"/> call paravirt operation <see cref="Type"/> (its slot index in <c>pv_ops</c>:
/// byte offset ÷ pointer size), and may clobber the registers in <see cref="Clobbers"/>.
/// </summary>
/// <param name="Index">Entry index in the table.</param>
/// <param name="Address">Link-time address of the site (an indirect call through <c>pv_ops</c> in an unpatched image).</param>
/// <param name="Type">Operation number: slot index in <c>pv_ops</c> (<c>PARAVIRT_PATCH(op)</c>).</param>
/// <param name="Len">Length of the site in bytes.</param>
/// <param name="Clobbers">CLBR_* mask the site allows (<c>CLBR_EAX</c> 1, <c>CLBR_ECX</c> 2, <c>CLBR_EDX</c> 4, …);
/// emitted by <c>_paravirt_alt</c> even where the C struct no longer names the field (6.1).</param>
public readonly record struct KernelParavirtSite(int Index, ulong Address, byte Type, byte Len, ushort Clobbers);
