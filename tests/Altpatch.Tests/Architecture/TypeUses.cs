using Mono.Cecil;

namespace Altpatch.Tests.Architecture;

/// <summary>
/// One use of a type by another type of the same assembly, found in its compiled metadata and IL: who uses it
/// (<see cref="FromType"/>, and where: a signature, a field, a base type, an attribute, a method body) and which
/// type is used (<see cref="ToType"/>). Nested and compiler-generated types (closures, iterators, state machines)
/// count as their outermost declaring type.
/// </summary>
/// <param name="FromType">Full name of the using type (outermost declaring type).</param>
/// <param name="Where">Where the use is, e.g. "method Plan: parameter", "method Apply: body", "base type".</param>
/// <param name="ToType">Full name of the used type (outermost declaring type).</param>
internal readonly record struct TypeUse(string FromType, string Where, string ToType)
{
    /// <summary>The namespace of <see cref="FromType"/>.</summary>
    public string FromNamespace => NamespaceOf(FromType);

    /// <summary>The namespace of <see cref="ToType"/>.</summary>
    public string ToNamespace => NamespaceOf(ToType);

    private static string NamespaceOf(string fullName)
    {
        int dot = fullName.LastIndexOf('.');
        return dot < 0 ? "" : fullName[..dot];
    }

    /// <inheritdoc />
    public override string ToString() => $"{FromType} ({Where}) uses {ToType}";
}

/// <summary>
/// Reads every type-to-type use inside one assembly with Mono.Cecil: base types and interfaces, generic
/// constraints, fields, properties, events, method signatures (return, parameters, overrides), custom attributes
/// (their type, <c>typeof</c> and enum arguments) on all of these, and method bodies (locals, catch types, and
/// every type, method, field and call-site operand of the IL). Only types of the assembly itself whose namespace
/// starts with the given root are reported.
/// </summary>
/// <remarks>
/// What the compiler leaves no trace of cannot be seen: a <c>const</c> (or enum member) of another namespace used
/// only for its value is copied into the IL as a literal, and <c>nameof</c> and <c>&lt;see cref&gt;</c> are text.
/// Everything else a namespace can do with another (call it, store it, derive from it, catch it) is in the IL.
/// </remarks>
internal static class TypeUses
{
    /// <summary>Every use between types of <paramref name="assemblyPath"/> in namespaces under <paramref name="root"/>.</summary>
    public static IReadOnlyList<TypeUse> Read(string assemblyPath, string root = "Altpatch")
    {
        using var assembly = AssemblyDefinition.ReadAssembly(assemblyPath);
        var uses = new HashSet<TypeUse>();
        foreach (var module in assembly.Modules)
        {
            foreach (var type in module.Types)
                Visit(new Collector(module, root, uses), type);
        }
        return [.. uses.OrderBy(u => u.FromType, StringComparer.Ordinal).ThenBy(u => u.ToType, StringComparer.Ordinal).ThenBy(u => u.Where, StringComparer.Ordinal)];
    }

    private static void Visit(Collector c, TypeDefinition type)
    {
        var from = Outermost(type);
        if (!c.InScope(from))
            return;
        c.From = from.FullName;
        c.Attributes(type.CustomAttributes, "type attribute");
        if (type.BaseType is { } b)
            c.Type(b, "base type");
        foreach (var i in type.Interfaces)
        {
            c.Type(i.InterfaceType, "interface");
            c.Attributes(i.CustomAttributes, "interface attribute");
        }
        c.GenericParameters(type.GenericParameters, "type generic constraint");
        foreach (var f in type.Fields)
        {
            c.Type(f.FieldType, $"field {f.Name}");
            c.Attributes(f.CustomAttributes, $"field {f.Name}: attribute");
        }
        foreach (var p in type.Properties)
        {
            c.Type(p.PropertyType, $"property {p.Name}");
            c.Attributes(p.CustomAttributes, $"property {p.Name}: attribute");
            foreach (var pa in p.Parameters)
                c.Type(pa.ParameterType, $"property {p.Name}: index parameter");
        }
        foreach (var e in type.Events)
        {
            c.Type(e.EventType, $"event {e.Name}");
            c.Attributes(e.CustomAttributes, $"event {e.Name}: attribute");
        }
        foreach (var m in type.Methods)
            Method(c, m);
        foreach (var nested in type.NestedTypes)
            Visit(c, nested);
    }

