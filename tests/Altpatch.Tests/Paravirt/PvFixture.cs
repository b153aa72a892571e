using Altpatch.Cpu;
using Altpatch.Emit;
using Altpatch.Patching;
using Altpatch.Sites;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Altpatch.Tests.Paravirt;

/// <summary>
/// Emitted code with paravirt sites: one small function per site (<c>f(x)</c>: x in rdi, the site, return rax),
/// the native and hypervisor backends emitted into the same builder, and hand-written references.
/// </summary>
internal sealed class PvFixture : IDisposable
{
    public CodeBuilder Cb { get; } = new();
    public OpsTable Table { get; }
    public NativeBackend Native { get; }
    public HypervisorBackend Hypervisor { get; }
    public CpuFeatures Cpu { get; } = CpuFeatures.Detect();

    public PvFixture()
    {
        Table = Cb.CreateOpsTable(ParavirtOps.Count);
        Native = NativeBackend.Emit(Cb, Cpu);
        Hypervisor = HypervisorBackend.Emit(Cb, Native);
        Native.FillSlots(Table);
    }

    /// <summary>A function around one paravirt call site: <c>sub rsp, 8; [before]; site; [after]; add rsp, 8; ret</c>. Returns (function, site index).</summary>
    public (ulong Fn, int Site) Site(int type, Clobbers clobbers, int length = 6, Action<Assembler>? before = null, Action<Assembler>? after = null)
    {
        int site = -1;
        ulong fn = Cb.Function($"site{Cb.ParavirtSites.Count}", b =>
        {
            b.Code(a => { a.sub(rsp, 8); before?.Invoke(a); });
            site = b.ParavirtCall(type, clobbers, length);
            b.Code(a => { after?.Invoke(a); a.add(rsp, 8); a.ret(); });
        });
        return (fn, site);
    }

    /// <summary>A function that ends with a jump op's site: <c>[before]; jmp [rip+slot]</c>.</summary>
    public (ulong Fn, int Site) JumpSite(int type, int length = 6, Action<Assembler>? before = null)
    {
        int site = -1;
        ulong fn = Cb.Function($"site{Cb.ParavirtSites.Count}", b =>
        {
            if (before is not null) b.Code(before);
            site = b.ParavirtJump(type, length);
        });
        return (fn, site);
    }

    public ulong Hand(string name, Action<Assembler> body) => Cb.Function(name, b => b.Code(a => { body(a); a.ret(); }));

    public byte[] SiteBytes(int site)
    {
        var s = Cb.ParavirtSites[site];
        return Run.Read(s.Address, s.Length);
    }

    public byte[] Text() => Run.Text(Cb);

    /// <summary>The target of the call/jmp rel32 in <paramref name="bytes"/> decoded at <paramref name="address"/>.</summary>
    public static (Mnemonic Mnemonic, ulong Target, int Length) Decode(byte[] bytes, ulong address)
    {
        var d = Decoder.Create(64, new ByteArrayCodeReader(bytes), address);
        d.Decode(out var insn);
        return (insn.Mnemonic, insn.NearBranchTarget, insn.Length);
    }

    public void Dispose()
    {
        Hypervisor.Dispose();
        Cb.Dispose();
    }
}
