using Altpatch.Native;
using Altpatch.Sites;
using Altpatch.Text;

namespace Altpatch.Patching;

/// <summary>
/// The live state of a set of paravirt sites: the ops table, the active backend and whether the
/// sites are patched (the kernel's <c>pv_ops</c> plus what <c>apply_paravirt()</c> did to the text).
/// <see cref="SwitchTo"/> changes backend at run time: it plans every site from its original bytes
/// for the new backend (pure; an error here changes nothing), points the ops table's slots at the
/// new backend's implementations, then writes the whole plan through the poker, one poke per site.
/// If the poker fails (it writes nothing, or reverts what it wrote) the slots are set back, so the
/// state stays the old backend's. Both backends' code must stay in place while a switch runs.
/// </summary>
/// <remarks>
/// Why slots first: after the slot step every path that is not a patched site (indirect sites, sites
/// the new plan keeps indirect, code that calls through the table itself) already runs the new
/// backend, and the poke then moves the patched sites; when the poke is done nothing runs the old
/// backend. The kernel does the same at boot: <c>pv_ops</c> is filled in before <c>apply_paravirt</c>
/// reads it. Patching sites first would leave indirect calls on the old backend after the sites have
/// moved. Either way, a thread running the code during the switch may see some sites of each backend,
/// which is why both backends' implementations of an op must be interchangeable at any moment.
/// </remarks>
public sealed class ParavirtRuntime
{
    private readonly object gate = new();
    private readonly ParavirtSite[] sites;
    private readonly ITextPoker poker;
    private readonly Func<ICodeReader> reader;
    private List<ParavirtDecision> decisions = [];

    /// <summary>
    /// Takes charge of <paramref name="sites"/>, which call through <paramref name="table"/> and hold their
    /// original bytes, and points the table's slots at <paramref name="initial"/>'s implementations (the
    /// state before <c>apply_paravirt</c>: every site an indirect call, the table filled in). Nothing is
    /// written to code until <see cref="Apply"/> or <see cref="SwitchTo"/>.
    /// </summary>
    public ParavirtRuntime(OpsTable table, IReadOnlyList<ParavirtSite> sites, ParavirtBackend initial, ITextPoker poker,
                           ParavirtOptions? options = null, Func<ICodeReader>? reader = null)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(sites);
        ArgumentNullException.ThrowIfNull(initial);
        ArgumentNullException.ThrowIfNull(poker);
        Table = table;
        this.sites = [.. sites];
        this.poker = poker;
        Options = options ?? ParavirtOptions.Default;
        this.reader = reader ?? ProcessMemory.Snapshot;
        initial.FillSlots(table);
        Active = initial;
    }

    /// <summary>The ops table whose slots follow the active backend.</summary>
    public OpsTable Table { get; }

    /// <summary>The sites, in table order.</summary>
    public IReadOnlyList<ParavirtSite> Sites => sites;

    /// <summary>The options every plan is made with.</summary>
    public ParavirtOptions Options { get; }

    /// <summary>The backend the slots point at and, when <see cref="IsPatched"/>, the sites were patched for.</summary>
    public ParavirtBackend Active { get; private set; }

    /// <summary>True when the sites hold the active backend's code rather than their original indirect calls.</summary>
    public bool IsPatched { get; private set; }

    /// <summary>What each site became in the last <see cref="Apply"/> or <see cref="SwitchTo"/> (empty after <see cref="Restore"/>).</summary>
    public IReadOnlyList<ParavirtDecision> Decisions => decisions;

    /// <summary><c>apply_paravirt()</c>: patches every site for the active backend. Returns the plan written.</summary>
    public PatchPlan Apply() => SwitchTo(Active);

    /// <summary>
    /// Switches to <paramref name="backend"/>: plans every site from its original bytes, sets the slots,
    /// writes the plan (one poke per site). With <see cref="ParavirtOptions.NoReplace"/> only the slots
    /// change and the sites keep (or get back) their indirect calls. Returns the plan written.
    /// </summary>
    public PatchPlan SwitchTo(ParavirtBackend backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        lock (gate)
        {
            backend.CheckCanFill(Table, nameof(backend)); // before planning: FillSlots below must not fail
            var outcome = new List<ParavirtDecision>(sites.Length);
            var code = reader();
            var previous = IsPatched ? Active : null;
            var plan = Options.NoReplace
                ? Paravirt.PlanRestore(sites, code, previous, Options)
                : Paravirt.Plan(sites, backend, code, Options, previous, outcome);

            var oldSlots = new ulong[Table.Count];
            for (int i = 0; i < oldSlots.Length; i++) oldSlots[i] = Table[i];
            backend.FillSlots(Table);                 // 1. slots: indirect calls follow the new backend
            try
            {
                poker.Apply(plan);                    // 2. sites: one plan, one poke per site
            }
            catch
            {
                for (int i = 0; i < oldSlots.Length; i++) Table[i] = oldSlots[i];
                throw;
            }
            Active = backend;
            IsPatched = !Options.NoReplace;
            decisions = outcome;
            return plan;
        }
    }

    /// <summary>Gives every site back its original indirect call (the slots keep the active backend). Returns the plan written.</summary>
    public PatchPlan Restore()
    {
        lock (gate)
        {
            var plan = Paravirt.PlanRestore(sites, reader(), IsPatched ? Active : null, Options);
            poker.Apply(plan);
            IsPatched = false;
            decisions = [];
            return plan;
        }
    }
}
