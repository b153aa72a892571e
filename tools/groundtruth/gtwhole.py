#!/usr/bin/env python3
"""gtwhole.py - classify every differing byte of the kernel text in every ground-truth dump.

For each dump (CACHE/<image>/<cfg>/run.phys.zst and panic.phys.zst; gtboot.py), compares the
executable sections (run: .text, the rest is freed; panic: .text, .init.text, .exit.text) with
  (a) the image's vmlinux, relocated for the dump's KASLR offset (gtreloc.py), and
  (b) Altpatch's `kernel patch` output for the configuration's cpuinfo and -smp (6.1 images only:
      6.12 is refused for now; no --cmdline yet, so for a non-default command line (b) shows what
      the command line changes), relocated the same way,
and classifies every differing byte by the boot-time writers whose sites cover it (gtsites.py):
alt para lock retpoline return call endbr runtime_const mcount jump static_call sct callthunk,
several joined by '+' (alt+para: a paravirt call inside an ALTERNATIVE), 'other' when none does.
It also decodes the state of every jump label, static call site and static call trampoline and
compares it with the state the vmlinux's initial key values give (jump_label_init(),
static_call_init()): what differs was decided by the running kernel (initcalls, drivers).

Usage:
  gtwhole.py [--cache DIR] [--image NAME]... [--config REGEX] [--tag run|panic] [--no-altpatch]
             [--cli CMD] [--report OUT.md] [--json-dir DIR] [--jobs N]

  Per dump it writes CACHE/<image>/<cfg>/<tag>.whole.json (classes, 'other' runs with symbol,
  bytes and disassembly, jump/static-call states) and prints one summary line. --report writes the
  aggregated tables (Markdown) for notes/groundtruth-wholetext.md: bytes per class per dump, the
  jump-label keys and static calls whose state differs from the initial one, which of them differ
  between the panic and the run dump of the same configuration (the dynamic ones), and what each
  kernel command line changes against the same CPU/-smp with the default command line.
"""

import argparse
import collections
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402
from gtsites import NOPS, Kernel, SiteIndex, load_symbols, read_maybe_zst  # noqa: E402
from gtwtext import diff_runs  # noqa: E402

DATA = os.path.join(REPO, "tests", "data", "groundtruth")
DEBS = os.environ.get("GT_DEBS", "/work/debs/x")
PATCH_CLASSES = {"alt", "para", "lock", "retpoline", "return", "call", "endbr", "runtime_const", "callthunk"}
OTHER_WRITERS = {"mcount", "jump", "static_call", "sct"}


def system_map(image):
    for p in (os.path.join(DEBS, f"linux-image-{image}-dbg", "usr", "lib", "debug", "boot", f"System.map-{image}"),
              os.path.join(DEBS, f"linux-image-{image}-unsigned", "boot", f"System.map-{image}")):
        if os.path.exists(p) and os.path.getsize(p) > 1000:
            return p
    return None


def disasm(code, vaddr, is64):
    if not code:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(code)
        f.flush()
        try:
            r = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64" if is64 else "i386",
                                f"--adjust-vma={vaddr:#x}", f.name], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return code.hex()
    out = []
    for ln in r.stdout.splitlines():
        p = ln.split("\t")
        if len(p) >= 3 and p[0].strip().endswith(":"):
            out.append(p[2].strip())
    return "; ".join(out)


