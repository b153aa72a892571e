#!/usr/bin/env python3
"""gtcheck.py - compare `altpatch kernel patch` with the kernel's own boot-time patching.

For each ground-truth configuration (image x -cpu x -smp), runs `altpatch kernel patch` on the
image with the configuration's committed /proc/cpuinfo and -smp count, then compares EVERY
patch site (alt, para, lock, retpoline, return; in .text, .init.text and .exit.text) byte for
byte with the QEMU memory dump, after all passes (sites overlap: alt+para, alt+return).

A site either
  matches    - Altpatch's bytes equal the dump's;
  is foreign - the only differing bytes are also covered by a site of another text writer that
               runs at boot (ftrace mcount NOPs, jump labels, static calls, __SCT__ static-call
               trampolines; classified like gtdiff.py) and the dump differs from the vmlinux
               there: the kernel changed them for a reason outside the patch tables;
  mismatches - anything else (printed: address, function via kallsyms, expected vs got, and the
               disassembly of both).

Usage:
  gtcheck.py [--cache DIR] [--image NAME]... [--config BASE]... [--cli CMD] [--list N]
             [--write-truth] [--truth-dir DIR] [--json OUT]

  --cache DIR     ground-truth cache (default $GT_CACHE or /work/gt-cache): <image>/vmlinux,
                  <base>.phys.zst (+ .phys.json), <base>.kallsyms.zst
  --image NAME    6.1.0-50-cloud-amd64 and/or 6.1.0-50-686 (default: both)
  --config BASE   e.g. Icelake-Server-smp1 (default: every configuration with a dump)
  --cli CMD       how to run altpatch (default: dotnet <repo>/src/Altpatch.Cli/bin/Release/net10.0/
                  Altpatch.Cli.dll, else .../Debug/...; build it first)
  --list N        print at most N mismatches per pass and configuration (default 20)
  --write-truth   also write the compact truth files tests/data/groundtruth/<image>/<base>.sites.gz
                  that the CI test compares against (they do not depend on Altpatch's output)
  --truth-only    write the truth files without running altpatch
  --json OUT      write the per-configuration x per-pass table as JSON

Truth file format (gzip, text): header lines starting with '#', then for each site kind a line
"kind <name> <entries>" followed by one line "<d> <hex>" for every site whose bytes in the
dump differ from the vmlinux, in table order: the site's index is the previous line's index + d
(the index before the first line of a kind is -1), <hex> its final bytes. Sites not listed are
unchanged. "??" stands for a byte that a foreign writer (see above) changed: the test does not
compare it.

Exit status: 0 when every site of every configuration matches or is foreign, 1 otherwise.
"""

import argparse
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402
from gtdiff import Kallsyms, load_sites, read_maybe_zst, sidecar_for  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
IMAGES = ["6.1.0-50-cloud-amd64", "6.1.0-50-686"]
KINDS = ["alt", "para", "retpoline", "return", "lock"]
FOREIGN = {"mcount", "jump", "static_call", "sct"}


def default_cli():
    for cfg in ("Release", "Debug"):
        dll = os.path.join(REPO, "src", "Altpatch.Cli", "bin", cfg, "net10.0", "Altpatch.Cli.dll")
        if os.path.exists(dll):
            return ["dotnet", dll]
    sys.exit("gtcheck: build the CLI first (dotnet build -c Release src/Altpatch.Cli) or pass --cli")


