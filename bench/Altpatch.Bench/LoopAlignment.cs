using Altpatch.Emit;

namespace Altpatch.Bench;

/// <summary>The alignment the emitted benchmark loops share, so that every variant's loop starts alike.</summary>
internal static class LoopAlignment
{
    /// <summary>
    /// Pads the text of <paramref name="b"/> with its NOP table's NOPs up to a 64-byte boundary and returns that address.
    /// NOPs, not <see cref="CodeBuilder.Align"/>'s int3: the padding lies on the path into the loop and is executed.
    /// </summary>
    public static ulong NopAlign64(CodeBuilder b)
    {
        var nops = new byte[(int)((64 - b.Cursor % 64) % 64)];
        b.Nops.AddNops(nops);
        b.Bytes(nops);
        return b.Cursor;
    }
}
