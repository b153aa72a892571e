using Iced.Intel;

namespace Altpatch.Code;

/// <summary>A reusable Iced <see cref="CodeReader"/> over a byte array (reset per use, no allocation).</summary>
internal sealed class ArrayCodeReader : CodeReader
{
    private byte[] data = [];
    private int position;
    private int end;

    public void Reset(byte[] bytes, int start, int length)
    {
        data = bytes;
        position = start;
        end = start + length;
    }

    public override int ReadByte() => position < end ? data[position++] : -1;
}

/// <summary>A reusable Iced <see cref="CodeWriter"/> into a growable byte array.</summary>
internal sealed class ArrayCodeWriter : CodeWriter
{
    private byte[] buffer = new byte[256];

    public int Length { get; private set; }

    public ReadOnlySpan<byte> Written => buffer.AsSpan(0, Length);

    public void Clear() => Length = 0;

    public override void WriteByte(byte value)
    {
        if (Length == buffer.Length) Array.Resize(ref buffer, buffer.Length * 2);
        buffer[Length++] = value;
    }
}

/// <summary>Per-thread decoders for 32- and 64-bit code, reused across calls.</summary>
internal sealed class DecoderCache
{
    [ThreadStatic] private static DecoderCache? current;

    private readonly byte[] scratch = new byte[X86.MaxPatchLength + X86.MaxInstructionLength]; // a site and the instruction after it
    private readonly ArrayCodeReader reader = new();
    private readonly Decoder decoder64;
    private readonly Decoder decoder32;
    private Encoder? encoder64, encoder32;

    /// <summary>The writer the cached encoders write to.</summary>
    public ArrayCodeWriter Writer { get; } = new();

    /// <summary>A cached encoder for <paramref name="bitness"/> writing to <see cref="Writer"/>.</summary>
    public Encoder Encoder(int bitness) => bitness == 64
        ? encoder64 ??= Iced.Intel.Encoder.Create(64, Writer)
        : encoder32 ??= Iced.Intel.Encoder.Create(32, Writer);

    private DecoderCache()
    {
        decoder64 = Decoder.Create(64, reader, DecoderOptions.None);
        decoder32 = Decoder.Create(32, reader, DecoderOptions.None);
    }

    public static DecoderCache Current => current ??= new DecoderCache();

    /// <summary>Positions a decoder on a copy of <paramref name="code"/> at <paramref name="ip"/>.</summary>
    public Decoder Start(ReadOnlySpan<byte> code, ulong ip, int bitness)
    {
        byte[] data = code.Length <= scratch.Length ? scratch : new byte[code.Length];
        code.CopyTo(data);
        reader.Reset(data, 0, code.Length);
        var d = bitness == 64 ? decoder64 : bitness == 32 ? decoder32 : throw new ArgumentOutOfRangeException(nameof(bitness), bitness, "32 or 64");
        d.IP = ip;
        return d;
    }
}

/// <summary>Helpers for code Altpatch assembles itself.</summary>
internal static class AssemblerExtensions
{
    /// <summary>Pushes <paramref name="registers"/> in order (a routine's prologue).</summary>
    public static void PushAll(this Assembler a, ReadOnlySpan<AssemblerRegister64> registers)
    {
        foreach (var r in registers) a.push(r);
    }

    /// <summary>Pops <paramref name="registers"/> in reverse order: undoes <see cref="PushAll"/> with the same list.</summary>
    public static void PopAll(this Assembler a, ReadOnlySpan<AssemblerRegister64> registers)
    {
        for (int i = registers.Length - 1; i >= 0; i--) a.pop(registers[i]);
    }
}
