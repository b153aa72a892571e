using Altpatch.Code;
using Altpatch.Native;
using Iced.Intel;

namespace Altpatch.Tests.Live;

/// <summary>Assembling test code straight into W^X memory (no CodeBuilder: it is another branch's file).</summary>
internal static class Emit
{
    /// <summary>Assembles <paramref name="emit"/> at <paramref name="offset"/> of <paramref name="memory"/>; returns the address and the bytes.</summary>
    public static (ulong Address, byte[] Bytes) At(ExecutableMemory memory, int offset, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        ulong at = memory.Address + (ulong)offset;
        var writer = new ArrayCodeWriter();
        a.Assemble(writer, at);
        var bytes = writer.Written.ToArray();
        bytes.CopyTo(memory.Writable[offset..]);
        CoreSync.TrySyncAllCores();
        return (at, bytes);
    }

    /// <summary>Places raw bytes at <paramref name="offset"/>; returns their address.</summary>
    public static ulong Bytes(ExecutableMemory memory, int offset, ReadOnlySpan<byte> bytes)
    {
        bytes.CopyTo(memory.Writable[offset..]);
        CoreSync.TrySyncAllCores();
        return memory.Address + (ulong)offset;
    }

    /// <summary>Assembles <paramref name="emit"/> as if at <paramref name="address"/>, without placing it.</summary>
    public static byte[] Code(ulong address, Action<Assembler> emit)
    {
        var a = new Assembler(64);
        emit(a);
        var writer = new ArrayCodeWriter();
        a.Assemble(writer, address);
        return writer.Written.ToArray();
    }
}
