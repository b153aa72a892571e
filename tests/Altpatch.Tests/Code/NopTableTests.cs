using Altpatch.Code;
using Altpatch.Cpu;
using Altpatch.Emit;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Code;

public class NopTableTests
{
    public static TheoryData<string> Tables() => [.. NopTable.All.Select(t => t.Name)];

    private static NopTable Table(string name) => NopTable.All.Single(t => t.Name == name);

    private static List<Instruction> Decode(ReadOnlySpan<byte> bytes, int bitness)
    {
        var d = Decoder.Create(bitness, new ByteArrayCodeReader(bytes.ToArray()), 0x1000);
        var list = new List<Instruction>();
        while (d.IP < 0x1000 + (ulong)bytes.Length)
        {
            d.Decode(out var i);
            Assert.False(i.IsInvalid, $"invalid instruction in {Convert.ToHexString(bytes)}");
            list.Add(i);
        }
        Assert.Equal(0x1000 + (ulong)bytes.Length, d.IP);
        return list;
    }

    /// <summary>An instruction with no architectural effect in its mode: nop, mov r,r (32-bit), lea r,[r+0].</summary>
    private static bool IsNoOp(in Instruction i, int bitness)
    {
        if (i.Mnemonic == Mnemonic.Nop) return true;
        if (bitness != 32) return false;
        if (i.Mnemonic == Mnemonic.Mov && i.OpCount == 2 && i.Op0Kind == OpKind.Register && i.Op1Kind == OpKind.Register)
            return i.Op0Register == i.Op1Register;
        if (i.Mnemonic == Mnemonic.Lea && i.MemoryDisplacement64 == 0)
        {
            var dst = i.Op0Register;
            bool baseOnly = i.MemoryBase == dst && i.MemoryIndex == Register.None;
            bool indexOnly = i.MemoryBase == Register.None && i.MemoryIndex == dst && i.MemoryIndexScale == 1;
            return baseOnly || indexOnly;
        }
        return false;
    }

    [Theory]
    [MemberData(nameof(Tables))]
    public void Every_entry_decodes_as_a_nop_of_its_length(string name)
    {
        var t = Table(name);
        for (int n = 1; n <= t.MaxLength; n++)
        {
            var insns = Decode(t[n], t.Bitness);
            Assert.All(insns, i => Assert.True(IsNoOp(i, t.Bitness), $"{name}[{n}]: {i} is not a no-op"));
            if (t.Bitness == 64)
            {
                // 64-bit tables are single instructions of exactly n bytes (the kernel relies on it),
                // except 2.6.22's K8 table whose 5..8-byte entries are two prefixed NOPs (K8_NOP3 K8_NOP2 ...)
                if (t == NopTable.K8 && n > 4)
                    Assert.Equal(2, insns.Count);
                else
                    Assert.Equal(n, Assert.Single(insns).Length);
                // and they are NOPs in 32-bit code as well
                Assert.All(Decode(t[n], 32), i => Assert.Equal(Mnemonic.Nop, i.Mnemonic));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Tables))]
    public void AddNops_fills_any_length_with_the_fewest_longest_nops(string name)
    {
        var t = Table(name);
        for (int len = 0; len <= 300; len++)
        {
            var buf = new byte[len];
            t.AddNops(buf);
            int expectedNops = (len + t.MaxLength - 1) / t.MaxLength;
            Assert.Equal(expectedNops, t.CountFor(len));
            var insns = len == 0 ? [] : Decode(buf, t.Bitness);
            Assert.All(insns, i => Assert.True(IsNoOp(i, t.Bitness), $"{name} len {len}: {i}"));
            if (t.Bitness == 64 && t != NopTable.K8) Assert.Equal(expectedNops, insns.Count);
            // greedy: every NOP but the last is the longest
            int at = 0;
            for (int k = 0; k < expectedNops; k++)
            {
                int n = Math.Min(t.MaxLength, len - at);
                Assert.True(buf.AsSpan(at, n).SequenceEqual(t[n]), $"{name} len {len}: NOP #{k} is not the {n}-byte NOP");
                at += n;
            }
        }
    }

    [Fact]
    public void Todays_x86_64_table_goes_to_11_bytes_and_6_1s_to_8()
    {
        Assert.Equal(11, NopTable.X86_64.MaxLength);
        Assert.Equal(8, NopTable.X86_64Linux61.MaxLength);
        Assert.Equal("2E0F1F840000000000", Convert.ToHexString(NopTable.X86_64[9]));
        Assert.Equal("66662E0F1F840000000000", Convert.ToHexString(NopTable.X86_64[11]));
        Assert.All(new[] { NopTable.Generic, NopTable.K7, NopTable.K8, NopTable.P6, NopTable.X86_32 }, t => Assert.Equal(8, t.MaxLength));
    }

    [Theory]
    [InlineData(CpuVendor.Amd, 15, false, "k8")]
    [InlineData(CpuVendor.Amd, 16, false, "k8")]
    [InlineData(CpuVendor.Amd, 6, false, "k7")]
    [InlineData(CpuVendor.Intel, 6, false, "p6")]
    [InlineData(CpuVendor.Intel, 15, false, "p6")]
    [InlineData(CpuVendor.Intel, 5, false, "generic")]
    [InlineData(CpuVendor.Centaur, 6, false, "generic")]
    [InlineData(CpuVendor.Amd, 15, true, "k8")]
    [InlineData(CpuVendor.Intel, 15, true, "p6")]
    [InlineData(CpuVendor.Centaur, 6, true, "k8")]
    public void Seed_era_find_nop_table_chooses_by_vendor_and_family(CpuVendor vendor, int family, bool is64, string expected) =>
        Assert.Equal(expected, NopTable.FindSeedEra(vendor, family, is64).Name);

    [Fact]
    public void Nop_sleds_of_every_length_execute()
    {
        using var cb = new CodeBuilder();
        var fns = new List<(int Len, ulong Fn)>();
        foreach (var t in NopTable.All.Where(t => t.Bitness == 64))
        {
            for (int len = 1; len <= 254; len += len < 24 ? 1 : 23)
            {
                var sled = new byte[len];
                t.AddNops(sled);
                ulong fn = cb.Align(16);
                cb.Code(a => a.mov(eax, 1000 + len));
                cb.Bytes(sled);
                cb.Code(a => a.ret());
                fns.Add((len, fn));
            }
        }
        cb.Publish();
        foreach (var (len, fn) in fns) Assert.Equal(1000 + len, Run.Call(fn, 0));
    }
}
