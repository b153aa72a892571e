#!/usr/bin/env python3
"""gtcheck.py - compare `altpatch kernel patch` with the kernel's own boot-time patching, site by site,
and write the per-site truth files (.sites.gz).

For each ground-truth configuration with a panic-point dump (CACHE/<image>/<cfg>/panic.phys.zst,
gtboot.py), runs `altpatch kernel patch` on the image's vmlinux with the configuration's /proc/cpuinfo
and -smp count, then compares EVERY patch site (in .text, .init.text and .exit.text) byte for byte
with the dump, after all passes (sites overlap: alt+para, alt+return, return+sct). Under KASLR the
dump is compared with the vmlinux / Altpatch output relocated for the dump's offset (gtreloc.py).

Site kinds (tables as gtsites.py reads them): alt, para (6.1), retpoline, return, lock, and for 6.12
also call (.call_sites: call depth tracking), endbr (.ibt_endbr_seal), runtime_const
(runtime_ptr_* / runtime_shift_*).

A site either
  matches    - Altpatch's bytes equal the dump's;
  is foreign - the only differing bytes are also covered by a site of another text writer that
               runs at boot (ftrace mcount NOPs, jump labels, static calls, __SCT__ trampolines)
               and the dump differs from the vmlinux there;
  mismatches - anything else (printed: address, function, vmlinux/dump/Altpatch bytes, disassembly).

Usage:
  gtcheck.py [--cache DIR] [--image NAME]... [--config REGEX] [--cli CMD] [--list N]
             [--write-truth | --truth-only] [--truth-dir DIR] [--json OUT]

  --image NAME    image directory names in the cache (default: every image with panic dumps)
  --config REGEX  configurations whose name matches (default: all with a panic dump)
  --cli CMD       how to run altpatch (default: dotnet <repo>/src/Altpatch.Cli/bin/{Release,Debug}/
                  net10.0/Altpatch.Cli.dll; build it first). Images Altpatch refuses (6.12 for now)
                  are reported as such.
  --write-truth   also write tests/data/groundtruth/<image>/<cfg>/panic.sites.gz
  --truth-only    write the truth files without running altpatch
  --list N        print at most N mismatches per kind and configuration (default 20)

Truth file format (gzip, text): '#' header lines (image, configuration, the dump's sha256, KASLR
offset), then for each site kind a line "kind <name> <entries>" followed by one line "<d> <hex>" for
every site whose bytes in the dump differ from the (relocated) vmlinux, in table order: the site's
index is the previous line's index + d (the index before the first line of a kind is -1), <hex> its
final bytes. Sites not listed are unchanged. "??" stands for a byte that a foreign writer changed
(not to be compared). This is the format of the first 28 files (tests/data/groundtruth/<image>/
<cpu>-smp<N>.sites.gz); the new kinds (call, endbr, runtime_const) follow the same rules.

Exit status: 0 when every site of every configuration matches or is foreign, 1 otherwise.
"""

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtsites import read_maybe_zst  # noqa: E402
from gtwhole import ImageCtx, default_cli, disasm, elf_image, run_altpatch  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
KINDS = ["alt", "para", "retpoline", "return", "lock", "call", "endbr", "runtime_const"]
FOREIGN = {"mcount", "jump", "static_call", "sct"}


def section_bounds(ctx):
    return [(s["addr"], s["addr"] + s["size"]) for s in ctx.sections_for("panic")]


def sites(ctx):
    """{kind: [(index, vaddr, length)]} in table order, only sites in .text/.init.text/.exit.text."""
    b = section_bounds(ctx)
    out = {}
    for kind in KINDS:
        lst = ctx.tables.get(kind, [])
        if kind == "para" and not lst and ".parainstructions" not in ctx.k.secs:
            continue
        if kind in ("call", "endbr", "runtime_const") and not lst:
            continue
        rows = []
        for i, (a, n, _x) in enumerate(lst):
            if any(lo <= a < hi for lo, hi in b):
                rows.append((i, a, n))
        out[kind] = (len(lst), rows)
    return out


def truth_for(ctx, ref, dump, foreign_index):
    base = ctx.k.link_virt_base
    out = {}
    for kind, (total, rows) in sites(ctx).items():
        changed = []
        for idx, a, n in rows:
            o = a - base
            orig, d = ref[o:o + n], dump[o:o + n]
            if d == orig:
                continue
            hx = []
            for j in range(n):
                if d[j] != orig[j] and (foreign_index.classes_at(a + j) & FOREIGN):
                    hx.append("??")
                else:
                    hx.append(f"{d[j]:02x}")
            changed.append((idx, "".join(hx)))
        out[kind] = (total, changed)
    return out


