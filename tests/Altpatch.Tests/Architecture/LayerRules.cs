namespace Altpatch.Tests.Architecture;

/// <summary>A layer: a namespace (and the namespaces under it that have no layer of their own) and the layers it uses directly.</summary>
/// <param name="Namespace">The namespace, e.g. <c>Altpatch.Text</c>.</param>
/// <param name="Uses">The namespaces of the layers it may use directly; what those may use, it may use too.</param>
internal sealed record Layer(string Namespace, params string[] Uses)
{
    /// <summary>True when the layer is its namespace alone: the root <c>Altpatch</c>, whose sub-namespaces each need a layer.</summary>
    public bool Exact { get; init; }
}

/// <summary>A use of a layer that the rules do not allow, or a namespace the rules do not place.</summary>
/// <param name="Use">The use, with the types and where it is.</param>
/// <param name="Problem">What is wrong, in words.</param>
internal readonly record struct LayerViolation(TypeUse Use, string Problem)
{
    /// <inheritdoc />
    public override string ToString() => $"{Use}: {Problem}";
}

/// <summary>
/// Which namespace may use which: each layer may use the layers below it (those it names, and what they may use),
/// never one above or beside it. A namespace belongs to the layer of its longest namespace prefix; a namespace no
/// layer covers is a violation too, so a new namespace must be given its place (here and in docs/architecture.md).
/// </summary>
internal sealed class LayerRules
{
    private readonly Dictionary<string, Layer> layers;
    private readonly Dictionary<string, HashSet<string>> allowed = new(StringComparer.Ordinal);

    /// <summary>Rules from layers, each naming layers given before it (so the rules have no cycle).</summary>
    public LayerRules(IEnumerable<Layer> layers)
    {
        this.layers = new Dictionary<string, Layer>(StringComparer.Ordinal);
        foreach (var l in layers)
        {
            var reach = new HashSet<string>(StringComparer.Ordinal);
            foreach (var u in l.Uses)
            {
                if (!allowed.TryGetValue(u, out var below))
                    throw new ArgumentException($"layer {l.Namespace} uses {u}, which is not a layer given before it");
                reach.Add(u);
                reach.UnionWith(below);
            }
            this.layers.Add(l.Namespace, l);
            allowed.Add(l.Namespace, reach);
        }
    }

    /// <summary>
    /// Altpatch's layers, bottom first (docs/architecture.md draws them). <c>Altpatch.Hooks</c> (native function hooks)
    /// sits on top of the live stack.
    /// </summary>
    public static LayerRules Altpatch { get; } = new(
    [
        new("Altpatch") { Exact = true },
        new("Altpatch.Cpu", "Altpatch"),
        new("Altpatch.Code", "Altpatch.Cpu"),
        new("Altpatch.Sites", "Altpatch.Code"),
        new("Altpatch.Text", "Altpatch.Sites"),
        new("Altpatch.Native", "Altpatch.Text"),
        new("Altpatch.Pokers", "Altpatch.Native"),
        new("Altpatch.Patching", "Altpatch.Pokers"),
        new("Altpatch.Emit", "Altpatch.Patching"),
        new("Altpatch.Hooks", "Altpatch.Emit"),
        new("Altpatch.Images", "Altpatch.Text"),
        new("Altpatch.Images.Boot", "Altpatch.Images"),
        new("Altpatch.Images.Verify", "Altpatch.Images.Boot"),
    ]);

    /// <summary>The layers, in the order given.</summary>
    public IEnumerable<Layer> Layers => layers.Values;

    /// <summary>The same rules with one layer's uses replaced (to show that the checker finds a use then forbidden).</summary>
    public LayerRules With(Layer replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        return new LayerRules(layers.Values.Select(l => l.Namespace == replacement.Namespace ? replacement : l));
    }

    /// <summary>The layer a namespace belongs to: its longest prefix that is a layer (other than an exact layer's own), or null.</summary>
    public string? LayerOf(string ns)
    {
        for (string? n = ns; !string.IsNullOrEmpty(n); n = n.LastIndexOf('.') is var dot and > 0 ? n[..dot] : null)
        {
            if (layers.TryGetValue(n, out var layer) && (!layer.Exact || n == ns))
                return n;
        }
        return null;
    }

    /// <summary>Every use that crosses from one layer into a layer it may not use, and every use from or to an unplaced namespace.</summary>
    public IReadOnlyList<LayerViolation> Check(IEnumerable<TypeUse> uses)
    {
        var violations = new List<LayerViolation>();
        foreach (var u in uses)
        {
            string? from = LayerOf(u.FromNamespace), to = LayerOf(u.ToNamespace);
            if (from is null)
                violations.Add(new(u, $"namespace {u.FromNamespace} has no layer"));
            else if (to is null)
                violations.Add(new(u, $"namespace {u.ToNamespace} has no layer"));
            else if (from != to && !allowed[from].Contains(to))
                violations.Add(new(u, $"{from} may not use {to} (it may use {Describe(from)})"));
        }
        return violations;
    }

    private string Describe(string layer) =>
        allowed[layer].Count == 0 ? "nothing" : string.Join(", ", allowed[layer].Order(StringComparer.Ordinal));
}