class ImageCtx:
    """Per image: the vmlinux, its symbols at link addresses and the site index."""

    def __init__(self, cache, image):
        self.image = image
        self.cdir = os.path.join(cache, image)
        self.k = Kernel(os.path.join(self.cdir, "vmlinux"))
        k = self.k
        # symbols: a nokaslr run boot's kallsyms if there is one (else any, moved back by its delta)
        cands = []
        for cfg in sorted(os.listdir(self.cdir)):
            p = os.path.join(self.cdir, cfg, "kallsyms.zst")
            j = os.path.join(self.cdir, cfg, "run.json")
            if os.path.exists(p) and os.path.exists(j):
                d = int(json.load(open(j))["kaslr_delta"], 16)
                cands.append((d != 0, cfg, p, d))
        cands.sort()
        self.kallsyms = cands[0] if cands else None
        self.sysmap = system_map(image)
        k.syms = load_symbols(k.path, cands[0][2] if cands else None, cands[0][3] if cands else 0,
                              self.sysmap, k.size, k.link_virt_base)
        self.check_sysmap()
        self.tables = k.tables()
        self.index = SiteIndex(self.tables)
        self.refs = {}
        self.text_secs = {s["name"]: s for s in k.exec_sections()}

    def check_sysmap(self):
        """The System.map must be of the same build: its function addresses equal kallsyms'."""
        self.sysmap_ok = None
        if not (self.sysmap and self.kallsyms):
            return
        pairs = set()
        for line in open(self.sysmap, encoding="ascii", errors="replace"):
            p = line.split()
            if len(p) == 3:
                pairs.add((int(p[0], 16), p[2]))
        sample = self.k.syms.funcs[::97]
        same = sum(1 for a, n in sample if (a, n) in pairs)
        self.sysmap_ok = (same, len(sample))
        if same < 0.99 * len(sample):
            raise SystemExit(f"{self.sysmap}: only {same} of {len(sample)} sampled kallsyms functions are in it: "
                             "not this build")

    def ref(self, delta):
        if delta not in self.refs:
            self.refs[delta] = bytes(self.k.rel.apply(bytearray(self.k.image), delta))
        return self.refs[delta]

    def sections_for(self, tag):
        names = [".text"] if tag == "run" else [".text", ".init.text", ".exit.text"]
        return [self.text_secs[n] for n in names if n in self.text_secs]


def classify_runs(ctx, runs, a_img, b_img, base_off_to_v):
    """Bytes per class-set and the 'other' runs."""
    by = collections.Counter()
    other = []
    for s, e in runs:
        cur = None
        for x in range(s, e):
            v = base_off_to_v(x)
            c = "+".join(sorted(ctx.index.classes_at(v))) or "other"
            by[c] += 1
            if c == "other":
                if cur and cur[1] == x:
                    cur[1] = x + 1
                else:
                    cur = [x, x + 1]
                    other.append(cur)
    return by, other


RET_THUNKS = {"__x86_return_thunk", "its_return_thunk", "srso_return_thunk", "srso_alias_return_thunk",
              "retbleed_return_thunk", "call_depth_return_thunk", "__static_call_return", "zen_untrain_ret",
              "entry_untrain_ret", "srso_untrain_ret", "__x86_return_skl"}
XOR5RAX = bytes.fromhex("2e2e2e31c0")   # static call site calling __static_call_return0
RET0_TRAMP = bytes.fromhex("4831c0")      # __static_call_return0 trampoline: xor %rax,%rax; ret


NOPS_BY_LEN = {n: {x for x in NOPS if len(x) == n} for n in (2, 5)}


def decode_branch(b, at, mask, syms=None, ln=5):
    """Normalized state of the instruction bytes b at link address at: (kind, target) with kind
    jmp/call/jcc (target = link address), nop, ret (c3, or jmp to a return thunk), ret0
    (the "return 0" forms of static calls), or '?'."""
    b = bytes(b)
    kind = tgt = None
    if b[:1] == b"\xe9" and len(b) >= 5:
        kind, tgt = "jmp", (at + 5 + struct.unpack_from("<i", b, 1)[0]) & mask
    elif b[:1] == b"\xe8" and len(b) >= 5:
        kind, tgt = "call", (at + 5 + struct.unpack_from("<i", b, 1)[0]) & mask
    elif b[:1] == b"\xeb" and len(b) >= 2:
        kind, tgt = "jmp", (at + 2 + struct.unpack_from("<b", b, 1)[0]) & mask
    elif b[:1] == b"\x0f" and len(b) >= 6 and 0x80 <= b[1] <= 0x8f:
        kind, tgt = "jcc", (at + 6 + struct.unpack_from("<i", b, 2)[0]) & mask
    elif b[:ln] in NOPS_BY_LEN.get(ln, ()):
        return "nop", None
    elif b[:1] == b"\xc3":
        return "ret", None
    elif b[:5] == XOR5RAX or b[:3] == RET0_TRAMP:
        return "ret0", None
    else:
        return "?", None
    if kind == "jmp" and syms is not None and syms.by_addr.get(tgt) in RET_THUNKS:
        return "ret", None
    return kind, tgt


