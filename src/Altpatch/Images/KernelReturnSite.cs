namespace Altpatch.Images;

/// <summary>One <c>.return_sites</c> entry (objtool): a <c>jmp __x86_return_thunk</c> that
/// <c>apply_returns()</c> may rewrite into a plain <c>ret</c>.</summary>
/// <param name="Index">Entry index in the table.</param>
/// <param name="Address">Link-time address of the jump instruction.</param>
public readonly record struct KernelReturnSite(int Index, ulong Address);
