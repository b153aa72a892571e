using System.Buffers.Binary;
using System.Diagnostics;
using Altpatch.Images;
using Altpatch.Tests.Cli;

namespace Altpatch.Tests.Modules;

/// <summary>
/// <c>altpatch kernel module</c> and <c>kernel verify --module</c> on a real module and its ground truth: OUT's sections
/// at their load addresses holding the booted bytes, compressed modules read as they are, a clean verification (exit 0)
/// and an inline hook caught (exit 3); bad input — another build's module, a section missing from the sections file, a
/// relocation that overflows, an unknown relocation type, a truncated or corrupt .ko — one error line, exit 1, nothing
/// written.
/// </summary>
public sealed class ModuleCliTests : IDisposable
{
    private const string Config = "Haswell-smp2+kaslr";
    private readonly string dir = Directory.CreateTempSubdirectory("altpatch-kmodule-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static string Truth(string name, ModuleTruth? truth = null) => Path.Combine((truth ?? ModuleTruth.Linux61).Data, Config, name);

    private static string Ko(string name, ModuleTruth? truth = null) => (truth ?? ModuleTruth.Linux61).Modules(Config).Single(m => m.Name == name).Path;

    private string Out(string name) => Path.Combine(dir, name);

    private static string[] MachineOf(ModuleTruth truth) => ["--kernel-base", truth.Boot(Config)["stext"], "--cpuinfo", Truth("cpuinfo", truth), "--smp", "2"];

    private static string[] Machine => MachineOf(ModuleTruth.Linux61);

    private static void SkipUnlessPackage() => Skip.IfNot(ModuleTruth.Linux61.HavePackage, ModuleTruth.Linux61.NoPackage);

    private void AssertRefused((int Exit, string Out, string Err) r, string expected)
    {
        Assert.Equal(1, r.Exit);
        Assert.StartsWith("altpatch: error: ", r.Err, StringComparison.Ordinal);
        Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.False(File.Exists(Out("out.ko")), "OUT must not be written");
        Assert.All(Directory.GetFiles(dir), f => Assert.DoesNotContain(".tmp", f, StringComparison.Ordinal));
    }

    private (int Exit, string Out, string Err) Module(string ko, string sections, params string[] more) =>
        CliRunner.Run([.. (string[])["kernel", "module", ModuleTruth.Linux61.KernelPath, ko, "--sections", sections, .. Machine, "-o", Out("out.ko")], .. more]);

    [SkippableFact]
    public void Out_is_an_elf_file_whose_sections_are_at_their_load_addresses_with_the_booted_bytes()
    {
        SkipUnlessPackage();
        var r = Module(Ko("tls"), Truth("tls.sections"));
        Assert.True(r.Exit == 0, r.Err);
        Assert.Contains("static_call_add_module", r.Out, StringComparison.Ordinal);
        var elf = ElfFile.Parse(File.ReadAllBytes(Out("out.ko")), "out.ko");
        var saved = ModuleTruth.Linux61.Saved(Config, "tls");
        Assert.NotEmpty(saved);
        foreach (var (name, (address, bytes)) in saved)
        {
            var s = elf.FindSection(name)!.Value;
            Assert.Equal(address, s.Address);
            Assert.True(elf.SectionBytes(s).Span.SequenceEqual(bytes), $"{name} differs from the booted bytes");
        }
        var placed = KernelModuleSections.Read(Truth("tls.sections"));
        Assert.All(elf.Sections.Where(s => s.IsAllocated && s.Size > 0 && s.Name != ".modinfo" && s.Name != "__versions"),
            s => Assert.Equal(placed[s.Name], s.Address));
    }

    [SkippableFact]
    public void A_612_module_is_loaded_by_612s_module_finalize_and_equals_the_booted_bytes()
    {
        var truth = ModuleTruth.Linux612;
        Skip.IfNot(truth.HavePackage, truth.NoPackage);
        var ko = Ko("crc32c_generic", truth);
        var r = CliRunner.Run([.. (string[])["kernel", "module", truth.KernelPath, ko, "--sections", Truth("crc32c_generic.sections", truth), .. MachineOf(truth), "-o", Out("out.ko")]]);
        Assert.True(r.Exit == 0, r.Err);
        Assert.Contains("rules: Linux 6.12", r.Out, StringComparison.Ordinal);
        foreach (var fn in new[] { "callthunks_patch_module_calls", "apply_seal_endbr", "ftrace_module_init" })
            Assert.Contains(fn, r.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("apply_paravirt", r.Out, StringComparison.Ordinal);   // 6.12 has no .parainstructions
        Assert.Contains($"ftrace_module_init({Path.GetFullPath(ko)}): ", r.Out.Replace("\n", "", StringComparison.Ordinal), StringComparison.Ordinal);
        var elf = ElfFile.Parse(File.ReadAllBytes(Out("out.ko")), "out.ko");
        var saved = truth.Saved(Config, "crc32c_generic");
        Assert.NotEmpty(saved);
        foreach (var (name, (address, bytes)) in saved)
        {
            var s = elf.FindSection(name)!.Value;
            Assert.Equal(address, s.Address);
            Assert.True(elf.SectionBytes(s).Span.SequenceEqual(bytes), $"{name} differs from the booted bytes");
        }
    }

    [SkippableTheory]
    [InlineData("xz", new[] { "xz", "-k", "-T1" })]
    [InlineData("zst", new[] { "zstd", "-q", "-k" })]
    public void A_compressed_module_is_read_as_it_is(string ext, string[] compress)
    {
        SkipUnlessPackage();
        var plain = Out("tun.ko");
        File.Copy(Ko("tun"), plain);
        var psi = new ProcessStartInfo(compress[0]) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in compress[1..])
            psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(plain);
        Process? p;
        try
        {
            p = Process.Start(psi);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            p = null;
        }
        Skip.If(p is null, $"{compress[0]} is not installed");
        p!.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        var module = KernelModule.Open(plain + "." + ext);
        Assert.Equal(ext == "xz" ? PayloadCompression.Xz : PayloadCompression.Zstd, module.Compression);
        Assert.Equal("tun", module.Name);
        Assert.True(module.Elf.Bytes.Span.SequenceEqual(File.ReadAllBytes(plain)));
        var r = Module(plain + "." + ext, Truth("tun.sections"));
        Assert.True(r.Exit == 0, r.Err);
        var elf = ElfFile.Parse(File.ReadAllBytes(Out("out.ko")), "out.ko");
        var (address, bytes) = ModuleTruth.Linux61.Saved(Config, "tun")[".text"];
        Assert.Equal(address, elf.FindSection(".text")!.Value.Address);
        Assert.True(elf.SectionBytes(elf.FindSection(".text")!.Value).Span.SequenceEqual(bytes));
    }

    [SkippableFact]
    public void A_module_with_a_dependency_links_against_it_and_without_it_names_the_unresolved_symbols()
    {
        SkipUnlessPackage();
        var r = Module(Ko("xfs"), Truth("xfs.sections"), "--dep", $"{Ko("crc32c_generic")}={Truth("crc32c_generic.sections")}", "--dep", $"{Ko("libcrc32c")}={Truth("libcrc32c.sections")}");
        Assert.True(r.Exit == 0, r.Err);
        Assert.Contains("from modules 1", r.Out, StringComparison.Ordinal);
        File.Delete(Out("out.ko"));
        AssertRefused(Module(Ko("xfs"), Truth("xfs.sections")), "unresolved symbol(s): crc32c");
    }

    [SkippableTheory]
    [InlineData("6.1.0-50-amd64")]
    [InlineData("6.12.118+deb12-amd64")]
    public void Verify_module_is_clean_on_the_booted_text_and_catches_an_inline_hook(string release)
    {
        var truth = ModuleTruth.For(release);
        Skip.IfNot(truth.HavePackage, truth.NoPackage);
        var (address, bytes) = truth.Saved(Config, "tls")[".text"];
        var dump = Out("tls.text");
        File.WriteAllBytes(dump, bytes);
        string[] args = ["kernel", "verify", truth.KernelPath, "--module", Ko("tls", truth), "--sections", Truth("tls.sections", truth), "--text", dump, "--base", $"0x{address:x}", .. MachineOf(truth)];
        var clean = CliRunner.Run(args);
        Assert.True(clean.Exit == 0, clean.Out + clean.Err);
        Assert.Contains("unexplained 0", clean.Out, StringComparison.Ordinal);

        // An inline hook: a jmp rel32 written over the start of a function, outside every site.
        var hooked = (byte[])bytes.Clone();
        const int at = 0x100;
        hooked[at] = 0xe9;
        BinaryPrimitives.WriteInt32LittleEndian(hooked.AsSpan(at + 1), 0x12345);
        File.WriteAllBytes(dump, hooked);
        var r = CliRunner.Run([.. args, "--json"]);
        Assert.Equal(3, r.Exit);
        using var doc = System.Text.Json.JsonDocument.Parse(r.Out);
        var u = doc.RootElement.GetProperty("unexplained");
        Assert.Equal(1, u.GetArrayLength());
        Assert.Equal($"0x{address + at:x}", u[0].GetProperty("address").GetString());
        Assert.Contains("[tls]", u[0].GetProperty("symbol").GetString(), StringComparison.Ordinal);
        Assert.False(doc.RootElement.GetProperty("clean").GetBoolean());
    }

    [SkippableFact]
    public void An_unexplained_range_inside_an_instruction_is_disassembled_from_the_modules_function()
    {
        SkipUnlessPackage();
        var truth = ModuleTruth.Linux61;
        var image = truth.OpenKernel()!;
        var (kernel, cmdline) = truth.Kernel(Config, image);
        var loaded = Altpatch.Images.Verify.KernelModuleVerifier.Load(kernel, [(KernelModule.Open(Ko("tls")), KernelModuleSections.Read(Truth("tls.sections")))], cmdline);
        var (address, bytes) = truth.Saved(Config, "tls")[".text"];
        var hooked = (byte[])bytes.Clone();
        const int at = 0x105;                            // inside tls_getsockopt's "jne" at +0x43
        hooked[at] = 0xe9;
        BinaryPrimitives.WriteInt32LittleEndian(hooked.AsSpan(at + 1), 0x12345);
        var v = Altpatch.Images.Verify.KernelModuleVerifier.Verify(loaded, hooked, address, "tls.text");
        var range = Assert.Single(v.Unexplained);
        Assert.Equal(address + at, range.Address);
        Assert.StartsWith("tls_getsockopt+0x45/", range.Symbol, StringComparison.Ordinal);
        // decoded from the function's start, the listing starts at the instruction holding the range, not at its first byte
        // (which would read 02 00 00 48 8b as "add al, [rax]; …")
        Assert.StartsWith("jne ", range.ExpectedCode, StringComparison.Ordinal);
        Assert.StartsWith("jne ", range.FoundCode, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void Another_builds_module_is_refused_by_its_vermagic()
    {
        SkipUnlessPackage();
        Skip.IfNot(TestPaths.HaveSharedImages, TestPaths.NoSharedImages);
        var r = CliRunner.Run("kernel", "module", TestPaths.CloudAmd64, Ko("tun"), "--sections", Truth("tun.sections"), "--cpuinfo", Truth("cpuinfo"), "-o", Out("out.ko"));
        AssertRefused(r, "vermagic '6.1.0-50-amd64 SMP preempt mod_unload modversions' is not vmlinuz-6.1.0-50-cloud-amd64's");
    }

    [SkippableFact]
    public void A_section_missing_from_the_sections_file_is_named()
    {
        SkipUnlessPackage();
        var lines = File.ReadAllLines(Truth("tun.sections")).Where(l => !l.StartsWith(".data ", StringComparison.Ordinal));
        var f = Out("tun.sections");
        File.WriteAllLines(f, lines);
        AssertRefused(Module(Ko("tun"), f), "tun.sections gives no address for 1 section(s) the loader places: .data");
    }

    [SkippableFact]
    public void A_relocation_that_overflows_is_named()
    {
        SkipUnlessPackage();
        // .text where no module can be: in user space, more than 2 GiB from the kernel's symbols at 0xffffffff8…
        var lines = File.ReadAllLines(Truth("tun.sections")).Select(l => l.StartsWith(".text ", StringComparison.Ordinal) ? ".text 0x7f0000000000" : l);
        var f = Out("tun.sections");
        File.WriteAllLines(f, lines);
        var r = Module(Ko("tun"), f);
        AssertRefused(r, "the relocation overflows");
        Assert.Contains(".rela.text[", r.Err, StringComparison.Ordinal);
    }

    [SkippableFact]
    public void An_unknown_relocation_type_is_named()
    {
        SkipUnlessPackage();
        var bytes = File.ReadAllBytes(Ko("tun"));
        var elf = ElfFile.Parse(bytes, "tun.ko");
        var rela = elf.FindSection(".rela.text")!.Value;
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)rela.FileOffset + 8), 9);   // R_X86_64_GOTPCREL
        var f = Out("tun.ko");
        File.WriteAllBytes(f, bytes);
        AssertRefused(Module(f, Truth("tun.sections")), "unknown relocation type 9 (R_X86_64_GOTPCREL)");
    }

    [SkippableFact]
    public void A_truncated_or_corrupt_module_is_refused()
    {
        SkipUnlessPackage();
        var bytes = File.ReadAllBytes(Ko("tun"));
        var f = Out("tun.ko");
        File.WriteAllBytes(f, bytes[..(bytes.Length / 2)]);
        AssertRefused(Module(f, Truth("tun.sections")), "truncated?");
        var bad = (byte[])bytes.Clone();
        bad[0] = 0;
        File.WriteAllBytes(f, bad);
        AssertRefused(Module(f, Truth("tun.sections")), "not a kernel module");
    }

    [Fact]
    public void Help_names_the_options()
    {
        var r = CliRunner.Run("kernel", "module", "--help");
        Assert.Equal(0, r.Exit);
        foreach (var o in (string[])["--sections", "--dep", "--kernel-base", "--cpuinfo", "--cmdline", "--output"])
            Assert.Contains(o, r.Out, StringComparison.Ordinal);
    }
}