def jump_states(ctx, dump, secnames):
    """Per jump entry in the compared sections: (index, site, key, initial state, final state)."""
    k = ctx.k
    out = []
    bounds = [(ctx.text_secs[n]["addr"], ctx.text_secs[n]["addr"] + ctx.text_secs[n]["size"]) for n in secnames]
    for i, (ca, ln, e) in enumerate(ctx.tables["jump"]):
        if not any(lo <= ca < hi for lo, hi in bounds):
            continue
        o = k.off(ca)
        ko = k.off(e["key"])
        enabled = struct.unpack_from("<i", k.image, ko)[0] > 0 if ko is not None else None
        init = "jmp" if (enabled ^ bool(e["branch"])) else "nop"
        st, tgt = decode_branch(dump[o:o + ln], ca, k.mask, None, ln)
        if st == "ret":
            st = "?"
        if st == "jmp" and tgt != e["target"]:
            st = "jmp-elsewhere"
        out.append((i, ca, e["key"], init, st))
    return out


def static_call_states(ctx, dump, secnames):
    """Per static call site: (index, site, key, initial func, final kind, final target)."""
    k = ctx.k
    out = []
    bounds = [(ctx.text_secs[n]["addr"], ctx.text_secs[n]["addr"] + ctx.text_secs[n]["size"]) for n in secnames]
    fmt = "<Q" if k.is64 else "<I"
    for i, (sa, _ln, e) in enumerate(ctx.tables["static_call"]):
        if not any(lo <= sa < hi for lo, hi in bounds):
            continue
        ko = k.off(e["key"])
        func = struct.unpack_from(fmt, k.image, ko)[0] if ko is not None else None
        o = k.off(sa)
        st, tgt = decode_branch(dump[o:o + 6], sa, k.mask, ctx.k.syms)
        out.append((i, sa, e["key"], func, st, tgt, e["tail"]))
    return out


def sct_states(ctx, dump):
    k = ctx.k
    fmt = "<Q" if k.is64 else "<I"
    out = []
    for a, _n, name in ctx.tables["sct"]:
        key = ctx.k.syms.get("__SCK__" + name)
        ko = k.off(key) if key is not None else None
        func = struct.unpack_from(fmt, k.image, ko)[0] if ko is not None else None
        o = k.off(a)
        st, tgt = decode_branch(dump[o:o + 5], a, k.mask, ctx.k.syms)
        ist, itgt = decode_branch(k.image[o:o + 5], a, k.mask, ctx.k.syms)
        out.append((name, a, func, st, tgt, ist, itgt))
    return out


def fname(ctx, a):
    """A call/jump target by name; a target in a function's padding (6.12 call depth tracking
    redirects calls to the accounting thunk written in the 16 bytes before the function, named
    __pfx_<func> in kallsyms) is '<func>@callthunk'."""
    if a is None:
        return "NULL"
    if a == 0:
        return "NULL"
    n = ctx.k.syms.by_addr.get(a)
    if n:
        return n
    s = ctx.k.syms.sym(a)
    if s.startswith("__pfx_"):
        return s[len("__pfx_"):].split("+")[0] + "@callthunk"
    return s


def keyname(ctx, key):
    return ctx.k.syms.by_addr.get(key) or ctx.k.syms.anysym(key)


