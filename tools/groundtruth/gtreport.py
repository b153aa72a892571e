#!/usr/bin/env python3
"""gtreport.py - aggregate gtwhole.py's per-dump results into Markdown tables.

Usage: gtreport.py [--cache DIR] [--out FILE.md] [--json FILE]

Reads CACHE/<image>/<cfg>/{run,panic}.whole.json (gtwhole.py) and the dumps, and writes:
  - the matrix (configuration, command line, KASLR offsets, boot times);
  - per dump, the differing bytes of .text (and .init.text) by writer, against the relocated
    vmlinux and against Altpatch's `kernel patch`;
  - the jump-label keys and static calls whose final state differs from their initial one,
    and which of them differ between the panic-point and the runtime dump of a configuration
    (decided by the running kernel: the dynamic ones);
  - what each kernel command line changes against the same image / CPU / -smp with the
    default command line, and what KASLR changes against the same configuration without it.
A byte covered by several writers' sites counts under the first of ORDER below.
"""

import argparse
import collections
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtsites import read_maybe_zst  # noqa: E402
from gtwtext import diff_runs  # noqa: E402

ORDER = ["alt", "para", "retpoline", "return", "lock", "endbr", "runtime_const", "mcount", "static_call",
         "jump", "sct", "call", "callthunk", "other"]
DEFAULT = {"console=ttyS0", "nokaslr", "panic=0"}
# keys that come in families (one per LSM hook and slot, one per netfilter hook): one row each
GROUPS = [re.compile(r"^(security_hook_active_)"), re.compile(r"^(__SCK__lsm_static_call_)"),
          re.compile(r"^(__SCK__tp_func_)")]


def group_state(key, state):
    """The state shown for a family member: the kind, and whether it goes through a callthunk."""
    if group_key(key) == key:
        return state
    return state.split(" ")[0] + (" @callthunk" if "@callthunk" in state else "")


def group_key(key):
    for g in GROUPS:
        m = g.match(key)
        if m:
            return m.group(1) + "*"
    return key


def primary(cs):
    parts = set(cs.split("+"))
    for c in ORDER:
        if c in parts:
            return c
    return "other"


def collapse(by):
    out = collections.Counter()
    for cs, n in by.items():
        out[primary(cs)] += n
    return out


def extra_args(cmdline):
    return " ".join(a for a in cmdline.split() if a not in DEFAULT)


def load_all(cache):
    res = {}
    for image in sorted(os.listdir(cache)):
        idir = os.path.join(cache, image)
        if not os.path.exists(os.path.join(idir, "vmlinux")):
            continue
        for cfg in sorted(os.listdir(idir)):
            for tag in ("run", "panic"):
                p = os.path.join(idir, cfg, f"{tag}.whole.json")
                if os.path.exists(p):
                    r = json.load(open(p))
                    r["meta"] = json.load(open(os.path.join(idir, cfg, f"{tag}.json")))
                    res[(image, cfg, tag)] = r
    return res


def fmt(n):
    return f"{n:,}"


