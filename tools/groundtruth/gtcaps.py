#!/usr/bin/env python3
"""gtcaps.py - read boot_cpu_data.x86_capability[] (all feature and bug words) from a
ground-truth dump, decode it with cpufeatures.h, and compare with /proc/cpuinfo.

/proc/cpuinfo only shows features that have a name; synthetic / hidden ones
(X86_FEATURE_ALWAYS, RETPOLINE, RETHUNK, ... whose comment starts with "") are not
printed, yet alternatives depend on them. The dump holds the real words.

Usage:
  gtcaps.py VMLINUX DUMP [--kallsyms FILE] [--cpuinfo FILE] [--src LINUX_SRC] [--out FILE]

  VMLINUX     the extracted vmlinux (for the ELF class and the virt->phys mapping)
  DUMP        X.phys.zst (or raw); phys_base comes from the X.phys.json sidecar
  --kallsyms  kallsyms with data symbols (CONFIG_KALLSYMS_ALL, the cloud-amd64 image):
              boot_cpu_data is taken from it. Otherwise (686 image) boot_cpu_data is
              found by searching the dump for the cpuinfo vendor_id + model name strings
              at their offsets in struct cpuinfo_x86 (needs --cpuinfo).
  --cpuinfo   the guest's /proc/cpuinfo from the paired initramfs boot; the first
              processor's flags/bugs are compared with the named bits
  --src       kernel source (default $GT_LINUX_SRC or /work/ref/linux-source-6.1)
  --out       write the report there (default stdout)

  --delta     KASLR offset of the boot that printed --kallsyms (default: the dump's sidecar's,
              which is right when the kallsyms and the dump come from the same boot, i.e. a run
              dump; for a panic dump pass the run boot's offset)

Layout (CONFIG_X86_VMX_FEATURE_NAMES=y, NCAPINTS=22, NBUGINTS=2):
  6.1   x86-64: x86_capability at +40, x86_vendor_id at +136, x86_model_id at +152
        i386:   x86_capability at +36, x86_vendor_id at +132, x86_model_id at +148
  6.12  x86-64: x86_capability at +48, x86_vendor_id at +144, x86_model_id at +160
        (x86_vfm union first; checked with gdb "ptype /o struct cpuinfo_x86" on the -dbg vmlinux)
"""

import argparse
import os
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gtlib import Elf  # noqa: E402
from gtsites import kernel_version, load_symbols, read_maybe_zst  # noqa: E402

NCAPINTS, NBUGINTS = 22, 2
LAYOUT = {(2, "6.1"): dict(caps=40, vendor=136, model=152), (1, "6.1"): dict(caps=36, vendor=132, model=148),
          (2, "6.12"): dict(caps=48, vendor=144, model=160)}


def sidecar_for(dump):
    """<tag>.json beside <tag>.phys.zst (gtboot.py), or the first layout's X.phys.json."""
    import json
    d, b = os.path.dirname(dump), os.path.basename(dump)
    for c in (os.path.join(d, b.split(".")[0] + ".json"), dump + ".json",
              dump[:-4] + ".json" if dump.endswith(".zst") else None):
        if c and os.path.exists(c):
            return json.load(open(c))
    return None


def parse_cpufeatures(path, unquoted_shown=True):
    """bit -> (macro, shown_name or None), following arch/x86/kernel/cpu/mkcapflags.sh: up to 6.x
    a comment's quoted string names the flag ("" hides it) and a flag without one is shown as its
    lower-cased macro suffix; from 6.11 on (unquoted_shown=False) only flags whose comment starts
    with a quoted name are shown."""
    bits = {}
    for raw in open(path):
        line = raw.replace("\t", " ")
        m = re.match(r"^ *# *define *X86_(FEATURE|BUG)_(\w+) +(.*)$", line)
        if not m:
            continue
        kind, name, rest = m.groups()
        expr = rest.split("/*")[0].strip()
        if not expr:
            continue
        expr = re.sub(r"X86_BUG\(", f"({NCAPINTS * 32}+", expr)
        if not re.fullmatch(r"[0-9\s*+()]+", expr):
            continue
        bit = eval(expr)  # noqa: S307 - digits and + * ( ) only
        if kind == "BUG" and bit < NCAPINTS * 32:
            continue
        cm = re.match(r'.*/\* *("[^"]*").*\*/', line)
        value = cm.group(1).strip('"') if cm else (name if unquoted_shown else "")
        macro = f"X86_{kind}_{name}"
        if value == "":
            bits.setdefault(bit, (macro, None))  # hidden; a shown name elsewhere wins
            continue
        bits[bit] = (macro, value.lower())
    return bits


