using System.Buffers.Binary;
using Altpatch.Images;
using Altpatch.Images.Boot;
using Altpatch.Images.Verify;
using Altpatch.Tests.KernelPatch;
using Iced.Intel;

namespace Altpatch.Tests.Verify;

/// <summary>
/// What <c>kernel verify</c> must catch: changes injected into a real running kernel's .text (rebuilt from the committed
/// truth of a KASLR boot), each reported as unexplained at its address; and what it must not: a jump label flipped to
/// its other legal state is dynamic.
/// </summary>
public class InjectionTests
{
    /// <summary>A default-command-line KASLR boot of each image that has truth files.</summary>
    public static TheoryData<string, string> Boots()
    {
        var data = new TheoryData<string, string>();
        foreach (var image in new[] { "6.1.0-50-cloud-amd64", "6.1.0-50-686" })
        {
            var config = WholeTextTruth.Configurations().Where(c => c.Image == image && c.Config.EndsWith("+kaslr", StringComparison.Ordinal)
                    && c.Config.Count(ch => ch == '+') == 1)
                .Select(c => c.Config).FirstOrDefault();
            data.Add(image, config ?? "");
        }
        return data;
    }

    private sealed record Boot(KernelImage Image, byte[] Text, ulong At, KernelCpuDescription Cpu, KernelVerifyResult Clean)
    {
        public KernelPatchResult Prediction => Clean.Prediction;
        public KernelSymbols Symbols => Clean.Runtime.Symbols;
        public int Off(ulong address) => (int)(address - At);

        /// <summary>Verifies bytes with the same (cached) prediction.</summary>
        public KernelVerifyResult Verify(byte[] text) =>
            KernelTextVerifier.Verify(Image, text, At, "injected", img => ReferenceEquals(img, Clean.Runtime) ? Prediction : KernelTextVerifier.Predict(img, Cpu));
    }

    private static readonly Dictionary<string, Boot> Cache = [];

    private static Boot Load(string image, string config)
    {
        Skip.If(config.Length == 0, $"no default-command-line KASLR truth file of {image} in this checkout");
        lock (Cache)
        {
            if (Cache.TryGetValue(config + image, out var b))
                return b;
            var img = GroundTruthDumps.Image(image);
            var (cpu, truth) = VerifyGroundTruthTests.Boot(image, config);
            var text = truth.RebuildText(img);
            ulong at = truth.Text.Address + (ulong)truth.KaslrDelta;
            var clean = KernelTextVerifier.Verify(img, text, at, config, cpu);
            Assert.True(clean.Clean, "the boot itself must verify clean");
            return Cache[config + image] = new Boot(img, text, at, cpu, clean);
        }
    }

    /// <summary>The instructions of a function in the predicted text, outside every known site.</summary>
    private static List<Instruction> FreeInstructions(Boot b, string function)
    {
        var sym = b.Symbols.Named(function).First(s => s.IsText);
        Assert.True(b.Symbols.TryFind(sym.Address, out _, out _, out ulong size));
        var code = b.Prediction.Patched.ReadBytes(sym.Address, (int)size).ToArray();
        var sites = KernelTextExpectations.Sites(b.Prediction);
        var decoder = Decoder.Create(b.Image.Bitness, new ByteArrayCodeReader(code));
        decoder.IP = sym.Address;
        var list = new List<Instruction>();
        while (decoder.IP < sym.Address + size)
        {
            decoder.Decode(out var insn);
            if (insn.IsInvalid)
                break;
            bool inSite = sites.Any(s => s.Address < insn.NextIP && s.Address + (ulong)s.Length > insn.IP);
            if (!inSite)
                list.Add(insn);
        }
        return list;
    }

    [SkippableTheory]
    [MemberData(nameof(Boots))]
    public void Every_injected_change_is_unexplained_at_its_address(string image, string config)
    {
        var b = Load(image, config);
        var text = (byte[])b.Text.Clone();
        var injected = new List<(string What, ulong Address, string Function)>();

        // 1. an inline jmp hook at a function's start
        ulong hook = b.Symbols.AddressOf("vfs_read");
        ulong hookTarget = b.Symbols.AddressOf("vfs_write");
        text[b.Off(hook)] = 0xe9;
        BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(b.Off(hook) + 1), (int)(hookTarget - (hook + 5)));
        injected.Add(("jmp hook", hook, "vfs_read"));

        // 2. a je flipped to jne
        var je = FreeInstructions(b, "do_sys_openat2").First(i => i.Mnemonic == Mnemonic.Je && i.Length == 2);
        Assert.Equal(0x74, text[b.Off(je.IP)]);
        text[b.Off(je.IP)] = 0x75;
        injected.Add(("je -> jne", je.IP, "do_sys_openat2"));