class Norm:
    """Dumps normalized to link addresses: bytes equal to the relocated vmlinux are replaced by the
    unrelocated ones, so dumps with different KASLR offsets compare byte for byte."""

    def __init__(self, cache):
        self.cache = cache
        self.ctx = {}
        self.memo = {}

    def kernel(self, image):
        if image not in self.ctx:
            from gtwhole import ImageCtx
            self.ctx.clear()
            self.memo.clear()
            self.ctx[image] = ImageCtx(self.cache, image)
        return self.ctx[image]

    def text(self, image, cfg, tag, sec=".text"):
        key = (image, cfg, tag, sec)
        if key in self.memo:
            return self.memo[key]
        ctx = self.kernel(image)
        k = ctx.k
        d = os.path.join(self.cache, image, cfg)
        meta = json.load(open(os.path.join(d, f"{tag}.json")))
        dump = read_maybe_zst(os.path.join(d, f"{tag}.phys.zst"))
        ref = ctx.ref(int(meta["kaslr_delta"], 16))
        s = ctx.text_secs[sec]
        lo = s["addr"] - k.link_virt_base
        hi = lo + s["size"]
        out = bytearray(k.image[lo:hi])
        for a, b in diff_runs(ref, dump, lo, hi):
            out[a - lo:b - lo] = dump[a:b]
        if len(self.memo) > 6:
            self.memo.pop(next(iter(self.memo)))
        self.memo[key] = (s["addr"], bytes(out))
        return self.memo[key]

    def compare(self, image, a, b, sec=".text"):
        """Bytes by writer where two normalized dumps differ: a, b = (cfg, tag)."""
        ctx = self.kernel(image)
        base, ta = self.text(image, *a, sec)
        _, tb = self.text(image, *b, sec)
        by = collections.Counter()
        runs = diff_runs(ta, tb, 0, len(ta))
        samples = []
        for s, e in runs:
            for x in range(s, e):
                c = "+".join(sorted(ctx.index.classes_at(base + x))) or "other"
                by[primary(c)] += 1
            if len(samples) < 12:
                samples.append(f"{ctx.k.syms.sym(base + s)} {ta[s:e].hex()}->{tb[s:e].hex()}")
        return by, len(runs), samples


