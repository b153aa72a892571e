namespace Altpatch.Images;

/// <summary>One <c>.retpoline_sites</c> entry (objtool): a call or jump to a <c>__x86_indirect_thunk_*</c>
/// retpoline thunk that <c>apply_retpolines()</c> may rewrite into an indirect branch.</summary>
/// <param name="Index">Entry index in the table.</param>
/// <param name="Address">Link-time address of the call/jump instruction.</param>
public readonly record struct KernelRetpolineSite(int Index, ulong Address);
