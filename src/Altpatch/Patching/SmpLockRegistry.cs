using Altpatch.Native;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Patching;

/// <summary>
/// The registered lock tables and the current mode (the kernel's <c>smp_alt_modules</c> list and
/// <c>uniproc_patched</c>). <see cref="Add"/> registers a module (<c>alternatives_smp_module_add</c>;
/// in UP mode its prefixes are patched away at once), <see cref="Remove"/> forgets one that goes
/// away (<c>alternatives_smp_module_del</c>), <see cref="SwitchToUp"/> and <see cref="SwitchToSmp"/>
/// patch every registered site (<c>alternatives_enable_smp</c>): each one <see cref="SmpLocks"/> plan
/// written through the poker, one 1-byte poke per site. Calls are serialised (the kernel's text_mutex).
/// </summary>
public sealed class SmpLockRegistry
{
    private readonly object gate = new();
    private readonly List<SmpLockModule> modules = [];
    private readonly ITextPoker poker;
    private readonly Func<ICodeReader> reader;

    /// <summary>Creates an empty registry in SMP mode that writes through <paramref name="poker"/>.</summary>
    public SmpLockRegistry(ITextPoker poker, SmpLockOptions? options = null, Func<ICodeReader>? reader = null)
    {
        ArgumentNullException.ThrowIfNull(poker);
        this.poker = poker;
        Options = options ?? SmpLockOptions.Default;
        this.reader = reader ?? ProcessMemory.Snapshot;
    }

    /// <summary>The options every plan is made with.</summary>
    public SmpLockOptions Options { get; }

    /// <summary>The current mode (stays <see cref="SmpMode.Smp"/> with <see cref="SmpLockOptions.NoReplace"/>).</summary>
    public SmpMode Mode { get; private set; } = SmpMode.Smp;

    /// <summary>The registered modules, in registration order (a snapshot).</summary>
    public IReadOnlyList<SmpLockModule> Modules
    {
        get { lock (gate) return [.. modules]; }
    }

    /// <summary>
    /// Registers <paramref name="module"/>. Throws <see cref="SmpLockException"/> when a module of that name is
    /// registered or its text overlaps a registered module's, and <see cref="PatchException"/> for a bad
    /// site (nothing registered then). In UP mode its sites are patched to UP; returns that plan (else empty).
    /// </summary>
    public PatchPlan Add(SmpLockModule module)
    {
        ArgumentNullException.ThrowIfNull(module);
        lock (gate)
        {
            if (string.IsNullOrWhiteSpace(module.Name))
                throw new SmpLockException(module.Name ?? "", "a module needs a name");
            if (module.TextEnd <= module.TextStart)
                throw new SmpLockException(module.Name, $"empty text range 0x{module.TextStart:x}-0x{module.TextEnd:x}");
            foreach (var m in modules)
            {
                if (m.Name == module.Name)
                    throw new SmpLockException(module.Name, "is already registered");
                if (m.Overlaps(module.TextStart, module.TextEnd))
                    throw new SmpLockException(module.Name, $"text 0x{module.TextStart:x}-0x{module.TextEnd:x} overlaps module '{m.Name}' (0x{m.TextStart:x}-0x{m.TextEnd:x})");
            }
            // Plan for the current mode even in SMP mode: that validates every site before registering.
            var plan = SmpLocks.Plan(module, Mode, reader(), Options);
            poker.Apply(plan);
            modules.Add(module);
            return plan;
        }
    }

    /// <summary>
    /// Forgets the module named <paramref name="name"/> (it is going away: its code is not touched, as the
    /// kernel does on module unload). Returns false when no such module is registered.
    /// </summary>
    public bool Remove(string name)
    {
        lock (gate)
        {
            int i = modules.FindIndex(m => m.Name == name);
            if (i < 0) return false;
            modules.RemoveAt(i);
            return true;
        }
    }

    /// <summary>Patches every registered lock prefix to the UP byte. Returns the plan written (empty with noreplace-smp).</summary>
    public PatchPlan SwitchToUp() => Switch(SmpMode.Up);

    /// <summary>Restores every registered lock prefix. Returns the plan written.</summary>
    public PatchPlan SwitchToSmp() => Switch(SmpMode.Smp);

    private PatchPlan Switch(SmpMode mode)
    {
        lock (gate)
        {
            var plan = SmpLocks.Plan(modules, mode, reader(), Options);
            poker.Apply(plan);
            if (!Options.NoReplace) Mode = mode;
            return plan;
        }
    }
}