        // 3. an int3 (a software breakpoint) on an instruction
        var bp = FreeInstructions(b, "ksys_write").Skip(3).First(i => text[b.Off(i.IP)] != 0xcc);
        text[b.Off(bp.IP)] = 0xcc;
        injected.Add(("int3", bp.IP, "ksys_write"));

        // 4. a call overwritten by a 5-byte NOP outside ftrace's (and every other) site
        var call = FreeInstructions(b, "vfs_fsync_range").First(i => i.Mnemonic == Mnemonic.Call && i.Length == 5);
        var nop5 = b.Image.Bitness == 64 ? new byte[] { 0x0f, 0x1f, 0x44, 0x00, 0x00 } : [0x3e, 0x8d, 0x74, 0x26, 0x00];
        nop5.CopyTo(text, b.Off(call.IP));
        injected.Add(("call -> nop5", call.IP, "vfs_fsync_range"));

        // 5. a site boot patching changed, put back to its unpatched bytes: an alternative, and an ftrace call
        var text0 = KernelTextLocator.TextSection(b.Clean.Runtime);
        var alt = b.Prediction.Sites().First(s => s.Kind == KernelSiteKind.Alternative && s.Changed && text0.Contains(s.Address)
            && b.Symbols.TryFind(s.Address, out var f, out _) && f.Name.StartsWith("do_", StringComparison.Ordinal));
        alt.Before.Span.CopyTo(text.AsSpan(b.Off(alt.Address)));
        int firstDiff = alt.Before.Span.CommonPrefixLength(alt.After.Span);
        b.Symbols.TryFind(alt.Address, out var altFn, out _);
        injected.Add(($"alt #{alt.Index} unpatched", alt.Address + (ulong)firstDiff, altFn.Name));

        var mcount = b.Prediction.TextSites.First(s => s.Kind == KernelSiteKind.Mcount && s.Changed && s.Address > b.Symbols.AddressOf("vfs_truncate")
            && text0.Contains(s.Address));
        mcount.Before.Span.CopyTo(text.AsSpan(b.Off(mcount.Address)));
        b.Symbols.TryFind(mcount.Address, out var mcFn, out _);
        injected.Add(("call __fentry__ back", mcount.Address, mcFn.Name));