def write_truth(path, image, cfg, meta, truth):
    lines = [
        "# Altpatch ground truth: final bytes of every patch site after the kernel's own boot-time patching",
        f"# image {image}, configuration {cfg} (QEMU {meta.get('accel', 'tcg').upper()}), panic-point dump sha256 "
        f"{meta['dump_sha256']}, kernel command line \"{meta['kernel_cmdline']}\", KASLR offset {meta['kaslr_delta']}",
        "# written by tools/groundtruth/gtcheck.py --write-truth; format: see its --help and docs/groundtruth.md",
    ]
    for kind, (total, rows) in truth.items():
        lines.append(f"kind {kind} {total}")
        prev = -1
        for i, h in rows:
            lines.append(f"{i - prev} {h}")
            prev = i
    data = ("\n".join(lines) + "\n").encode()
    with open(path + ".tmp", "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as g:
            g.write(data)
    os.replace(path + ".tmp", path)


def check(args, ctx, cfg, cli):
    image = ctx.image
    cdir = os.path.join(args.cache, image, cfg)
    meta = json.load(open(os.path.join(cdir, "panic.json")))
    dump = read_maybe_zst(os.path.join(cdir, "panic.phys.zst"))
    delta = int(meta["kaslr_delta"], 16)
    ref = ctx.ref(delta)
    base = ctx.k.link_virt_base
    if args.write_truth or args.truth_only:
        truth = truth_for(ctx, ref, dump, ctx.index)
        tdir = os.path.join(args.truth_dir, image, cfg)
        os.makedirs(tdir, exist_ok=True)
        path = os.path.join(tdir, "panic.sites.gz")
        write_truth(path, image, cfg, meta, truth)
        print(f"{image} {cfg}: wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")
        if args.truth_only:
            return None
    cpuinfo = os.path.join(REPO, "tests", "data", "groundtruth", image, cfg, "cpuinfo")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "vmlinux.patched")
        err = run_altpatch(cli, ctx.k.path, cpuinfo, meta["smp"], out)
        if err:
            print(f"{image} {cfg}: altpatch refused: {err}")
            return {"error": err}
        patched = ctx.k.rel.apply(elf_image(out, ctx.k.rel), delta)
    result = {}
    ks = ctx.k.syms
    for kind, (total, rows) in sites(ctx).items():
        matched = foreign_n = 0
        bad = []
        for idx, a, n in rows:
            o = a - base
            got, want, orig = patched[o:o + n], dump[o:o + n], ref[o:o + n]
            if got == want:
                matched += 1
                continue
            diff = [j for j in range(n) if got[j] != want[j]]
            if all(want[j] != orig[j] and (ctx.index.classes_at(a + j) & FOREIGN) for j in diff):
                foreign_n += 1
                continue
            bad.append((idx, a, n, want, got, orig))
        result[kind] = {"total": len(rows), "matched": matched, "foreign": foreign_n, "mismatched": len(bad)}
        for idx, a, n, want, got, orig in bad[: args.list]:
            print(f"  MISMATCH {image} {cfg} {kind}[{idx}] {a:#x} {ks.sym(a)} len {n}")
            print(f"    vmlinux  {orig.hex()}  {disasm(orig, a, ctx.k.is64)}")
            print(f"    dump     {want.hex()}  {disasm(want, a, ctx.k.is64)}")
            print(f"    altpatch {got.hex()}  {disasm(got, a, ctx.k.is64)}")
    line = "  ".join(f"{k} {v['matched'] + v['foreign']}/{v['total']}" + (f" ({v['foreign']} foreign)" if v["foreign"] else "")
                     for k, v in result.items())
    ok = all(v["mismatched"] == 0 for v in result.values())
    print(f"{image} {cfg}: {'OK ' if ok else 'BAD'} {line}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--image", action="append")
    ap.add_argument("--config")
    ap.add_argument("--cli")
    ap.add_argument("--list", type=int, default=20)
    ap.add_argument("--write-truth", action="store_true")
    ap.add_argument("--truth-only", action="store_true")
    ap.add_argument("--truth-dir", default=os.path.join(REPO, "tests", "data", "groundtruth"))
    ap.add_argument("--json")
    args = ap.parse_args()
    cli = args.cli.split() if args.cli else (None if args.truth_only else default_cli())
    if cli is None and not args.truth_only:
        sys.exit("gtcheck: build the CLI first (dotnet build -c Release src/Altpatch.Cli) or pass --cli")
    images = args.image or sorted(d for d in os.listdir(args.cache)
                                  if os.path.exists(os.path.join(args.cache, d, "vmlinux")))
    table = {}
    all_ok = True
    for image in images:
        cdir = os.path.join(args.cache, image)
        cfgs = sorted(c for c in os.listdir(cdir) if os.path.exists(os.path.join(cdir, c, "panic.phys.zst"))
                      and (not args.config or re.search(args.config, c)))
        if not cfgs:
            continue
        ctx = ImageCtx(args.cache, image)
        for cfg in cfgs:
            r = check(args, ctx, cfg, cli)
            if r is None:
                continue
            table[f"{image}/{cfg}"] = r
            if "error" not in r and any(v["mismatched"] for v in r.values()):
                all_ok = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    if table:
        tot = {}
        for r in table.values():
            for k, v in r.items():
                if isinstance(v, dict):
                    t = tot.setdefault(k, [0, 0])
                    t[0] += v["matched"] + v["foreign"]
                    t[1] += v["total"]
        print("TOTAL " + "  ".join(f"{k} {a}/{b} ({100.0 * a / b if b else 100:.3f}%)" for k, (a, b) in tot.items()))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
