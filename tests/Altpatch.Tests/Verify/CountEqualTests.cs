using Altpatch.Images.Verify;

namespace Altpatch.Tests.Verify;

/// <summary><see cref="KernelTextLocator.CountEqual"/> (how much of a dump is the image's bytes) against a byte-by-byte count:
/// sparse differences (a dump of the image), dense ones (another image) and the ends.</summary>
public sealed class CountEqualTests
{
    [Theory]
    [InlineData(0, 0.0)]
    [InlineData(1, 1.0)]
    [InlineData(4099, 0.001)]
    [InlineData(100_003, 0.01)]
    [InlineData(100_003, 0.9)]
    [InlineData(65_536, 1.0)]
    public void Counts_the_positions_holding_the_same_byte(int length, double differing)
    {
        var random = new Random(length ^ (int)(differing * 1000));
        var a = new byte[length];
        random.NextBytes(a);
        var b = a.ToArray();
        for (int i = 0; i < length; i++)
        {
            if (random.NextDouble() < differing)
                b[i] = (byte)random.Next(256);
        }
        if (length > 0 && differing > 0)
            b[^1] ^= 1;   // the last byte differs
        long expected = 0;
        for (int i = 0; i < length; i++)
            expected += a[i] == b[i] ? 1 : 0;
        Assert.Equal(expected, KernelTextLocator.CountEqual(a, b));
    }
}
