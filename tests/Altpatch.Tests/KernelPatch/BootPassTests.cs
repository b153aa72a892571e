using Altpatch.Cpu;
using Altpatch.Images.Boot;
using Altpatch.Tests.Images;
using Altpatch.Text;
using static Altpatch.Tests.KernelPatch.BootImageBuilder;
using F = Altpatch.Cpu.CpuFeature;

namespace Altpatch.Tests.KernelPatch;

/// <summary>Each 6.1 pass on synthetic images, against bytes worked out by hand from the kernel's functions.</summary>
public class BootPassTests
{
    private static KernelBootState State(ReturnThunkKind thunk = ReturnThunkKind.Default, int cpus = 2, params F[] features) =>
        new(CpuFeatures.Empty.With(features).WithIdentity(CpuVendor.Intel, 6, 85, 7), thunk, cpus, KernelHypervisor.None);

    private static byte[] At(KernelPatchResult r, ulong address, int n) => r.Patched.ReadBytes(address, n).ToArray();

    // ---------------------------------------------------------------- apply_paravirt

    [Fact]
    public void Paravirt_site_becomes_a_direct_call_padded_with_a_nop()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100;
        b.AddPara(site, 3);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(0xe8, At(r, site, 6)[0]);
        Assert.Equal(b.NativeFunction(3), BranchTarget(r, site));
        Assert.Equal(0x90, At(r, site + 5, 1)[0]);
        Assert.Null(r.Thunks.ParavirtNop);   // no slot a site uses points at it
    }

    [Fact]
    public void Paravirt_site_of_paravirt_nop_becomes_nops()
    {
        var b = new BootImageBuilder();
        b.PvOpsSlots[5] = b.ParavirtNop;   // "jmp __x86_return_thunk": a return site tells where that is
        b.AddReturn(b.Text + 0x300);
        ulong site = b.Text + 0x100;
        b.AddPara(site, 5);
        b.AddPara(site + 0x10, 2);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("66 0f 1f 44 00 00"), At(r, site, 6));
        Assert.Equal(0xe8, At(r, site + 0x10, 1)[0]);
        Assert.Equal(b.ParavirtNop, r.Thunks.ParavirtNop);
    }

    [Fact]
    public void Paravirt_site_on_i386_calls_and_pads_with_the_32_bit_nop()
    {
        var b = new BootImageBuilder(is64: false);
        ulong site = b.Text + 0x100;
        b.AddPara(site, 1, len: 7);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(b.NativeFunction(1), BranchTarget(r, site));
        Assert.Equal(Hex("89 f6"), At(r, site + 5, 2));   // x86_nops[2] on i386
    }

    [Fact]
    public void Paravirt_site_with_an_empty_slot_is_an_error_naming_it()
    {
        var b = new BootImageBuilder();
        b.PvOpsSlots[4] = 0;
        b.AddPara(b.Text + 0x100, 1);
        b.AddPara(b.Text + 0x110, 4);
        var e = Assert.Throws<PatchException>(() => KernelBootPatcher.Patch(b.Open(), State()));
        Assert.Contains("paravirt site #1", e.Message, StringComparison.Ordinal);
        Assert.Contains("NULL", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Paravirt_site_too_short_for_a_call_is_an_error()
    {
        var b = new BootImageBuilder();
        b.AddPara(b.Text + 0x100, 1);
        b.AddPara(b.Text + 0x110, 2, len: 4);
        var e = Assert.Throws<PatchException>(() => KernelBootPatcher.Patch(b.Open(), State()));
        Assert.Contains("paravirt site #1", e.Message, StringComparison.Ordinal);
        Assert.Contains("4-byte site", e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- apply_retpolines

    [Fact]
    public void Retpolines_stay_when_plain_retpolines_are_in_use()
    {
        var b = new BootImageBuilder();
        b.AddRetpoline(b.Text + 0x100, 0);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State(features: [F.Retpoline]));
        Assert.True(r.Passes.Single(p => p.Pass == BootPass.Retpolines).Plan.IsEmpty);
        Assert.Equal(img.ReadBytes(b.Text + 0x100, 5).ToArray(), At(r, b.Text + 0x100, 5));
        Assert.Equal(b.RetpolineArray, r.Thunks.RetpolineThunkArray);
    }

    [Fact]
    public void Retpoline_call_becomes_an_indirect_call_with_optimised_nops()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x140;   // bit 5 set: no ITS question anyway
        b.AddRetpoline(site, 2);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("ff d2 0f 1f 00"), At(r, site, 5));   // call *%rdx; nopl (%rax)
    }

    [Fact]
    public void Retpoline_jmp_through_r11_gets_rex_and_int3()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x140;
        b.AddRetpoline(site, 11, 0xe9);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("41 ff e3 cc 90"), At(r, site, 5));
    }

    [Fact]
    public void Retpoline_jcc_becomes_an_inverted_short_jcc_over_an_indirect_jmp()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x140;
        b.AddRetpoline(site, 1, 0x84);   // je __x86_indirect_thunk_rcx
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("75 04 ff e1 cc 90"), At(r, site, 6));
    }

    [Fact]
    public void Retpoline_lfence_prepends_an_lfence()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x140;
        b.AddRetpoline(site, 2);
        var r = KernelBootPatcher.Patch(b.Open(), State(features: [F.Retpoline, F.RetpolineLfence]));
        Assert.Equal(Hex("0f ae e8 ff d2"), At(r, site, 5));
    }

    [Fact]
    public void Its_thunks_replace_indirect_branches_in_the_lower_half_of_a_cache_line()
    {
        var b = new BootImageBuilder();
        ulong low = b.Text + 0x100, high = b.Text + 0x160;   // (addr + 1) & 0x20: 0 at 0x100, set at 0x160
        b.AddRetpoline(low, 3);
        b.AddRetpoline(high, 3);
        var r = KernelBootPatcher.Patch(b.Open(), State(features: [F.IndirectThunkIts]));
        Assert.Equal(0xe8, At(r, low, 1)[0]);
        Assert.Equal(b.ItsArray + 3 * 64, BranchTarget(r, low));
        Assert.Equal(Hex("ff d3 0f 1f 00"), At(r, high, 5));
        Assert.Equal(b.ItsArray, r.Thunks.ItsThunkArray);
    }

    [Fact]
    public void Retpoline_through_rsp_is_an_error()
    {
        var b = new BootImageBuilder();
        b.AddRetpoline(b.Text + 0x100, 4);
        var e = Assert.Throws<PatchException>(() => KernelBootPatcher.Patch(b.Open(), State()));
        Assert.Contains("retpoline site #0", e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- apply_returns

    [Fact]
    public void Returns_become_ret_int3_without_return_thunks()
    {
        var b = new BootImageBuilder();
        b.AddReturn(b.Text + 0x100);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("c3 cc cc cc cc"), At(r, b.Text + 0x100, 5));
    }

    [Fact]
    public void Returns_keep_the_default_thunk()
    {
        var b = new BootImageBuilder();
        b.AddReturn(b.Text + 0x100);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State(features: [F.Rethunk]));
        Assert.Equal(img.ReadBytes(b.Text + 0x100, 5).ToArray(), At(r, b.Text + 0x100, 5));
        Assert.True(r.Passes.Single(p => p.Pass == BootPass.Returns).Plan.IsEmpty);
    }

    [Theory]
    [InlineData(ReturnThunkKind.Srso)]
    [InlineData(ReturnThunkKind.SrsoAlias)]
    [InlineData(ReturnThunkKind.Retbleed)]
    public void Returns_jump_to_the_chosen_thunk(ReturnThunkKind kind)
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x120;
        b.AddReturn(site);
        var r = KernelBootPatcher.Patch(b.Open(), State(kind, features: [F.Rethunk]));
        ulong want = kind switch
        {
            ReturnThunkKind.Srso => b.SrsoReturnThunk,
            ReturnThunkKind.SrsoAlias => b.SrsoAliasReturnThunk,
            _ => b.RetbleedReturnThunk,
        };
        Assert.Equal(0xe9, At(r, site, 1)[0]);
        Assert.Equal(want, BranchTarget(r, site));
    }

    [Fact]
    public void Its_return_thunk_is_used_only_in_the_lower_half_of_a_cache_line()
    {
        var b = new BootImageBuilder();
        ulong low = b.Text + 0x100, high = b.Text + 0x120;
        b.AddReturn(low);
        b.AddReturn(high);
        var r = KernelBootPatcher.Patch(b.Open(), State(ReturnThunkKind.Its, features: [F.Rethunk]));
        Assert.Equal(b.ItsReturnThunk, BranchTarget(r, low));
        Assert.Equal(Hex("c3 cc cc cc cc"), At(r, high, 5));
        Assert.Equal(b.ItsReturnThunk, r.Thunks.ItsReturnThunk);
    }

    [Fact]
    public void Static_call_trampolines_take_the_ret_form_or_stay_when_they_jump_elsewhere()
    {
        var b = new BootImageBuilder();
        ulong nullTramp = b.Text + 0x200, setTramp = b.Text + 0x210;
        b.AddReturn(nullTramp);
        b.Put(nullTramp + 5, 0x0f, 0xb9, 0xcc);
        b.Put(setTramp, [.. SyntheticTables.Branch(0xe9, setTramp, b.NativeFunction(1)), 0x0f, 0xb9, 0xcc]);
        b.Returns.Add(setTramp);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State());
        Assert.Equal(Hex("c3 cc cc cc cc 0f b9 cc"), At(r, nullTramp, 8));
        Assert.Equal(img.ReadBytes(setTramp, 8).ToArray(), At(r, setTramp, 8));
    }

    [Fact]
    public void Return_site_that_does_not_jump_to_the_thunk_stays()
    {
        var b = new BootImageBuilder();
        ulong other = b.Text + 0x300;
        b.AddReturn(b.Text + 0x100);
        b.AddReturn(b.Text + 0x108);
        b.Put(other, SyntheticTables.Branch(0xe9, other, b.NativeFunction(2)));
        b.Returns.Add(other);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State());
        Assert.Equal(img.ReadBytes(other, 5).ToArray(), At(r, other, 5));
        Assert.Equal(Hex("c3 cc cc cc cc"), At(r, b.Text + 0x108, 5));
    }

    // ---------------------------------------------------------------- apply_alternatives

    [Fact]
    public void Alternative_present_copies_the_replacement_and_optimises_the_padding()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100;
        b.AddAlt(site, Hex("0f 1f 44 00 00"), Hex("0f ae e8"), (int)F.Xmm2);
        var r = KernelBootPatcher.Patch(b.Open(), State(features: [F.Xmm2]));
        Assert.Equal(Hex("0f ae e8 66 90"), At(r, site, 5));
    }

    [Fact]
    public void Alternative_absent_still_gets_its_nops_optimised()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100;
        b.AddAlt(site, Hex("31 c0 90 90 90"), Hex("0f ae e8"), (int)F.Xmm2);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("31 c0 0f 1f 00"), At(r, site, 5));
    }

    [Fact]
    public void Alternative_inverted_is_patched_when_the_feature_is_absent()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100, site2 = b.Text + 0x110;
        b.AddAlt(site, Hex("ff 15 00 00 00 00"), Hex("9c 58"), (int)F.Xenpv, not: true);
        b.AddAlt(site2, Hex("ff 15 00 00 00 00"), Hex("9c 58"), (int)F.Xenpv, not: true);
        var r = KernelBootPatcher.Patch(b.Open(), State());
        Assert.Equal(Hex("9c 58 0f 1f 40 00"), At(r, site, 6));
        var r2 = KernelBootPatcher.Patch(b.Open(), State(features: [F.Xenpv]));
        Assert.Equal(Hex("ff 15 00 00 00 00"), At(r2, site2, 6));
    }

    [Fact]
    public void Alternative_call_is_re_aimed_from_the_site()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100;
        ulong target = b.NativeFunction(7);
        ulong replAt = b.Replacement + 0x200;
        b.Put(site, Hex("0f 1f 44 00 00"));
        b.Put(replAt, SyntheticTables.Branch(0xe8, replAt, target));
        b.Alts.Add(new SyntheticTables.Alt(site, replAt, (ushort)F.Erms, false, 5, 5));
        var r = KernelBootPatcher.Patch(b.Open(), State(features: [F.Erms]));
        Assert.Equal(0xe8, At(r, site, 1)[0]);
        Assert.Equal(target, BranchTarget(r, site));
    }

    [Fact]
    public void Alternative_jmp_is_recomputed_short_when_it_reaches_and_near_when_not()
    {
        var b = new BootImageBuilder();
        ulong near = b.Text + 0x100, far = b.Text + 0x200;
        ulong replNear = b.Replacement + 0x200, replFar = b.Replacement + 0x210;
        b.Put(near, Hex("0f 1f 44 00 00"));
        b.Put(far, Hex("0f 1f 44 00 00"));
        b.Put(replNear, SyntheticTables.Branch(0xe9, replNear, near + 0x40));   // 0x3b past the 2-byte jmp
        b.Put(replFar, SyntheticTables.Branch(0xe9, replFar, far + 0x1000));
        b.Alts.Add(new SyntheticTables.Alt(near, replNear, (ushort)F.Always, false, 5, 5));
        b.Alts.Add(new SyntheticTables.Alt(far, replFar, (ushort)F.Always, false, 5, 5));
        var r = KernelBootPatcher.Patch(b.Open(), State(features: [F.Always]));
        Assert.Equal(Hex("eb 3e 0f 1f 00"), At(r, near, 5));
        Assert.Equal(0xe9, At(r, far, 1)[0]);
        Assert.Equal(far + 0x1000, BranchTarget(r, far));
    }

    [Fact]
    public void Later_alternative_entries_overwrite_earlier_ones()
    {
        var b = new BootImageBuilder();
        ulong site = b.Text + 0x100;
        b.AddAlt(site, Hex("0f 1f 44 00 00"), Hex("0f ae e8"), (int)F.Xmm2);         // ALTERNATIVE_2 first
        ulong r2 = b.AddReplacement(Hex("0f 01 f9"));                                  // second: rdtscp
        b.Alts.Add(new SyntheticTables.Alt(site, r2, (ushort)F.Rdtscp, false, 5, 3));
        var both = KernelBootPatcher.Patch(b.Open(), State(features: [F.Xmm2, F.Rdtscp]));
        Assert.Equal(Hex("0f 01 f9 66 90"), At(both, site, 5));
        var first = KernelBootPatcher.Patch(b.Open(), State(features: [F.Xmm2]));
        Assert.Equal(Hex("0f ae e8 66 90"), At(first, site, 5));
        Assert.Equal(1, first.Passes.Single(p => p.Pass == BootPass.Alternatives).Plan.Count(p => p.Address == site));
    }

    [Fact]
    public void Alternative_with_a_feature_beyond_the_numbering_is_an_error()
    {
        var b = new BootImageBuilder();
        b.AddAlt(b.Text + 0x100, Hex("0f 1f 44 00 00"), Hex("90"), 800);
        var e = Assert.Throws<PatchException>(() => KernelBootPatcher.Patch(b.Open(), State()));
        Assert.Contains("alternative site #2", e.Message, StringComparison.Ordinal);
        Assert.Contains("25*32+0", e.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- apply_ibt_endbr

    [Fact]
    public void Sealed_endbr_instructions_are_poisoned()
    {
        var b = new BootImageBuilder();
        ulong sealed64 = b.Text + 0x100, sealed32 = b.Text + 0x110, notEndbr = b.Text + 0x120, open = b.Text + 0x130;
        b.Put(sealed64, Hex("f3 0f 1e fa 55"));
        b.Put(sealed32, Hex("f3 0f 1e fb 55"));
        b.Put(notEndbr, Hex("55 48 89 e5"));
        b.Put(open, Hex("f3 0f 1e fa 55"));
        b.IbtSeal.AddRange([sealed64, sealed32, notEndbr]);
        var img = b.Open();
        var r = KernelBootPatcher.Patch(img, State());
        Assert.Equal(Hex("66 0f 1f 00 55"), At(r, sealed64, 5));
        Assert.Equal(Hex("66 0f 1f 00 55"), At(r, sealed32, 5));
        Assert.Equal(Hex("55 48 89 e5"), At(r, notEndbr, 4));
        Assert.Equal(Hex("f3 0f 1e fa 55"), At(r, open, 5));
        var pass = r.Passes.Single(p => p.Pass == BootPass.IbtEndbr);
        Assert.Equal(3, pass.Sites);
        Assert.Equal(2, pass.Pokes);
    }

    // ---------------------------------------------------------------- SMP locks

    [Fact]
    public void Lock_prefixes_in_text_become_ds_on_one_cpu()
    {
        var b = new BootImageBuilder();
        ulong l1 = b.Text + 0x100, l2 = b.InitText + 0x10, l3 = b.Text + 0x110;
        b.Put(l1, Hex("f0 0f c1 07"));
        b.Put(l2, Hex("f0 0f c1 07"));
        b.Put(l3, Hex("3e 0f c1 07"));
        b.Locks.AddRange([l1, l2, l3]);
        var up = KernelBootPatcher.Patch(b.Open(), State(cpus: 1));
        Assert.Equal(0x3e, At(up, l1, 1)[0]);
        Assert.Equal(0xf0, At(up, l2, 1)[0]);
        Assert.Equal(1, up.Passes.Single(p => p.Pass == BootPass.SmpLocks).Pokes);
        var smp = KernelBootPatcher.Patch(b.Open(), State(cpus: 2));
        Assert.Equal(0xf0, At(smp, l1, 1)[0]);
    }

    // ---------------------------------------------------------------- thunks, whole image

    [Fact]
    public void Thunks_are_found_by_their_code()
    {
        var b = new BootImageBuilder();
        b.AddReturn(b.Text + 0x100);
        b.AddRetpoline(b.Text + 0x120, 6);
        var t = KernelThunks.Find(b.Open());
        Assert.Equal(b.ReturnThunk, t.ReturnThunk);
        Assert.Equal(b.ItsReturnThunk, t.ItsReturnThunk);
        Assert.Equal(b.RetbleedReturnThunk, t.RetbleedReturnThunk);
        Assert.Equal(b.SrsoReturnThunk, t.SrsoReturnThunk);
        Assert.Equal(b.SrsoAliasReturnThunk, t.SrsoAliasReturnThunk);
        Assert.Equal(b.RetpolineArray, t.RetpolineThunkArray);
        Assert.Equal(b.ItsArray, t.ItsThunkArray);
        Assert.Equal(b.Text, t.TextStart);
        Assert.Equal(b.Text + 0x4000, t.TextEnd);

        // Each return thunk kind names its symbol and finds its address, and the report's list has every thunk once.
        Assert.Equal(b.ReturnThunk, t.Address(ReturnThunkKind.Default));
        Assert.Equal(b.ItsReturnThunk, t.Address(ReturnThunkKind.Its));
        Assert.Equal(b.RetbleedReturnThunk, t.Address(ReturnThunkKind.Retbleed));
        Assert.Equal(b.SrsoReturnThunk, t.Address(ReturnThunkKind.Srso));
        Assert.Equal(b.SrsoAliasReturnThunk, t.Address(ReturnThunkKind.SrsoAlias));
        Assert.Equal(
            ["__x86_return_thunk", "its_return_thunk", "retbleed_return_thunk", "srso_return_thunk", "srso_alias_return_thunk"],
            t.Symbols.Take(5).Select(x => x.Symbol));
        Assert.All(Enum.GetValues<ReturnThunkKind>(), k => Assert.Contains(t.Symbols, x => x.Symbol == k.Symbol() && x.Address == t.Address(k)));
        Assert.Equal(t.Symbols.Count, t.Symbols.Select(x => x.Symbol).Distinct().Count());
    }

    [Fact]
    public void Patching_leaves_the_image_unchanged_and_keeps_the_layout()
    {
        var b = new BootImageBuilder();
        b.AddPara(b.Text + 0x100, 3);
        b.AddReturn(b.Text + 0x120);
        b.AddAlt(b.Text + 0x140, Hex("0f 1f 44 00 00"), Hex("0f ae e8"), (int)F.Xmm2);
        var img = b.Open();
        var before = img.ElfBytes.ToArray();
        var r = KernelBootPatcher.Patch(img, State(features: [F.Xmm2]));
        Assert.Equal(before, img.ElfBytes.ToArray());
        Assert.Equal(before.Length, r.Patched.Bytes.Length);
        Assert.NotEqual(before, r.Patched.Bytes.ToArray());
    }
}
