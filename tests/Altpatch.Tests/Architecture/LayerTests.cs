using Altpatch.Text;
using Xunit.Abstractions;

namespace Altpatch.Tests.Architecture;

/// <summary>
/// The library's namespaces form layers with no cycle (docs/architecture.md): the compiled Altpatch assembly is
/// read with Mono.Cecil and every use of a type of another namespace (signatures, fields, base types, attributes,
/// IL) is checked against <see cref="LayerRules.Altpatch"/>.
/// </summary>
public sealed class LayerTests(ITestOutputHelper output)
{
    private static readonly Lazy<IReadOnlyList<TypeUse>> Uses = new(() => TypeUses.Read(typeof(PatchPlan).Assembly.Location));

    [Fact]
    public void No_namespace_uses_a_namespace_above_or_beside_it()
    {
        var violations = LayerRules.Altpatch.Check(Uses.Value);
        foreach (var group in Uses.Value.GroupBy(u => (u.FromNamespace, u.ToNamespace)).Where(g => g.Key.FromNamespace != g.Key.ToNamespace)
                     .OrderBy(g => g.Key.FromNamespace, StringComparer.Ordinal).ThenBy(g => g.Key.ToNamespace, StringComparer.Ordinal))
            output.WriteLine($"{group.Key.FromNamespace} -> {group.Key.ToNamespace}: {group.Count()} use(s), e.g. {group.First()}");
        Assert.True(violations.Count == 0,
            $"{violations.Count} use(s) break the layers of docs/architecture.md:\n{string.Join('\n', violations.Take(40))}");
    }

    [Fact]
    public void The_checker_reports_real_uses_that_a_rule_forbids_naming_type_and_member()
    {
        // The planners return PatchPlans (Text): declare that Patching may use only Sites and what is below it.
        var rules = LayerRules.Altpatch.With(new Layer("Altpatch.Patching", "Altpatch.Sites"));
        var violations = rules.Check(Uses.Value);
        output.WriteLine(string.Join('\n', violations.Take(10)));
        // a signature
        Assert.Contains(violations, v => v.Use == new TypeUse("Altpatch.Patching.Alternatives", "method Plan: return type", "Altpatch.Text.PatchPlan"));
        // a generic argument only: SmpLockRegistry keeps a Func<ICodeReader>
        Assert.Contains(violations, v => v.Use == new TypeUse("Altpatch.Patching.SmpLockRegistry", "field reader", "Altpatch.Text.ICodeReader"));
        var one = violations.First(v => v.Use.FromType == "Altpatch.Patching.Alternatives" && v.Use.ToType == "Altpatch.Text.PatchPlan");
        Assert.StartsWith("Altpatch.Patching.Alternatives (", one.ToString(), StringComparison.Ordinal);
        Assert.Contains("Altpatch.Patching may not use Altpatch.Text", one.Problem, StringComparison.Ordinal);
        // and only what the changed rule forbids: uses by Patching and by the layers above it, which reach less now
        Assert.All(violations, v => Assert.Contains(rules.LayerOf(v.Use.FromNamespace), (string[])["Altpatch.Patching", "Altpatch.Emit", "Altpatch.Hooks"]));
        Assert.Empty(LayerRules.Altpatch.Check(Uses.Value));
    }

    [Fact]
    public void The_checker_sees_a_use_that_only_a_method_body_makes()
    {
        // ProtectPoker.Apply calls CoreSync.TrySyncAllCores(); no signature or field of ProtectPoker names CoreSync.
        var rules = LayerRules.Altpatch.With(new Layer("Altpatch.Pokers", "Altpatch.Text"));
        var violations = rules.Check(Uses.Value);
        Assert.Contains(violations, v => v.Use == new TypeUse("Altpatch.Pokers.ProtectPoker", "method Apply: body", "Altpatch.Native.CoreSync"));
        Assert.DoesNotContain(Uses.Value, u => u.FromType == "Altpatch.Pokers.ProtectPoker" && u.ToType == "Altpatch.Native.CoreSync" && !u.Where.EndsWith(": body", StringComparison.Ordinal));
    }

    [Fact]
    public void A_namespace_without_a_layer_and_rules_with_a_cycle_are_refused()
    {
        var rules = new LayerRules([new("Altpatch") { Exact = true }, new("Altpatch.Text", "Altpatch")]);
        var v = Assert.Single(rules.Check([new TypeUse("Altpatch.Hooks.Hook", "method Install: body", "Altpatch.Text.PatchPlan")]));
        Assert.Equal("namespace Altpatch.Hooks has no layer", v.Problem);
        Assert.Equal("Altpatch.Text", rules.LayerOf("Altpatch.Text.Sub"));
        Assert.Empty(rules.Check([new TypeUse("Altpatch.Text.PatchPlan", "base type", "Altpatch.AltpatchException")]));
        Assert.Throws<ArgumentException>(() => new LayerRules([new("Altpatch.A", "Altpatch.B"), new("Altpatch.B", "Altpatch.A")]));
    }
}