        var r = b.Verify(text);
        Assert.False(r.Clean);
        var where = string.Join("; ", r.Unexplained.Select(u => $"0x{u.Address:x} {u.Symbol} +{u.Length}"));
        foreach (var (what, address, function) in injected)
        {
            var u = r.Unexplained.SingleOrDefault(u => u.Address == address);
            Assert.True(u is not null, $"{what} at 0x{address:x} ({function}) not reported at its address; reported: {where}");
            Assert.StartsWith(function + "+", u.Symbol, StringComparison.Ordinal);
            Assert.Equal(text.AsSpan(b.Off(address), u.Length).ToArray(), u.Found.ToArray());
            Assert.NotEqual(u.Expected.ToArray(), u.Found.ToArray());
            Assert.NotEmpty(u.ExpectedCode);
            Assert.NotEmpty(u.FoundCode);
        }
        Assert.Equal(injected.Count, r.Unexplained.Length);
        Assert.Contains(r.Unexplained.Single(u => u.Address == hook).FoundCode, c => c == 'j');
        Assert.StartsWith("jne", r.Unexplained.Single(u => u.Address == je.IP).FoundCode, StringComparison.Ordinal);
        Assert.StartsWith("int3", r.Unexplained.Single(u => u.Address == bp.IP).FoundCode, StringComparison.Ordinal);
        Assert.Contains($"alt #{alt.Index}", r.Unexplained.Single(u => u.Address == alt.Address + (ulong)firstDiff).Sites);
        Assert.Contains(r.Unexplained.Single(u => u.Address == mcount.Address).Sites, s => s.StartsWith("mcount #", StringComparison.Ordinal) && s.Contains("no legal state", StringComparison.Ordinal));
        Assert.Equal(b.Clean.DynamicBytes, r.DynamicBytes);
    }

    /// <summary>What the kernel's own run-time patching does is dynamic, named: ftrace turning a function's site into a
    /// call of ftrace_regs_caller or of a trampoline it allocated; static_call_update() pointing a call at another
    /// function. Pointing it into the middle of a function is no legal state.</summary>
    [SkippableTheory]
    [MemberData(nameof(Boots))]
    public void Tracing_and_static_call_updates_are_dynamic_and_named(string image, string config)
    {
        var b = Load(image, config);
        var text = (byte[])b.Text.Clone();
        var textSection = KernelTextLocator.TextSection(b.Clean.Runtime);
        var already = b.Clean.DynamicChanged.Select(o => o.Site.Address).ToHashSet();
        void Call(ulong at, ulong target)
        {
            text[b.Off(at)] = 0xe8;
            BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(b.Off(at) + 1), (int)(long)(target - (at + 5)));
        }
        var mcount = b.Prediction.TextSites.Where(s => s.Kind == KernelSiteKind.Mcount && textSection.Contains(s.Address) && !already.Contains(s.Address)).ToList();
        var traced = mcount[1000];
        var trampolined = mcount[2000];
        ulong regsCaller = b.Symbols.AddressOf("ftrace_regs_caller");
        // an ftrace_ops trampoline: module space on x86-64, vmalloc space on i386 (outside the image either way)
        ulong trampoline = b.Image.Bitness == 64 ? 0xffffffffc0a01000UL : 0xf8a01000UL;
        Call(traced.Address, regsCaller);
        Call(trampolined.Address, trampoline);
        var expected = new List<(ulong Address, string State)>
        {
            (traced.Address, "call ftrace_regs_caller"),
            (trampolined.Address, $"call ftrace trampoline at 0x{trampoline:x}"),
        };
        if (b.Image.Bitness == 64)
        {
            // a non-tail static call site, pointed at another function (its state: "call NAME")
            var sc = b.Prediction.TextSites.First(s => s.Kind == KernelSiteKind.StaticCall && s.Dynamic && s.Length == 5 && textSection.Contains(s.Address)
                && s.After.Span[0] == 0xe8 && !already.Contains(s.Address) && !s.Detail.Contains("tail", StringComparison.Ordinal));
            Call(sc.Address, b.Symbols.AddressOf("vfs_read"));
            expected.Add((sc.Address, "call vfs_read"));
        }
        var r = b.Verify(text);
        Assert.True(r.Clean, string.Join("; ", r.Unexplained.Select(u => $"{u.Symbol} [{string.Join(",", u.Sites)}]")));
        foreach (var (address, state) in expected)
        {
            var seen = r.DynamicChanged.SingleOrDefault(o => o.Site.Address == address);
            Assert.True(seen is not null, $"0x{address:x} not seen as dynamic");
            Assert.Equal(state, seen.State);
        }

        // into the middle of a function: not what ftrace or static_call_update() ever write
        Call(traced.Address, b.Symbols.AddressOf("vfs_read") + 3);
        var bad = b.Verify(text);
        var u = Assert.Single(bad.Unexplained);
        Assert.Equal(traced.Address, u.Address);
        Assert.Contains(u.Sites, s => s.StartsWith($"mcount #{traced.Index} in no legal state", StringComparison.Ordinal));
    }

    [SkippableTheory]
    [MemberData(nameof(Boots))]
    public void A_jump_label_flipped_to_its_other_state_is_dynamic(string image, string config)
    {
        var b = Load(image, config);
        var text = (byte[])b.Text.Clone();
        var textSection = KernelTextLocator.TextSection(b.Clean.Runtime);
        var already = b.Clean.DynamicChanged.Select(o => o.Site.Address).ToHashSet();
        // a jump label the running kernel left as booted, NOP, in .text: switch it on (jmp to its target)
        var site = b.Prediction.TextSites.First(s => s.Kind == KernelSiteKind.JumpLabel && s.Dynamic && textSection.Contains(s.Address)
            && !already.Contains(s.Address) && s.After.Span[0] != 0xe9 && s.After.Span[0] != 0xeb
            && s.After.Span.SequenceEqual(text.AsSpan(b.Off(s.Address), s.Length)));
        int o = b.Off(site.Address);
        if (site.Length == 2)
        {
            text[o] = 0xeb;
            text[o + 1] = (byte)(sbyte)(long)(site.Target - (site.Address + 2));
        }
        else
        {
            text[o] = 0xe9;
            BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(o + 1), (int)(long)(site.Target - (site.Address + 5)));
        }
        var r = b.Verify(text);
        Assert.True(r.Clean, string.Join("; ", r.Unexplained.Select(u => u.Symbol)));
        var seen = r.DynamicChanged.Single(x => x.Site.Address == site.Address);
        Assert.Equal(KernelSiteKind.JumpLabel, seen.Site.Kind);
        Assert.Contains("jmp", seen.State, StringComparison.Ordinal);
        Assert.Equal(b.Clean.DynamicBytes + site.Length, r.DynamicBytes);

        // the same jmp to somewhere else is no legal state
        if (site.Length == 5)
            BinaryPrimitives.WriteInt32LittleEndian(text.AsSpan(o + 1), BinaryPrimitives.ReadInt32LittleEndian(text.AsSpan(o + 1)) + 16);
        else
            text[o + 1] += 2;
        var bad = b.Verify(text);
        var u = Assert.Single(bad.Unexplained);
        Assert.InRange(u.Address, site.Address, site.Address + (ulong)site.Length - 1);
        Assert.Contains(u.Sites, s => s.StartsWith($"jump #{site.Index} in no legal state", StringComparison.Ordinal));
    }
}