class Image:
    """The vmlinux (tables and original bytes) of one ground-truth image."""

    def __init__(self, path):
        self.elf = Elf(path)
        self.path = path
        e = self.elf
        self.is64 = e.cls == 2
        self.secs = {s["name"]: s for s in e.sections}
        self.loads = [s for s in e.loads()]

    def off(self, vaddr):
        for s in self.loads:
            if s["vaddr"] <= vaddr < s["vaddr"] + s["filesz"]:
                return vaddr - s["vaddr"] + s["offset"]
        return None

    def orig(self, vaddr, n):
        o = self.off(vaddr)
        return self.elf.data[o:o + n]

    def sec(self, name):
        s = self.secs.get(name)
        if not s:
            return None, b""
        return s["addr"], self.elf.data[s["offset"]:s["offset"] + s["size"]]

    def branch_len(self, vaddr):
        b = self.orig(vaddr, 2)
        return 6 if len(b) == 2 and b[0] == 0x0F and 0x80 <= b[1] <= 0x8F else 5

    def sites(self):
        """{kind: [(index, vaddr, length)]} in table order, as the kernel walks them."""
        out = {k: [] for k in KINDS}
        base, data = self.sec(".altinstructions")
        for i in range(0, len(data) - 11, 12):
            ioff, _r, _c, ilen, _rl = struct.unpack_from("<iiHBB", data, i)
            out["alt"].append((i // 12, (base + i + ioff) & self.mask, ilen))
        base, data = self.sec(".parainstructions")
        esz, fmt = (16, "<QBB") if self.is64 else (8, "<IBB")
        for i in range(0, len(data) - esz + 1, esz):
            instr, _t, ln = struct.unpack_from(fmt, data, i)
            out["para"].append((i // esz, instr, ln))
        for sec, kind in ((".smp_locks", "lock"), (".retpoline_sites", "retpoline"), (".return_sites", "return")):
            base, data = self.sec(sec)
            for i in range(0, len(data) - 3, 4):
                (off,) = struct.unpack_from("<i", data, i)
                if off == 0:
                    continue
                a = (base + i + off) & self.mask
                out[kind].append((i // 4, a, 1 if kind == "lock" else self.branch_len(a)))
        return out

    @property
    def mask(self):
        return (1 << 64) - 1 if self.is64 else (1 << 32) - 1


class Dump:
    def __init__(self, path):
        self.data = read_maybe_zst(path)
        side = sidecar_for(path) or {}
        self.phys_base = int(side.get("phys_base", "0x1000000"), 16)
        self.v2p = int(side.get("virt_minus_phys", "0xffffffff80000000"), 16)

    def read(self, vaddr, n):
        o = vaddr - self.v2p - self.phys_base
        if o < 0 or o + n > len(self.data):
            return None
        return self.data[o:o + n]


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
    lines = [ln.split("\t")[-1].strip() for ln in r.stdout.splitlines() if ln.strip().startswith(f"{vaddr:x}"[:4]) and "\t" in ln]
    return "; ".join(x for x in lines if x)


def truth_for(img, dump, foreign):
    """{kind: [(index, hex-with-?? or None if unchanged)]} from the dump alone."""
    out = {}
    for kind, sites in img.sites().items():
        rows = []
        for idx, a, n in sites:
            o = img.orig(a, n)
            d = dump.read(a, n)
            if d is None or d == o:
                continue
            hx = []
            for k in range(n):
                if d[k] != o[k] and (foreign.classes_at(a + k) & FOREIGN):
                    hx.append("??")
                else:
                    hx.append(f"{d[k]:02x}")
            rows.append((idx, "".join(hx)))
        out[kind] = (len(sites), rows)
    return out


def write_truth(path, image, base, img, dump_path, truth):
    with open(dump_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    lines = [
        "# Altpatch ground truth: final bytes of every patch site after the kernel's own boot-time patching",
        f"# image {image}, configuration {base} (QEMU TCG), from {os.path.basename(dump_path)} sha256 {sha}",
        "# written by tools/groundtruth/gtcheck.py --write-truth; format: see its --help",
    ]
    for kind in KINDS:
        total, rows = truth[kind]
        lines.append(f"kind {kind} {total}")
        prev = -1
        for i, h in rows:
            lines.append(f"{i - prev} {h}")
            prev = i
    data = ("\n".join(lines) + "\n").encode()
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(data)


def check(args, image, base, cli):
    cache = os.path.join(args.cache, image)
    vmlinux = os.path.join(cache, "vmlinux")
    dump_path = os.path.join(cache, f"{base}.phys.zst")
    ks_path = os.path.join(cache, f"{base}.kallsyms.zst")
    cpuinfo = os.path.join(REPO, "tests", "data", "groundtruth", image, f"{base}.cpuinfo")
    smp = base.rsplit("-smp", 1)[1]
    img = Image(vmlinux)
    dump = Dump(dump_path)
    ks = Kallsyms(ks_path) if os.path.exists(ks_path) else None
    foreign, _counts = load_sites(img.elf, ks)

    if args.write_truth or args.truth_only:
        truth = truth_for(img, dump, foreign)
        path = os.path.join(args.truth_dir, image, f"{base}.sites.gz")
        write_truth(path, image, base, img, dump_path, truth)
        print(f"{image} {base}: wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")
        if args.truth_only:
            return None

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "vmlinux.patched")
        rep = os.path.join(tmp, "report.json")
        cmd = cli + ["kernel", "patch", vmlinux, "--cpuinfo", cpuinfo, "--smp", smp, "-o", out, "--report", rep]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{image} {base}: altpatch failed: {r.stderr.strip()}")
            return {"error": r.stderr.strip()}
        with open(out, "rb") as f:
            patched = f.read()
        with open(rep) as f:
            report = json.load(f)
    writers = {(s["kind"], s["index"]): s["writers"] for s in report["sites"]}
    kindmap = {"alt": "alt", "para": "para", "lock": "lock", "retpoline": "retpoline", "return": "return"}

    result = {}
    shown = 0
    for kind, sites in img.sites().items():
        matched = foreign_n = 0
        bad = []
        for idx, a, n in sites:
            o = img.off(a)
            got = patched[o:o + n]
            want = dump.read(a, n)
            if want is None:
                bad.append((idx, a, n, None, got))
                continue
            if got == want:
                matched += 1
                continue
            orig = img.orig(a, n)
            diff = [k for k in range(n) if got[k] != want[k]]
            if all(want[k] != orig[k] and (foreign.classes_at(a + k) & FOREIGN) for k in diff):
                foreign_n += 1
                continue
            bad.append((idx, a, n, want, got))
        result[kind] = {"total": len(sites), "matched": matched, "foreign": foreign_n, "mismatched": len(bad)}
        for idx, a, n, want, got in bad[: args.list]:
            name = ks.sym(a) if ks else "?"
            w = writers.get((kindmap[kind], idx), [])
            print(f"  MISMATCH {image} {base} {kind}[{idx}] {a:#x} {name} len {n} writers {','.join(w) or '-'}")
            print(f"    vmlinux {img.orig(a, n).hex()}  {disasm(img.orig(a, n), a, img.is64)}")
            print(f"    dump    {want.hex() if want else '(outside dump)'}  {disasm(want, a, img.is64) if want else ''}")
            print(f"    altpatch {got.hex()}  {disasm(got, a, img.is64)}")
            shown += 1
    line = "  ".join(f"{k} {v['matched'] + v['foreign']}/{v['total']}" + (f" ({v['foreign']} foreign)" if v["foreign"] else "")
                     for k, v in result.items())
    ok = all(v["mismatched"] == 0 for v in result.values())
    print(f"{image} {base}: {'OK ' if ok else 'BAD'} {line}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--image", action="append")
    ap.add_argument("--config", action="append")
    ap.add_argument("--cli")
    ap.add_argument("--list", type=int, default=20)
    ap.add_argument("--write-truth", action="store_true")
    ap.add_argument("--truth-only", action="store_true")
    ap.add_argument("--truth-dir", default=os.path.join(REPO, "tests", "data", "groundtruth"))
    ap.add_argument("--json")
    args = ap.parse_args()
    cli = args.cli.split() if args.cli else (None if args.truth_only else default_cli())
    table = {}
    all_ok = True
    for image in args.image or IMAGES:
        cache = os.path.join(args.cache, image)
        bases = args.config or sorted(f[: -len(".phys.zst")] for f in os.listdir(cache) if f.endswith(".phys.zst"))
        for base in bases:
            r = check(args, image, base, cli)
            if r is None:
                continue
            table[f"{image}/{base}"] = r
            if "error" in r or any(v["mismatched"] for v in r.values()):
                all_ok = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    if table:
        tot = {k: [0, 0] for k in KINDS}
        for r in table.values():
            for k, v in r.items():
                if k in tot:
                    tot[k][0] += v["matched"] + v["foreign"]
                    tot[k][1] += v["total"]
        print("TOTAL " + "  ".join(f"{k} {a}/{b} ({100.0 * a / b if b else 100:.3f}%)" for k, (a, b) in tot.items()))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