    private static void Method(Collector c, MethodDefinition m)
    {
        string name = $"method {m.Name}";
        c.Type(m.ReturnType, $"{name}: return type");
        c.Attributes(m.CustomAttributes, $"{name}: attribute");
        c.Attributes(m.MethodReturnType.CustomAttributes, $"{name}: return attribute");
        foreach (var p in m.Parameters)
        {
            c.Type(p.ParameterType, $"{name}: parameter {p.Name}");
            c.Attributes(p.CustomAttributes, $"{name}: parameter {p.Name} attribute");
        }
        c.GenericParameters(m.GenericParameters, $"{name}: generic constraint");
        foreach (var o in m.Overrides)
            c.Member(o, $"{name}: overrides");
        if (!m.HasBody)
            return;
        string body = $"{name}: body";
        foreach (var v in m.Body.Variables)
            c.Type(v.VariableType, $"{name}: local");
        foreach (var h in m.Body.ExceptionHandlers)
        {
            if (h.CatchType is { } t)
                c.Type(t, $"{name}: catch");
        }
        foreach (var i in m.Body.Instructions)
        {
            switch (i.Operand)
            {
                case TypeReference t:
                    c.Type(t, body);
                    break;
                case MemberReference r:
                    c.Member(r, body);
                    break;
                case CallSite s:
                    c.Type(s.ReturnType, body);
                    foreach (var p in s.Parameters)
                        c.Type(p.ParameterType, body);
                    break;
                default:
                    break;
            }
        }
    }

    private static TypeReference Outermost(TypeReference t)
    {
        while (t.DeclaringType is { } d)
            t = d;
        return t;
    }

    /// <summary>Adds the uses of one type (its <see cref="From"/>) as they are found.</summary>
    private sealed class Collector(ModuleDefinition module, string root, HashSet<TypeUse> uses)
    {
        public string From { get; set; } = "";

        public bool InScope(TypeReference outermost) =>
            (outermost.Namespace == root || outermost.Namespace.StartsWith(root + ".", StringComparison.Ordinal))
            && (outermost is TypeDefinition || outermost.Scope == module);

        public void Type(TypeReference? t, string where)
        {
            switch (t)
            {
                case null:
                case GenericParameter:
                    return;
                case GenericInstanceType g:
                    Type(g.ElementType, where);
                    foreach (var a in g.GenericArguments)
                        Type(a, where);
                    return;
                case FunctionPointerType f:
                    Type(f.ReturnType, where);
                    foreach (var p in f.Parameters)
                        Type(p.ParameterType, where);
                    return;
                case RequiredModifierType r:
                    Type(r.ModifierType, where);
                    Type(r.ElementType, where);
                    return;
                case OptionalModifierType o:
                    Type(o.ModifierType, where);
                    Type(o.ElementType, where);
                    return;
                case TypeSpecification s:        // arrays, pointers, by-refs, pinned, sentinels
                    Type(s.ElementType, where);
                    return;
                default:
                    var outer = Outermost(t);
                    if (InScope(outer) && outer.FullName != From)
                        uses.Add(new TypeUse(From, where, outer.FullName));
                    return;
            }
        }

        public void Member(MemberReference r, string where)
        {
            Type(r.DeclaringType, where);
            switch (r)
            {
                case GenericInstanceMethod gm:
                    Member(gm.ElementMethod, where);
                    foreach (var a in gm.GenericArguments)
                        Type(a, where);
                    break;
                case MethodReference m:
                    Type(m.ReturnType, where);
                    foreach (var p in m.Parameters)
                        Type(p.ParameterType, where);
                    break;
                case FieldReference f:
                    Type(f.FieldType, where);
                    break;
                default:
                    break;
            }
        }

        public void GenericParameters(IEnumerable<GenericParameter> parameters, string where)
        {
            foreach (var g in parameters)
            {
                foreach (var k in g.Constraints)
                    Type(k.ConstraintType, where);
                Attributes(g.CustomAttributes, where);
            }
        }

        public void Attributes(IEnumerable<CustomAttribute> attributes, string where)
        {
            foreach (var a in attributes)
            {
                Type(a.AttributeType, where);
                foreach (var arg in a.ConstructorArguments)
                    Argument(arg, where);
                foreach (var n in a.Properties.Concat(a.Fields))
                    Argument(n.Argument, where);
            }
        }

        private void Argument(CustomAttributeArgument arg, string where)
        {
            Type(arg.Type, where);                  // an enum argument's type
            switch (arg.Value)
            {
                case TypeReference t:               // typeof(...)
                    Type(t, where);
                    break;
                case CustomAttributeArgument inner: // boxed in an object parameter
                    Argument(inner, where);
                    break;
                case CustomAttributeArgument[] array:
                    foreach (var e in array)
                        Argument(e, where);
                    break;
                default:
                    break;
            }
        }
    }
}