def state_map(r, what):
    """{entry index: final state} for entries whose state differs from the initial one."""
    if what == "jump":
        return {x[0]: (x[2], x[4]) for x in r["jump"]["changed"]}
    return {x[0]: (x[2], x[4]) for x in r["static_call"]["changed"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--out", default="-")
    ap.add_argument("--json")
    args = ap.parse_args()
    res = load_all(args.cache)
    norm = Norm(args.cache)
    L = []
    J = {"dumps": {}, "panic_vs_run": {}, "cmdline": {}, "kaslr": {}}

    # ---------------------------------------------------------------- matrix
    cfgs = sorted({(i, c) for i, c, _ in res})
    L.append("### The matrix\n")
    L.append("| image | configuration | extra kernel arguments | KASLR offset run / panic | run boot: to /init ready, total (s) | panic boot (s) |")
    L.append("|---|---|---|---|---|---|")
    for image, cfg in cfgs:
        r, p = res.get((image, cfg, "run")), res.get((image, cfg, "panic"))
        m = (r or p)["meta"]
        L.append(f"| {image} | {cfg} | {extra_args(m['kernel_cmdline']) or '-'} | "
                 f"{r['kaslr_delta'] if r else '-'} / {p['kaslr_delta'] if p else '-'} | "
                 f"{r['meta'].get('seconds_to_ready', '-') if r else '-'} / {r['meta'].get('seconds_total', '-') if r else '-'} | "
                 f"{p['meta'].get('seconds_to_panic', '-') if p else '-'} |")
    L.append("")

    # ---------------------------------------------------------------- per dump
    cols = [c for c in ORDER if any(collapse(r["sections"].get(".text", {}).get("by_class", {})).get(c)
                                    for r in res.values())]
    for sec in (".text", ".init.text"):
        L.append(f"### `{sec}`: bytes that differ from the vmlinux (relocated for the dump's KASLR offset), by writer\n")
        L.append("| image | configuration | dump | size | differing | % | " + " | ".join(cols) + " |")
        L.append("|---|---|---|---:|---:|---:|" + "---:|" * len(cols))
        for (image, cfg, tag), r in sorted(res.items()):
            s = r["sections"].get(sec)
            if not s:
                continue
            c = collapse(s["by_class"])
            J["dumps"].setdefault(f"{image}/{cfg}/{tag}", {})[sec] = {"size": s["size"], "bytes": s["bytes"], "by_writer": dict(c),
                                                                      "by_class_set": s["by_class"]}
            L.append(f"| {image} | {cfg} | {tag} | {fmt(s['size'])} | {fmt(s['bytes'])} | {100.0 * s['bytes'] / s['size']:.3f} | "
                     + " | ".join(fmt(c.get(x, 0)) for x in cols) + " |")
        L.append("")

    L.append("### Against Altpatch's `kernel patch` (cpuinfo + -smp of the boot, no command line)\n")
    L.append("| image | configuration | dump | `.text` differing | % | of which mcount / static_call / jump / sct / patch-table classes / other | patch-table sites matched (alt, para, retpoline, return, lock) |")
    L.append("|---|---|---|---:|---:|---|---|")
    for (image, cfg, tag), r in sorted(res.items()):
        ap_ = r.get("altpatch")
        if not ap_:
            continue
        if "error" in ap_:
            L.append(f"| {image} | {cfg} | {tag} | - | - | refused: {ap_['error'][:90]} | - |")
            continue
        s = ap_["sections"][".text"]
        c = collapse(s["by_class"])
        size = r["sections"][".text"]["size"]
        pt = sum(v for k, v in c.items() if k not in ("mcount", "static_call", "jump", "sct", "other"))
        sites = ", ".join(f"{a}/{b}" for k, (a, b) in ((k, ap_["sites"].get(k, [0, 0])) for k in
                                                    ("alt", "para", "retpoline", "return", "lock")))
        J["dumps"].setdefault(f"{image}/{cfg}/{tag}", {})["altpatch"] = {"text_bytes": s["bytes"], "by_writer": dict(c),
                                                                       "sites": ap_["sites"]}
        L.append(f"| {image} | {cfg} | {tag} | {fmt(s['bytes'])} | {100.0 * s['bytes'] / size:.3f} | "
                 f"{fmt(c.get('mcount', 0))} / {fmt(c.get('static_call', 0))} / {fmt(c.get('jump', 0))} / {fmt(c.get('sct', 0))} / "
                 f"{fmt(pt)} / {fmt(c.get('other', 0))} | {sites} |")
    L.append("")

    # ---------------------------------------------------------------- jump labels / static calls
    for what, title in (("jump", "Jump-label keys"), ("static_call", "Static calls")):
        agg = {}
        ndumps = collections.Counter()
        for (image, cfg, tag), r in sorted(res.items()):
            ndumps[image] += 1
            per = collections.defaultdict(lambda: [0, set()])
            lst = r["jump"]["changed"] if what == "jump" else r["static_call"]["changed"]
            for x in lst:
                key = group_key(x[2])
                ini, fin = group_state(x[2], x[3]), group_state(x[2], x[4])
                per[(key, ini, fin)][0] += 1
                per[(key, ini, fin)][1].add(x[2])
            for (key, ini, fin), (n, names) in per.items():
                a = agg.setdefault((image, key, ini, fin), {"sites": n, "dumps": [], "keys": 0})
                a["sites"] = max(a["sites"], n)
                a["keys"] = max(a["keys"], len(names))
                a["dumps"].append(f"{cfg}/{tag}")
        L.append(f"### {title} whose final state differs from the initial one (jump_label_init / static_call_init from the vmlinux's key values)\n")
        L.append("(a family `prefix*` is one row: its keys counted in 'sites' as sites / keys)")
        L.append("")
        L.append("| image | key | initial → final | sites (max) | dumps (of all of the image) |")
        L.append("|---|---|---|---:|---|")
        jj = []
        for (image, key, ini, fin), a in sorted(agg.items()):
            n = len(a["dumps"])
            where = "all" if n == ndumps[image] else (", ".join(a["dumps"]) if n <= 6 else f"{n} dumps")
            sites = f"{a['sites']} / {a['keys']} keys" if key.endswith("*") else f"{a['sites']}"
            L.append(f"| {image} | `{key}` | {ini or '-'} → {fin} | {sites} | {n}/{ndumps[image]}: {where} |")
            jj.append({"image": image, "key": key, "initial": ini, "final": fin, "sites": a["sites"], "dumps": a["dumps"]})
        J[what + "_changed"] = jj
        L.append("")

    # ---------------------------------------------------------------- panic vs run
    L.append("### Panic-point dump vs runtime dump of the same configuration (`.text`, normalized to link addresses)\n")
    L.append("| image | configuration | `.text` bytes | by writer | jump entries differing (keys) | static-call sites differing (keys) |")
    L.append("|---|---|---:|---|---|---|")
    for image, cfg in cfgs:
        r, p = res.get((image, cfg, "run")), res.get((image, cfg, "panic"))
        if not (r and p):
            continue
        by, nr, samples = norm.compare(image, (cfg, "panic"), (cfg, "run"))
        jr, jp = state_map(r, "jump"), {k: v for k, v in state_map(p, "jump").items()}
        jtext = {x[0] for x in r["jump"]["changed"]} | set()
        # entries in .text only (the run dump has only .text)
        jdiff = {k for k in set(jr) | set(jp) if (k in jr) != (k in jp) or jr.get(k) != jp.get(k)}
        jdiff = {k for k in jdiff if k in jr or (k in jp and _in_text(p, k))}
        jkeys = collections.Counter((jr.get(k) or jp.get(k))[0] for k in jdiff)
        sr, sp = state_map(r, "static_call"), state_map(p, "static_call")
        sdiff = {k for k in set(sr) | set(sp) if sr.get(k) != sp.get(k)}
        sdiff = {k for k in sdiff if k in sr or _sc_in_text(p, r, k)}
        skeys = collections.Counter((sr.get(k) or sp.get(k))[0] for k in sdiff)
        J["panic_vs_run"][f"{image}/{cfg}"] = {"text_bytes": sum(by.values()), "by_writer": dict(by), "samples": samples,
                                               "jump_keys": dict(jkeys), "static_call_keys": dict(skeys)}
        L.append(f"| {image} | {cfg} | {fmt(sum(by.values()))} | {' '.join(f'{k}={v}' for k, v in sorted(by.items()))} | "
                 f"{len(jdiff)} ({', '.join(f'`{k}`×{v}' for k, v in jkeys.most_common()) or '-'}) | "
                 f"{len(sdiff)} ({', '.join(f'`{k}`×{v}' for k, v in skeys.most_common()) or '-'}) |")
    L.append("")

    # ---------------------------------------------------------------- command lines and KASLR
    L.append("### What a kernel command line changes (runtime dumps, `.text`, against the same image / CPU / -smp with the default command line)\n")
    L.append("| image | configuration | against | `.text` bytes | by writer | jump keys flipped | static calls changed |")
    L.append("|---|---|---|---:|---|---|---|")
    kaslr_rows = []
    for image, cfg in cfgs:
        r = res.get((image, cfg, "run"))
        if not r:
            continue
        ex = extra_args(r["meta"]["kernel_cmdline"])
        m = re.match(r"(.*-smp\d+)(\+.*)?$", cfg)
        plain = m.group(1)
        kas = cfg.endswith("+kaslr")
        if ex:
            # the default-command-line configuration with the same CPU/-smp (either KASLR setting)
            for cand in (plain + ("+kaslr" if kas else ""), plain + ("" if kas else "+kaslr")):
                if (image, cand, "run") in res:
                    by, nr, samples = norm.compare(image, (cand, "run"), (cfg, "run"))
                    a, b = res[(image, cand, "run")], r
                    jk = _key_delta(a, b, "jump")
                    sk = _key_delta(a, b, "static_call")
                    J["cmdline"][f"{image}/{cfg}"] = {"against": cand, "text_bytes": sum(by.values()), "by_writer": dict(by),
                                                      "samples": samples, "jump": jk, "static_call": sk}
                    L.append(f"| {image} | {cfg} | {cand} | {fmt(sum(by.values()))} | {' '.join(f'{k}={v}' for k, v in sorted(by.items()))} | "
                             f"{'; '.join(jk) or '-'} | {'; '.join(sk) or '-'} |")
                    break
            else:
                L.append(f"| {image} | {cfg} | (no default-command-line run of {plain}) | | | | |")
        if kas and not ex and (image, plain, "run") in res:
            kaslr_rows.append((image, cfg, plain))
    L.append("")
    L.append("### KASLR: runtime dump with KASLR against the same configuration without (both normalized to link addresses)\n")
    L.append("| image | configuration | KASLR offset | `.text` bytes differing from the relocated vmlinux outside every writer's sites | differing from the nokaslr dump | by writer |")
    L.append("|---|---|---|---:|---:|---|")
    for (image, cfg, tag), r in sorted(res.items()):
        if tag != "run" or not cfg.endswith("+kaslr"):
            continue
        plain = cfg[:-len("+kaslr")]
        oth = collapse(r["sections"][".text"]["by_class"]).get("other", 0)
        if (image, plain, "run") in res:
            by, nr, samples = norm.compare(image, (plain, "run"), (cfg, "run"))
            J["kaslr"][f"{image}/{cfg}"] = {"against": plain, "text_bytes": sum(by.values()), "by_writer": dict(by), "samples": samples,
                                            "other_vs_relocated": oth}
            L.append(f"| {image} | {cfg} | {r['kaslr_delta']} | {oth} | {fmt(sum(by.values()))} | {' '.join(f'{k}={v}' for k, v in sorted(by.items()))} |")
        else:
            J["kaslr"][f"{image}/{cfg}"] = {"other_vs_relocated": oth}
            L.append(f"| {image} | {cfg} | {r['kaslr_delta']} | {oth} | (no nokaslr twin) | |")
    L.append("")

    # ---------------------------------------------------------------- other
    L.append("### Bytes no writer's site explains ('other')\n")
    anyo = False
    for (image, cfg, tag), r in sorted(res.items()):
        for o in r.get("other", []):
            anyo = True
            L.append(f"- {image} {cfg} {tag} {o['section']} {o['address']} ({o['symbol']}) len {o['len']}: "
                     f"{o['vmlinux']} -> {o['dump']}; vmlinux `{o['context_vmlinux']}`; dump `{o['context_dump']}`")
    if not anyo:
        L.append("None: every differing byte of every dump is inside a site of one of the writers above.")
    L.append("")
    text = "\n".join(L) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(J, f, indent=1)
    return 0


def _in_text(p, k):
    # panic 'changed' entries carry the address; .text entries are below .init.text
    for x in p["jump"]["changed"]:
        if x[0] == k:
            return int(x[1], 16) < int(p["meta"]["link_text"], 16) + p["sections"][".text"]["size"]
    return False


def _sc_in_text(p, r, k):
    for x in p["static_call"]["changed"]:
        if x[0] == k:
            return int(x[1], 16) < int(p["meta"]["link_text"], 16) + p["sections"][".text"]["size"]
    return False


def _key_delta(a, b, what):
    """Keys whose set of changed entries differs between dumps a and b: 'key: A -> B'."""
    def per_key(r):
        d = collections.defaultdict(collections.Counter)
        lst = r["jump"]["changed"] if what == "jump" else r["static_call"]["changed"]
        text_end = int(r["meta"]["link_text"], 16) + r["sections"][".text"]["size"]
        for x in lst:
            if int(x[1], 16) < text_end:
                d[group_key(x[2])][group_state(x[2], x[4])] += 1
        return d
    da, db = per_key(a), per_key(b)
    out = []
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            fa = ", ".join(f"{s}×{n}" for s, n in sorted(da.get(key, {}).items())) or "initial"
            fb = ", ".join(f"{s}×{n}" for s, n in sorted(db.get(key, {}).items())) or "initial"
            out.append(f"`{key}` {fa} → {fb}")
    return out


if __name__ == "__main__":
    sys.exit(main())