def run_altpatch(cli, vmlinux, cpuinfo, smp, out):
    cmd = cli + ["kernel", "patch", vmlinux, "--cpuinfo", cpuinfo, "--smp", str(smp), "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return None


def elf_image(path, rel):
    e = Elf(path)
    img = bytearray(rel.size)
    for s in e.loads():
        o = s["paddr"] - rel.link_phys_base
        img[o:o + s["filesz"]] = e.data[s["offset"]:s["offset"] + s["filesz"]]
    return img


def default_cli():
    for cfg in ("Release", "Debug"):
        dll = os.path.join(REPO, "src", "Altpatch.Cli", "bin", cfg, "net10.0", "Altpatch.Cli.dll")
        if os.path.exists(dll):
            return ["dotnet", dll]
    return None


def analyze(ctx, cfg, tag, cli, altpatch_cache):
    k = ctx.k
    cdir = os.path.join(ctx.cdir, cfg)
    meta = json.load(open(os.path.join(cdir, f"{tag}.json")))
    dump = read_maybe_zst(os.path.join(cdir, f"{tag}.phys.zst"))
    delta = int(meta["kaslr_delta"], 16)
    ref = ctx.ref(delta)
    secs = ctx.sections_for(tag)
    base = k.link_virt_base
    res = {"image": ctx.image, "config": cfg, "boot": tag, "kaslr_delta": meta["kaslr_delta"],
           "kernel_cmdline": meta["kernel_cmdline"], "cpu": meta["cpu"], "smp": meta["smp"],
           "sections": {}, "other": [], "altpatch": None}
    # (a) against the relocated vmlinux
    for s in secs:
        lo = s["addr"] - base
        hi = lo + s["size"]
        runs = diff_runs(ref, dump, lo, hi)
        by, other = classify_runs(ctx, runs, ref, dump, lambda x: base + x)
        res["sections"][s["name"]] = {"size": s["size"], "runs": len(runs), "bytes": sum(e - a for a, e in runs),
                                      "by_class": dict(by)}
        for a, e in other[:400]:
            v = base + a
            res["other"].append({"section": s["name"], "address": hex(v), "runtime": hex(v + delta),
                                 "symbol": k.syms.sym(v), "len": e - a,
                                 "vmlinux": ref[a:e].hex(), "dump": dump[a:e].hex(),
                                 "context_vmlinux": disasm(ref[max(a - 8, lo):e + 8], v - min(8, a - lo), k.is64),
                                 "context_dump": disasm(dump[max(a - 8, lo):e + 8], v - min(8, a - lo), k.is64)})
        if len(other) > 400:
            res["other_truncated"] = len(other)
    # relocated fields inside differing bytes (what patch-then-relocate would get wrong)
    # (b) against Altpatch
    if cli:
        cpuinfo = os.path.join(DATA, ctx.image, cfg, "cpuinfo")
        key = (cpuinfo and open(cpuinfo).read(), meta["smp"])
        if key not in altpatch_cache:
            with tempfile.TemporaryDirectory() as t:
                out = os.path.join(t, "vmlinux.patched")
                err = run_altpatch(cli, k.path, cpuinfo, meta["smp"], out)
                altpatch_cache.clear()  # keep one (50 MB) at a time
                altpatch_cache[key] = err if err else elf_image(out, k.rel)
        ap = altpatch_cache[key]
        if isinstance(ap, str):
            res["altpatch"] = {"error": ap}
        else:
            apimg = k.rel.apply(bytearray(ap), delta)
            res["altpatch"] = {"sections": {}, "other": []}
            for s in secs:
                lo = s["addr"] - base
                hi = lo + s["size"]
                runs = diff_runs(apimg, dump, lo, hi)
                by, other = classify_runs(ctx, runs, apimg, dump, lambda x: base + x)
                res["altpatch"]["sections"][s["name"]] = {"runs": len(runs), "bytes": sum(e - a for a, e in runs),
                                                          "by_class": dict(by)}
                for a, e in other[:200]:
                    v = base + a
                    res["altpatch"]["other"].append({"address": hex(v), "symbol": k.syms.sym(v), "len": e - a,
                                                     "altpatch": apimg[a:e].hex(), "dump": dump[a:e].hex()})
            # per patch-table class: sites where Altpatch's bytes differ from the dump
            site_bad = collections.Counter()
            site_tot = collections.Counter()
            bounds = [(s["addr"], s["addr"] + s["size"]) for s in secs]
            for cls in ("alt", "para", "lock", "retpoline", "return", "call", "runtime_const"):
                for a, n, _ in ctx.tables[cls]:
                    if not any(lo <= a < hi for lo, hi in bounds):
                        continue
                    o = a - base
                    site_tot[cls] += 1
                    if apimg[o:o + n] != dump[o:o + n]:
                        site_bad[cls] += 1
            res["altpatch"]["sites"] = {c: [site_tot[c] - site_bad[c], site_tot[c]] for c in site_tot}
    # writer states
    names = [s["name"] for s in secs]
    js = jump_states(ctx, dump, names)
    res["jump"] = {"entries": len(js),
                   "initial_jmp": sum(1 for x in js if x[3] == "jmp"),
                   "final": dict(collections.Counter(x[4] for x in js)),
                   "changed": [[i, hex(a), keyname(ctx, key), init, st] for i, a, key, init, st in js if init != st]}
    sc = static_call_states(ctx, dump, names)
    ret0 = ctx.k.syms.get("__static_call_return0")
    changed = []
    illegal = 0
    for i, a, key, func, st, tgt, tail in sc:
        # static_call_init(): __sc_insn(!func, tail): CALL / NOP / JMP / RET; CALL of
        # __static_call_return0 is written as the xor5rax form
        if func:
            init = ("jmp", func) if tail else (("ret0", None) if func == ret0 else ("call", func))
        else:
            init = ("ret", None) if tail else ("nop", None)
        if st in ("call", "jmp", "jcc") and ctx.k.syms.by_addr.get(tgt) is None:
            illegal += 1
        if (st, tgt) != init:
            changed.append([i, hex(a), keyname(ctx, key), f"{init[0]} {fname(ctx, init[1]) if init[1] else ''}".strip(),
                            f"{st} {fname(ctx, tgt) if tgt is not None else ''}".strip()])
    res["static_call"] = {"sites": len(sc), "changed": changed, "not_at_a_symbol": illegal,
                          "final": dict(collections.Counter(x[4] for x in sc))}
    tr = sct_states(ctx, dump)
    res["sct"] = {"trampolines": len(tr),
                  "changed": [[n, f"{ist} {fname(ctx, it) if it is not None else ''}".strip(),
                               f"{st} {fname(ctx, t) if t is not None else ''}".strip()]
                              for n, a, f, st, t, ist, it in tr if (st, t) != (ist, it)]}
    mc = collections.Counter()
    tx = ctx.text_secs[".text"]
    fentry = ctx.k.syms.get("__fentry__")
    for a, _n, _ in ctx.tables["mcount"]:
        if not any(s["addr"] <= a < s["addr"] + s["size"] for s in secs):
            continue
        o = a - base
        b = dump[o:o + 5]
        st, tgt = decode_branch(b, a, k.mask)
        if st == "call" and tgt == fentry:
            st = "call __fentry__"
        elif st == "call":
            st = "call " + fname(ctx, tgt)
        mc["text" if tx["addr"] <= a < tx["addr"] + tx["size"] else "init/exit", st] += 1
    res["mcount"] = {f"{w}: {s}": n for (w, s), n in sorted(mc.items())}
    return res


def summary_line(r):
    t = r["sections"].get(".text", {})
    by = t.get("by_class", {})
    ap = r.get("altpatch") or {}
    aps = ap.get("sections", {}).get(".text", {}) if "sections" in ap else {}
    return (f"{r['image']:<28s} {r['config']:<40s} {r['boot']:<5s} .text {t.get('bytes', 0):>7d} B "
            f"({100.0 * t.get('bytes', 0) / t.get('size', 1):.3f}%) other {by.get('other', 0):>4d}; "
            + (f"vs altpatch {aps.get('bytes', 0):>7d} B ({100.0 * aps.get('bytes', 0) / t.get('size', 1):.3f}%) "
               f"other {aps.get('by_class', {}).get('other', 0)}" if aps else
               f"altpatch: {ap.get('error', '-')[:60]}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--image", action="append")
    ap.add_argument("--config")
    ap.add_argument("--tag", choices=["run", "panic"])
    ap.add_argument("--no-altpatch", action="store_true")
    ap.add_argument("--cli")
    ap.add_argument("--force", action="store_true", help="re-analyze dumps that have a .whole.json")
    args = ap.parse_args()
    cli = None if args.no_altpatch else (args.cli.split() if args.cli else default_cli())
    images = args.image or sorted(d for d in os.listdir(args.cache)
                                  if os.path.exists(os.path.join(args.cache, d, "vmlinux")))
    for image in images:
        ctx = None
        apc = {}
        cdir = os.path.join(args.cache, image)
        for cfg in sorted(os.listdir(cdir)):
            if args.config and not re.search(args.config, cfg):
                continue
            for tag in ("run", "panic"):
                if args.tag and tag != args.tag:
                    continue
                if not os.path.exists(os.path.join(cdir, cfg, f"{tag}.phys.zst")):
                    continue
                out = os.path.join(cdir, cfg, f"{tag}.whole.json")
                if os.path.exists(out) and not args.force \
                        and os.path.getmtime(out) > os.path.getmtime(os.path.join(cdir, cfg, f"{tag}.phys.zst")):
                    r = json.load(open(out))
                else:
                    if ctx is None:
                        ctx = ImageCtx(args.cache, image)
                    r = analyze(ctx, cfg, tag, cli, apc)
                    r["altpatch_commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                                          capture_output=True, text=True).stdout.strip()
                    with open(out + ".tmp", "w") as f:
                        json.dump(r, f, indent=1)
                    os.replace(out + ".tmp", out)
                print(summary_line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
