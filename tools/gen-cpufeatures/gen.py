#!/usr/bin/env python3
"""Generate Altpatch's CPU feature tables from the Linux headers that define them.

Inputs (read, never edited):
  Linux 6.1  arch/x86/include/asm/cpufeatures.h   X86_FEATURE_* / X86_BUG_* numbers, cpuinfo names
             arch/x86/include/asm/cpufeature.h    enum cpuid_leafs: which CPUID leaf fills each word
             arch/x86/kernel/cpu/scattered.c      CPUID leaf/register/bit of the scattered features
  Linux 2.6.22 (optional; see README.md): linux-2.6.22/include/asm-i386/cpufeature.h,
             linux-2.6.22/include/asm-x86_64/cpufeature.h and, for cpuinfo names,
             linux-2.6.22/arch/i386/kernel/cpu/proc.c, linux-2.6.22/arch/x86_64/kernel/setup.c

Outputs (checked in, never edited by hand):
  src/Altpatch/Cpu/CpuFeature.g.cs          the CpuFeature enum
  src/Altpatch/Cpu/CpuFeatureTable.g.cs     names, descriptions, CPUID sources, word sources
  src/Altpatch/Cpu/FeatureNumbering.Linux2622.g.cs   the 2.6.22 numbering tables (only when the
                                                      2.6.22 inputs are present)

Usage: python3 tools/gen-cpufeatures/gen.py [--linux61 DIR_OR_TARBALL] [--check]
  --linux61   a Linux 6.1 source tree or the Debian linux-source-6.1 tarball
              (default: the three inputs committed in tools/gen-cpufeatures/linux-6.1/, copied verbatim from
              linux-source-6.1 6.1.176, with its version in VERSION)
  --check     do not write; exit 1 if the checked-in files differ from what would be generated
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT_DIR = os.path.join(REPO, "src", "Altpatch", "Cpu")

# C# names that the mechanical rule cannot produce (an identifier cannot start with a digit).
NAME_OVERRIDES = {
    "X86_FEATURE_3DNOW": "ThreeDNow",
    "X86_FEATURE_3DNOWEXT": "ThreeDNowExt",
    "X86_FEATURE_3DNOWPREFETCH": "ThreeDNowPrefetch",
}

# .NET-only aliases (not kernel macros): the names .NET and the Intel SDM use, which other Altpatch
# modules were first written against. Each is an enum alias with the macro's value.
DOTNET_ALIASES = {
    "Sse": "X86_FEATURE_XMM",
    "Sse2": "X86_FEATURE_XMM2",
    "Sse3": "X86_FEATURE_XMM3",
    "Sse4_1": "X86_FEATURE_XMM4_1",
    "Sse4_2": "X86_FEATURE_XMM4_2",
    "Lzcnt": "X86_FEATURE_ABM",
}

REGS = {"EAX": "Eax", "EBX": "Ebx", "ECX": "Ecx", "EDX": "Edx"}


# ---------------------------------------------------------------------------------------------
# reading the sources

class Source:
    """A Linux source tree or the Debian linux-source tarball."""

    def __init__(self, path: str):
        self.path = path
        self.tar = None
        if os.path.isfile(path):
            self.tar = tarfile.open(path)
            first = self.tar.next()
            self.prefix = first.name.split("/")[0] + "/"

    def read(self, rel: str) -> str:
        if self.tar is None:
            with open(os.path.join(self.path, rel), encoding="utf-8") as f:
                return f.read()
        member = self.tar.extractfile(self.prefix + rel)
        assert member is not None, rel
        return member.read().decode("utf-8")

    def version(self) -> str:
        try:
            mk = self.read("Makefile")
        except (OSError, KeyError):
            try:
                return self.read("VERSION").strip()   # the committed inputs carry their version here
            except (OSError, KeyError):
                return "6.1"
        v = {k: re.search(rf"^{k}\s*=\s*(\S*)", mk, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")}
        return ".".join(m.group(1) for m in v.values() if m)


@dataclass
class Feature:
    macro: str            # X86_FEATURE_POPCNT
    number: int           # word*32 + bit
    cpuinfo: str | None   # /proc/cpuinfo name, None when hidden ("")
    description: str
    is_bug: bool
    dotnet: str = ""
    sources: list[tuple[int, int, str, int]] = field(default_factory=list)  # leaf, subleaf, reg, bit
    note: str = ""        # e.g. "#ifdef CONFIG_X86_32"


DEFINE_RE = re.compile(r"^\s*#\s*define\s+(X86_(?:FEATURE|BUG)_\w+)\s+(.*)$")
FEATURE_NUM_RE = re.compile(r"^\(\s*(\d+)\s*\*\s*32\s*\+\s*(\d+)\s*\)")
BUG_NUM_RE = re.compile(r"^X86_BUG\(\s*(?:(\d+)\s*\*\s*32\s*\+\s*)?(\d+)\s*\)")
ALIAS_RE = re.compile(r"^(X86_(?:FEATURE|BUG)_\w+)\b")
COMMENT_RE = re.compile(r"/\*\s*(.*?)\s*\*/")


def mkcapflags_name(macro: str, comment: str) -> str | None:
    """The /proc/cpuinfo name exactly as arch/x86/kernel/cpu/mkcapflags.sh derives it."""
    m = re.match(r'^"([^"]*)"', comment)
    if m:
        return m.group(1).lower() or None
    return macro.split("_", 2)[2].lower()


def strip_quoted(comment: str) -> str:
    return re.sub(r'^"[^"]*"\s*', "", comment).strip()


def parse_cpufeatures(text: str) -> tuple[list[Feature], dict[str, str], int, int]:
    features: list[Feature] = []
    aliases: dict[str, str] = {}
    ncap = int(re.search(r"#define\s+NCAPINTS\s+(\d+)", text).group(1))
    nbug = int(re.search(r"#define\s+NBUGINTS\s+(\d+)", text).group(1))
    ifdef: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#ifdef") or s.startswith("#if ") or s.startswith("#ifndef"):
            ifdef.append(s)
            continue
        if s.startswith("#endif"):
            if ifdef:
                ifdef.pop()
            continue
        m = DEFINE_RE.match(line)
        if not m:
            continue
        macro, rest = m.group(1), m.group(2)
        if macro == "X86_BUG":
            continue
        if macro.startswith("X86_BUG(") or macro == "X86_BUG_H":
            continue
        cm = COMMENT_RE.search(rest)
        comment = cm.group(1) if cm else ""
        num = None
        is_bug = macro.startswith("X86_BUG_")
        fm = FEATURE_NUM_RE.match(rest)
        bm = BUG_NUM_RE.match(rest)
        if fm:
            num = int(fm.group(1)) * 32 + int(fm.group(2))
        elif bm:
            num = ncap * 32 + int(bm.group(1) or 0) * 32 + int(bm.group(2))
        else:
            am = ALIAS_RE.match(rest)
            if am:
                aliases[macro] = am.group(1)
                continue
            raise SystemExit(f"cannot parse: {line}")
        note = ""
        guards = [g for g in ifdef if "CPUFEATURES_H" not in g and "FEATURES_H" not in g]
        if guards:
            note = " ".join(guards)
        features.append(Feature(macro, num, mkcapflags_name(macro, comment), strip_quoted(comment), is_bug, note=note))
    return features, aliases, ncap, nbug


def parse_cpuid_leafs(text: str) -> list[tuple[str, tuple[int, int, str] | None]]:
    body = re.search(r"enum cpuid_leafs\s*\{(.*?)\};", text, re.S).group(1)
    words = []
    for raw in body.split(","):
        name = raw.strip().split("=")[0].strip()
        if not name or name == "NR_CPUID_WORDS":
            continue
        words.append((name, decode_leaf_name(name)))
    return words


def decode_leaf_name(name: str) -> tuple[int, int, str] | None:
    """CPUID_8000_0001_EDX -> (0x80000001, 0, 'EDX'); CPUID_7_1_EAX -> (7, 1, 'EAX'); CPUID_LNX_n -> None."""
    if name.startswith("CPUID_LNX_"):
        return None
    parts = name.split("_")[1:]
    reg = parts.pop()
    if len(parts) >= 2 and len(parts[0]) == 4 and len(parts[1]) == 4:
        leaf = int(parts[0] + parts[1], 16)
        sub = int(parts[2], 16) if len(parts) > 2 else 0
    else:
        leaf = int(parts[0], 16)
        sub = int(parts[1], 16) if len(parts) > 1 else 0
    return leaf, sub, reg


def parse_scattered(text: str) -> list[tuple[str, str, int, int, int]]:
    out = []
    for m in re.finditer(r"\{\s*(X86_FEATURE_\w+)\s*,\s*CPUID_(E[A-D]X)\s*,\s*(\d+)\s*,\s*(0x[0-9a-fA-F]+)\s*,\s*(\d+)\s*\}", text):
        out.append((m.group(1), m.group(2), int(m.group(3)), int(m.group(4), 16), int(m.group(5))))
    return out


# ---------------------------------------------------------------------------------------------
# naming

def dotnet_name(macro: str) -> str:
    if macro in NAME_OVERRIDES:
        return NAME_OVERRIDES[macro]
    is_bug = macro.startswith("X86_BUG_")
    stem = macro[len("X86_BUG_"):] if is_bug else macro[len("X86_FEATURE_"):]
    out = ""
    prev = ""
    for part in stem.split("_"):
        if not part:
            continue
        piece = part[0].upper() + part[1:].lower()
        if prev and prev[-1].isdigit() and part[0].isdigit():
            out += "_"
        out += piece
        prev = part
    name = ("Bug" + out) if is_bug else out
    if not name[0].isalpha():
        raise SystemExit(f"{macro}: needs an entry in NAME_OVERRIDES ({name} is not an identifier)")
    return name


# ---------------------------------------------------------------------------------------------
# output helpers

def xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cs_str(s: str | None) -> str:
    if s is None:
        return "null"
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fmt_num(n: int) -> str:
    return f"{n // 32}*32+{n % 32}"


def hex_leaf(leaf: int) -> str:
    return f"0x{leaf:08X}"


HEADER = """// <auto-generated>
// Generated by tools/gen-cpufeatures/gen.py from {src}.
// Do not edit: change the generator or its inputs and run it again.
// </auto-generated>
"""


def gen_enum(features: list[Feature], aliases: dict[str, str], version: str, ncap: int, nbug: int) -> str:
    by_macro = {f.macro: f for f in features}
    lines = [HEADER.format(src=f"Linux {version} arch/x86/include/asm/cpufeatures.h"), ""]
    lines.append("#pragma warning disable CA1707 // Xmm4_2, Avx512_4vnniw: kept close to the kernel's macro names")
    lines.append("#pragma warning disable CA1028 // ushort: the kernel's alt_instr.cpuid field is a u16")
    lines.append("#pragma warning disable CA1008 // zero is X86_FEATURE_FPU, a real feature, as in the kernel")
    lines.append("#pragma warning disable CA1069 // aliases of kernel macros share their value on purpose")
    lines.append("")
    lines.append("namespace Altpatch.Cpu;")
    lines.append("")
    lines.append("/// <summary>")
    lines.append(f"/// A Linux x86 CPU feature or bug bit, numbered as in Linux {version}'s <c>arch/x86/include/asm/cpufeatures.h</c>:")
    lines.append("/// <c>X86_FEATURE_*</c> = word*32 + bit, <c>X86_BUG_*</c> = NCAPINTS*32 + n")
    lines.append(f"/// (NCAPINTS = {ncap}, NBUGINTS = {nbug}). These are the numbers a 6.1 kernel image stores in the")
    lines.append("/// <c>cpuid</c> field of each <c>.altinstructions</c> entry.")
    lines.append("/// </summary>")
    lines.append("/// <remarks>Generated from the header; see <see cref=\"CpuFeatureInfo\"/> for names, sources and parsing.")
    lines.append("/// Some values have two enum names (the .NET aliases <c>Sse4_2</c> = <c>Xmm4_2</c> and so on), so")
    lines.append("/// <c>ToString()</c> may give either: print <see cref=\"CpuFeatureInfo.MacroName\"/> or")
    lines.append("/// <see cref=\"CpuFeatureInfo.DisplayName\"/> instead.</remarks>")
    lines.append("public enum CpuFeature : ushort")
    lines.append("{")
    for f in features:
        parts = [f"<c>{f.macro}</c> ({fmt_num(f.number)})"]
        parts.append(f"cpuinfo <c>{f.cpuinfo}</c>" if f.cpuinfo else "hidden from /proc/cpuinfo")
        summary = ", ".join(parts) + (f": {xml(f.description)}" if f.description else ".")
        if not summary.endswith("."):
            summary += "."
        if f.sources:
            srcs = "; ".join(f"CPUID {hex_leaf(l)}" + (f".{s}" if s else "") + f" {r}[{b}]" for l, s, r, b in f.sources)
            summary += f" Source: {srcs}."
        else:
            summary += " Linux-defined (not a CPUID bit)." if not f.is_bug else ""
        if f.note:
            summary += f" Defined only under <c>{xml(f.note)}</c>."
        lines.append(f"    /// <summary>{summary}</summary>")
        lines.append(f"    {f.dotnet} = {f.number},")
    for alias, target in aliases.items():
        t = by_macro[target]
        lines.append(f"    /// <summary><c>{alias}</c>: alias of <c>{target}</c> (<see cref=\"{t.dotnet}\"/>).</summary>")
        lines.append(f"    {dotnet_name(alias)} = {t.dotnet},")
    for alias, target in DOTNET_ALIASES.items():
        t = by_macro[target]
        lines.append(f"    /// <summary>.NET name of <c>{target}</c> (<see cref=\"{t.dotnet}\"/>); not a kernel macro.</summary>")
        lines.append(f"    {alias} = {t.dotnet},")
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


def gen_table(features: list[Feature], aliases: dict[str, str], words, version: str, ncap: int, nbug: int) -> str:
    lines = [HEADER.format(src=f"Linux {version} arch/x86/include/asm/cpufeatures.h, asm/cpufeature.h and kernel/cpu/scattered.c"), ""]
    lines.append("namespace Altpatch.Cpu;")
    lines.append("")
    lines.append("internal static partial class CpuFeatureTable")
    lines.append("{")
    lines.append(f"    /// <summary>Kernel version the table was generated from.</summary>")
    lines.append(f"    internal const string LinuxVersion = {cs_str(version)};")
    lines.append(f"    /// <summary>NCAPINTS: 32-bit capability words.</summary>")
    lines.append(f"    internal const int CapabilityWords = {ncap};")
    lines.append(f"    /// <summary>NBUGINTS: 32-bit bug words.</summary>")
    lines.append(f"    internal const int BugWords = {nbug};")
    lines.append("")
    lines.append("    /// <summary>Every X86_FEATURE_* and X86_BUG_* macro, ascending by number.</summary>")
    lines.append("    internal static readonly FeatureEntry[] Entries =")
    lines.append("    [")
    for f in features:
        srcs = ", ".join(f"new CpuidBit(0x{l:X}u, {s}u, CpuidRegister.{REGS[r]}, {b})" for l, s, r, b in f.sources)
        lines.append(
            f"        new({f.number}, {cs_str(f.macro)}, {cs_str(f.cpuinfo)}, {cs_str(f.description)}, "
            f"[{srcs}]),"
        )
    lines.append("    ];")
    lines.append("")
    lines.append("    /// <summary>Kernel macro aliases (#define X86_FEATURE_A X86_FEATURE_B): alias macro, number.</summary>")
    lines.append("    internal static readonly (string Macro, int Number)[] Aliases =")
    lines.append("    [")
    by_macro = {f.macro: f for f in features}
    for a, t in aliases.items():
        lines.append(f"        ({cs_str(a)}, {by_macro[t].number}),")
    lines.append("    ];")
    lines.append("")
    lines.append("    /// <summary>Per capability word: the CPUID leaf and register Linux copies into it whole")
    lines.append("    /// (enum cpuid_leafs), or null for a Linux-defined word (CPUID_LNX_n).</summary>")
    lines.append("    internal static readonly WordSource[] Words =")
    lines.append("    [")
    for i, (name, src) in enumerate(words):
        if src is None:
            lines.append(f"        new({i}, {cs_str(name)}, null),")
        else:
            l, s, r = src
            lines.append(f"        new({i}, {cs_str(name)}, new CpuidWord(0x{l:X}u, {s}u, CpuidRegister.{REGS[r]})),")
    lines.append("    ];")
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Linux 2.6.22

def parse_2622(path: str) -> tuple[int, list[tuple[int, str]]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ncap = int(re.search(r"#define\s+NCAPINTS\s+(\d+)", text).group(1))
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*#\s*define\s+(X86_FEATURE_\w+)\s+\(\s*(\d+)\s*\*\s*32\s*\+\s*(\d+)\s*\)", line)
        if m:
            out.append((int(m.group(2)) * 32 + int(m.group(3)), m.group(1)))
    return ncap, out


def parse_cap_flags(path: str) -> list[str | None]:
    """x86_cap_flags[] of 2.6.22: a C array of string literals and NULLs, one per bit."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    body = re.search(r"x86_cap_flags\[\]\s*=\s*\{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names: list[str | None] = []
    for tok in re.finditer(r'"([^"]*)"|NULL', body):
        names.append(tok.group(1) if tok.group(0) != "NULL" else None)
    return names


def gen_2622(dirpath: str) -> str | None:
    variants = []
    for key, hdr, flags in (("I386", "include/asm-i386/cpufeature.h", "arch/i386/kernel/cpu/proc.c"),
                            ("X8664", "include/asm-x86_64/cpufeature.h", "arch/x86_64/kernel/setup.c")):
        hp, fp = os.path.join(dirpath, hdr), os.path.join(dirpath, flags)
        if not os.path.exists(hp):
            return None
        ncap, feats = parse_2622(hp)
        names = parse_cap_flags(fp) if os.path.exists(fp) else None
        variants.append((key, hdr, flags if names is not None else None, ncap, feats, names))
    lines = [HEADER.format(src="Linux 2.6.22 include/asm-i386/cpufeature.h, include/asm-x86_64/cpufeature.h and the x86_cap_flags[] arrays"), ""]
    lines.append("namespace Altpatch.Cpu;")
    lines.append("")
    lines.append("public sealed partial class FeatureNumbering")
    lines.append("{")
    for key, hdr, flags, ncap, feats, names in variants:
        lines.append(f"    private static FeatureNumbering Create2622{key}() => Create(")
        lines.append(f"        \"Linux 2.6.22 ({'i386' if key == 'I386' else 'x86_64'})\", {ncap}, 0,")
        lines.append("        [")
        for num, macro in feats:
            cpuinfo = names[num] if names is not None and num < len(names) else None
            lines.append(f"            ({num}, {cs_str(macro)}, {cs_str(cpuinfo)}),")
        lines.append("        ]);")
        lines.append("")
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


def mkcapflags_name_611(comment: str) -> str | None:
    """From Linux 6.11 on, mkcapflags.sh names only the macros whose comment starts with a quoted name."""
    m = re.match(r'^"([^"]*)"', comment)
    return (m.group(1).lower() or None) if m else None


def gen_612(dirpath: str) -> str | None:
    """FeatureNumbering.Linux612.g.cs from linux-6.12/arch/x86/include/asm/cpufeatures.h (numbers, macros, cpuinfo names)."""
    hp = os.path.join(dirpath, "arch/x86/include/asm/cpufeatures.h")
    if not os.path.exists(hp):
        return None
    with open(hp, encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(dirpath, "VERSION"), encoding="utf-8") as f:
        version = f.read().strip()
    features, _aliases, ncap, nbug = parse_cpufeatures(text)
    comments = {}
    for line in text.splitlines():
        m = DEFINE_RE.match(line)
        if m:
            cm = COMMENT_RE.search(m.group(2))
            comments[m.group(1)] = cm.group(1) if cm else ""
    seen: dict[int, str] = {}
    for ft in features:
        if ft.number in seen:
            raise SystemExit(f"6.12: {ft.macro} and {seen[ft.number]} share {fmt_num(ft.number)}")
        seen[ft.number] = ft.macro
    features.sort(key=lambda ft: ft.number)
    lines = [HEADER.format(src=f"Linux {version} arch/x86/include/asm/cpufeatures.h"), ""]
    lines.append("namespace Altpatch.Cpu;")
    lines.append("")
    lines.append("public sealed partial class FeatureNumbering")
    lines.append("{")
    lines.append(f"    private static FeatureNumbering Create612() => Create(")
    lines.append(f"        \"Linux {version}\", {ncap}, {nbug},")
    lines.append("        [")
    for ft in features:
        lines.append(f"            ({ft.number}, {cs_str(ft.macro)}, {cs_str(mkcapflags_name_611(comments.get(ft.macro, '')))}),")
    lines.append("        ]);")
    lines.append("}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--linux61", default=None)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    src_path = args.linux61
    if src_path is None:
        for cand in (os.path.join(HERE, "linux-6.1"), "/work/ref/linux-source-6.1", "/usr/src/linux-source-6.1.tar.xz"):
            if os.path.exists(cand):
                src_path = cand
                break
    if src_path is None:
        print("no Linux 6.1 source: pass --linux61", file=sys.stderr)
        return 2
    src = Source(src_path)
    version = src.version()
    features, aliases, ncap, nbug = parse_cpufeatures(src.read("arch/x86/include/asm/cpufeatures.h"))
    words = parse_cpuid_leafs(src.read("arch/x86/include/asm/cpufeature.h"))
    if len(words) != ncap:
        raise SystemExit(f"enum cpuid_leafs has {len(words)} words, NCAPINTS is {ncap}")
    scattered = parse_scattered(src.read("arch/x86/kernel/cpu/scattered.c"))

    by_macro = {f.macro: f for f in features}
    for f in features:
        f.dotnet = dotnet_name(f.macro)
        if not f.is_bug:
            w, b = divmod(f.number, 32)
            if words[w][1] is not None:
                l, s, r = words[w][1]
                f.sources.append((l, s, r, b))
    for macro, reg, bit, leaf, sub in scattered:
        by_macro[macro].sources.append((leaf, sub, reg, bit))

    # sanity: unique numbers, unique .NET names, unique lookup names
    seen: dict[int, str] = {}
    for f in features:
        if f.number in seen:
            raise SystemExit(f"{f.macro} and {seen[f.number]} share {fmt_num(f.number)}")
        seen[f.number] = f.macro
    lower = {}
    for f in features:
        k = f.dotnet.lower()
        if k in lower:
            raise SystemExit(f".NET name clash: {f.macro} and {lower[k]} -> {f.dotnet}")
        lower[k] = f.macro
    features.sort(key=lambda f: f.number)

    outputs = {
        os.path.join(OUT_DIR, "CpuFeature.g.cs"): gen_enum(features, aliases, version, ncap, nbug),
        os.path.join(OUT_DIR, "CpuFeatureTable.g.cs"): gen_table(features, aliases, words, version, ncap, nbug),
    }
    g2622 = gen_2622(os.path.join(HERE, "linux-2.6.22"))
    if g2622 is not None:
        outputs[os.path.join(OUT_DIR, "FeatureNumbering.Linux2622.g.cs")] = g2622
    g612 = gen_612(os.path.join(HERE, "linux-6.12"))
    if g612 is not None:
        outputs[os.path.join(OUT_DIR, "FeatureNumbering.Linux612.g.cs")] = g612

    status = 0
    for path, text in outputs.items():
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if args.check:
            if old != text:
                print(f"out of date: {os.path.relpath(path, REPO)}", file=sys.stderr)
                status = 1
        elif old != text:
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            print(f"wrote {os.path.relpath(path, REPO)}")
    # report name collisions between lookup forms (documented precedence resolves them)
    cpuinfo = {}
    for f in features:
        if f.cpuinfo:
            cpuinfo.setdefault(f.cpuinfo, []).append(f.macro)
    for name, ms in cpuinfo.items():
        if len(ms) > 1:
            print(f"note: cpuinfo name {name!r} is shared by {ms}", file=sys.stderr)
    stems: dict[str, list[str]] = {}
    for f in features:
        stem = f.macro.split("_", 2)[2].lower()
        stems.setdefault(stem, []).append(f.macro)
        if stem in cpuinfo and f.macro not in cpuinfo[stem]:
            print(f"note: {f.macro}'s stem {stem!r} is the cpuinfo name of {cpuinfo[stem]}", file=sys.stderr)
    for stem, ms in stems.items():
        if len(ms) > 1:
            print(f"note: macro stem {stem!r} is shared by {ms}", file=sys.stderr)
    print(f"{len(features)} macros ({sum(1 for f in features if f.is_bug)} bugs), {len(aliases)} aliases, Linux {version}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