def cpuinfo_first(path):
    flags, bugs, vendor, model = set(), set(), None, None
    for line in open(path):
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "processor" and v != "0":
            break
        if k == "flags":
            flags = set(v.split())
        elif k == "bugs":
            bugs = set(v.split())
        elif k == "vendor_id":
            vendor = v
        elif k == "model name":
            model = v
    return flags, bugs, vendor, model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vmlinux")
    ap.add_argument("dump")
    ap.add_argument("--kallsyms")
    ap.add_argument("--cpuinfo")
    ap.add_argument("--delta")
    ap.add_argument("--src", default=os.environ.get("GT_LINUX_SRC"))
    ap.add_argument("--out")
    a = ap.parse_args()

    elf = Elf(a.vmlinux)
    ver = kernel_version(elf)
    line = "6.12" if ver >= (6, 10, 0) else "6.1"
    lay = LAYOUT[(elf.cls, line)]
    src = a.src or f"/work/ref/linux-source-{line}"
    dump = read_maybe_zst(a.dump)
    side = sidecar_for(a.dump)
    # byte 0 of the dump is the image's lowest link address (gtboot.py), the first layout's too
    link_base = int(side["link_virt_base"], 16) if side and "link_virt_base" in side else \
        elf.load_range()[2]
    phys_base = elf.load_range()[0]
    bits = parse_cpufeatures(os.path.join(src, "arch/x86/include/asm/cpufeatures.h"), line == "6.1")
    ci = cpuinfo_first(a.cpuinfo) if a.cpuinfo else None

    how = None
    base_off = None
    if a.kallsyms:
        delta = int(a.delta, 0) if a.delta else (int(side.get("kaslr_delta", "0x0"), 16) if side else 0)
        size = elf.load_range()[1] - phys_base
        ks = load_symbols(a.vmlinux, a.kallsyms, delta, None, size, link_base)
        va = ks.get("boot_cpu_data")
        if va:
            base_off = va - link_base
            how = f"kallsyms boot_cpu_data = 0x{va:x} (link address)"
    if base_off is None:
        if not ci or not ci[2] or not ci[3]:
            sys.exit("need --kallsyms with boot_cpu_data, or --cpuinfo with vendor_id/model name")
        vend = ci[2].encode().ljust(16, b"\0")[:16]
        model = ci[3].encode()
        cands = []
        for m in re.finditer(re.escape(vend), dump):
            o = m.start() - lay["vendor"]
            mid = dump[o + lay["model"]:o + lay["model"] + 64].split(b"\0")[0]
            if o >= 0 and mid == model:
                cands.append(o)
        if not cands:
            sys.exit("boot_cpu_data not found by string search")

        def score(o):
            w = struct.unpack_from(f"<{NCAPINTS + NBUGINTS}I", dump, o + lay["caps"])
            named = {bits[b][1] for b in bits if bits[b][1] and w[b // 32] >> (b % 32) & 1}
            return len(named ^ (ci[0] | ci[1]))
        cands.sort(key=score)
        base_off = cands[0]
        va = None
        for s in elf.loads():
            if s["paddr"] <= phys_base + base_off < s["paddr"] + s["memsz"]:
                va = phys_base + base_off - s["paddr"] + s["vaddr"]
        how = (f"string search (vendor_id+model_id), {len(cands)} candidate(s), "
               f"best at 0x{va:x}" if va is not None else "string search")

    words = struct.unpack_from(f"<{NCAPINTS + NBUGINTS}I", dump, base_off + lay["caps"])
    set_bits = [b for b in range(32 * (NCAPINTS + NBUGINTS)) if words[b // 32] >> (b % 32) & 1]

    out = []
    p = out.append
    p("# boot_cpu_data.x86_capability[] read from the ground-truth dump (gtcaps.py)")
    if side:
        p(f"# boot: cpu={side.get('cpu')} smp={side.get('smp')} accel={side.get('accel')} "
          f"dump={os.path.basename(a.dump)}")
    p(f"# located by: {how}")
    p("# words (index: hex), 0..21 = features, 22..23 = bugs:")
    for i in range(0, NCAPINTS + NBUGINTS, 8):
        p("words " + " ".join(f"{j}:{words[j]:08x}" for j in range(i, min(i + 8, NCAPINTS + NBUGINTS))))
    p("# set bits: bit  macro  [cpuinfo name, or - when hidden]")
    for b in set_bits:
        macro, shown = bits.get(b, (f"unknown_bit_{b // 32}*32+{b % 32}", None))
        p(f"bit {b // 32:2d}*32+{b % 32:2d}  {macro:<36s} {shown or '-'}")
    if ci:
        named_f = {bits[b][1] for b in set_bits if b in bits and bits[b][1] and b < NCAPINTS * 32}
        named_b = {bits[b][1] for b in set_bits if b in bits and bits[b][1] and b >= NCAPINTS * 32}
        p("# comparison with /proc/cpuinfo (processor 0) of the paired initramfs boot:")
        p("flags only in dump: " + " ".join(sorted(named_f - ci[0])))
        p("flags only in cpuinfo: " + " ".join(sorted(ci[0] - named_f)))
        p("bugs only in dump: " + " ".join(sorted(named_b - ci[1])))
        p("bugs only in cpuinfo: " + " ".join(sorted(ci[1] - named_b)))
        hidden = [bits[b][0] for b in set_bits if b in bits and not bits[b][1]]
        p("hidden (not in cpuinfo) set: " + " ".join(hidden))
    text = "\n".join(out) + "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
