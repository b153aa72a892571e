#!/usr/bin/env python3
"""gtwtext.py - the committed whole-text truth: a dump's final kernel text as runs over the vmlinux.

A `.wtext.gz` file holds the final bytes of whole executable sections of one dump (run: `.text`;
panic: `.text`, `.init.text`, `.exit.text`) as a difference from the image's own vmlinux,
relocated for the dump's KASLR offset (gtreloc.py). It is written from the dump and the vmlinux
only. Format (docs/groundtruth.md, "Whole-text truth files"):

  gzip( header | "data\\n" | binary runs )

  header   UTF-8 lines ending in '\\n'. Line 1 is exactly "altpatch-groundtruth-text 1".
           Then "key: value" lines (image, image_sha256, vmlinux_sha256, config, boot, cpu, smp,
           kernel_cmdline, kaslr, kaslr_delta, runtime_text, ..., reference) and one line per
           section, in the order of the binary data:
             section <name> <link address, hex> <size> <reference sha256> <final sha256> <runs> <bytes>
           <reference sha256> is over the section's bytes of the relocated vmlinux (what a reader
           starts from), <final sha256> over the dump's bytes (what it must end with).
  data     the line "data".
  runs     per section, in header order: runs (LEB128 gap, LEB128 length, length bytes), ended by
           a run of length 0 (bytes "00 00" when the gap is 0; the gap of the end marker is
           written as 0). A run starts `gap` bytes after the end of the previous run of the same
           section (the first run: after the section start). Its bytes replace the reference's.

Usage:
  gtwtext.py all [--cache DIR] [--data-dir DIR] [--commit-panic REGEX]
                                          for every dump in the cache: CACHE/<image>/<cfg>/<tag>.wtext.gz;
                                          copies every run.wtext.gz and the panic.wtext.gz of the
                                          configurations matching REGEX into DATA_DIR/<image>/<cfg>/,
                                          and writes DATA_DIR/<image>/<cfg>/text.sha256 (every dump's
                                          section hashes, also for files not copied)
  gtwtext.py write VMLINUX DUMP OUT [--sections .text,...]   (DUMP: <tag>.phys.zst with <tag>.json)
  gtwtext.py check FILE VMLINUX [DUMP]    rebuild each section from FILE and the vmlinux; compare
                                          with the header's sha256s (and with DUMP if given)
  gtwtext.py info FILE                    header and run statistics
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402
from gtreloc import Relocs  # noqa: E402

MAGIC = "altpatch-groundtruth-text 1"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(buf, pos):
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def diff_runs(a, b, lo, hi, chunk=256):
    """Maximal runs [s, e) in [lo, hi) where a and b differ."""
    runs = []
    i = lo
    while i < hi:
        j = min(i + chunk, hi)
        if a[i:j] == b[i:j]:
            i = j
            continue
        for x in range(i, j):
            if a[x] != b[x]:
                if runs and runs[-1][1] == x:
                    runs[-1][1] = x + 1
                else:
                    runs.append([x, x + 1])
        i = j
    return runs


def sidecar(dump_path):
    d = os.path.dirname(dump_path)
    tag = os.path.basename(dump_path).split(".")[0]
    with open(os.path.join(d, tag + ".json")) as f:
        return json.load(f)


def read_dump(path):
    import subprocess
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq", path], check=True, stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def section_list(elf, names):
    secs = {s["name"]: s for s in elf.sections}
    return [secs[n] for n in names if n in secs and secs[n]["size"]]


def write(vmlinux, dump_path, out, sections=None, header_extra=None, rel=None, dump=None, meta=None):
    """Write the truth file; returns a summary dict."""
    elf = rel.elf if rel else Elf(vmlinux)
    rel = rel or Relocs(elf)
    meta = meta or sidecar(dump_path)
    dump = dump if dump is not None else read_dump(dump_path)
    delta = int(meta["kaslr_delta"], 16)
    ref = rel.apply(rel.image(), delta)
    base = int(meta["link_virt_base"], 16)
    if sections is None:
        sections = [".text"] if meta["boot"] == "run" else [".text", ".init.text", ".exit.text"]
    hdr = [MAGIC]
    kv = [("image", meta["image_name"]), ("image_sha256", meta["image_sha256"]),
          ("vmlinux_sha256", meta["vmlinux_sha256"]), ("config", meta["config"]), ("boot", meta["boot"]),
          ("cpu", meta["cpu"]), ("smp", meta["smp"]), ("kernel_cmdline", meta["kernel_cmdline"]),
          ("kaslr", "yes" if meta["kaslr"] else "no"), ("kaslr_delta", meta["kaslr_delta"]),
          ("link_text", meta["link_text"]), ("runtime_text", meta.get("runtime_text")),
          ("runtime_stext", meta.get("runtime_stext", "-")), ("runtime_etext", meta.get("runtime_etext", "-")),
          ("phys_base", meta["phys_base"]), ("dump_sha256", meta["dump_sha256"]),
          ("reference", "the vmlinux (vmlinux_sha256) with its relocation table applied for kaslr_delta "
                        "(docs/groundtruth.md, KASLR)")]
    for k, v in kv + list((header_extra or {}).items()):
        hdr.append(f"{k}: {v}")
    body = io.BytesIO()
    summary = {}
    for s in section_list(elf, sections):
        lo = s["addr"] - base
        hi = lo + s["size"]
        runs = diff_runs(ref, dump, lo, hi)
        prev = lo
        nb = 0
        for a, b in runs:
            body.write(varint(a - prev))
            body.write(varint(b - a))
            body.write(dump[a:b])
            nb += b - a
            prev = b
        body.write(b"\x00\x00")
        hdr.append(f"section {s['name']} {s['addr']:x} {s['size']} {sha(ref[lo:hi])} {sha(dump[lo:hi])} {len(runs)} {nb}")
        summary[s["name"]] = {"runs": len(runs), "bytes": nb, "size": s["size"], "final_sha256": sha(dump[lo:hi])}
    data = ("\n".join(hdr) + "\ndata\n").encode() + body.getvalue()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as g:
            g.write(data)
    os.replace(tmp, out)
    summary["file_bytes"] = os.path.getsize(out)
    return summary


def read(path):
    """(header dict, [section dicts with 'runs': [(offset_in_section, bytes)]])."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    end = data.index(b"\ndata\n")
    lines = data[:end].decode().split("\n")
    if lines[0] != MAGIC:
        raise ValueError(f"{path}: not a {MAGIC!r} file")
    hdr, secs = {}, []
    for ln in lines[1:]:
        if ln.startswith("section "):
            _, name, addr, size, rsha, fsha, nruns, nbytes = ln.split(" ")
            secs.append({"name": name, "addr": int(addr, 16), "size": int(size), "ref_sha256": rsha,
                         "final_sha256": fsha, "nruns": int(nruns), "nbytes": int(nbytes)})
        else:
            k, _, v = ln.partition(": ")
            hdr[k] = v
    pos = end + len(b"\ndata\n")
    for s in secs:
        runs = []
        off = 0
        while True:
            gap, pos = read_varint(data, pos)
            ln, pos = read_varint(data, pos)
            if ln == 0:
                break
            off += gap
            runs.append((off, data[pos:pos + ln]))
            pos += ln
            off += ln
        if len(runs) != s["nruns"]:
            raise ValueError(f"{path}: {s['name']}: {len(runs)} runs, header says {s['nruns']}")
        s["runs"] = runs
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} bytes after the last section")
    return hdr, secs


def rebuild(path, vmlinux, rel=None):
    """{section: final bytes} rebuilt from the file and the vmlinux; checks both sha256s."""
    hdr, secs = read(path)
    rel = rel or Relocs(Elf(vmlinux))
    if sha256_file(vmlinux) != hdr["vmlinux_sha256"]:
        raise ValueError(f"{vmlinux} is not the vmlinux of {path}")
    img = rel.apply(rel.image(), int(hdr["kaslr_delta"], 16))
    base = rel.start_kernel_map + rel.link_phys_base
    out = {}
    for s in secs:
        lo = s["addr"] - base
        buf = bytearray(img[lo:lo + s["size"]])
        if sha(buf) != s["ref_sha256"]:
            raise ValueError(f"{path}: {s['name']}: the relocated vmlinux is not the reference")
        for off, b in s["runs"]:
            buf[off:off + len(b)] = b
        if sha(buf) != s["final_sha256"]:
            raise ValueError(f"{path}: {s['name']}: rebuilt bytes do not match final_sha256")
        out[s["name"]] = bytes(buf)
    return hdr, out


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for c in iter(lambda: f.read(1 << 20), b""):
            h.update(c)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("vmlinux")
    w.add_argument("dump")
    w.add_argument("out")
    w.add_argument("--sections")
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("vmlinux")
    c.add_argument("dump", nargs="?")
    i = sub.add_parser("info")
    i.add_argument("file")
    al = sub.add_parser("all")
    al.add_argument("--cache", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    al.add_argument("--data-dir", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "data", "groundtruth"))
    al.add_argument("--commit-panic", default="^$")
    al.add_argument("--force", action="store_true")
    args = ap.parse_args()
    if args.cmd == "all":
        import re
        import shutil
        for image in sorted(os.listdir(args.cache)):
            vml = os.path.join(args.cache, image, "vmlinux")
            if not os.path.exists(vml):
                continue
            rel = None
            for cfg in sorted(os.listdir(os.path.join(args.cache, image))):
                sums = []
                for tag in ("run", "panic"):
                    dp = os.path.join(args.cache, image, cfg, f"{tag}.phys.zst")
                    if not os.path.exists(dp):
                        continue
                    out = os.path.join(args.cache, image, cfg, f"{tag}.wtext.gz")
                    if args.force or not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(dp):
                        rel = rel or Relocs(Elf(vml))
                        s = write(vml, dp, out, rel=rel)
                        print(f"{image} {cfg} {tag}: " + ", ".join(f"{k} {v['runs']} runs {v['bytes']} B"
                                                              for k, v in s.items() if k != "file_bytes")
                              + f"; {s['file_bytes']} bytes")
                    hdr, secs = read(out)
                    sums.extend(f"{tag} {x['name']} {x['addr']:x} {x['size']} {x['final_sha256']} {x['ref_sha256']} "
                                f"{hdr['kaslr_delta']}" for x in secs)
                    if tag == "run" or re.search(args.commit_panic, cfg):
                        dd = os.path.join(args.data_dir, image, cfg)
                        os.makedirs(dd, exist_ok=True)
                        shutil.copyfile(out, os.path.join(dd, f"{tag}.wtext.gz"))
                if sums:
                    dd = os.path.join(args.data_dir, image, cfg)
                    os.makedirs(dd, exist_ok=True)
                    with open(os.path.join(dd, "text.sha256"), "w") as f:
                        f.write("# dump section link-address size sha256(final bytes in the dump) "
                                "sha256(vmlinux relocated for kaslr_delta) kaslr_delta\n")
                        f.write("\n".join(sums) + "\n")
        return 0
    if args.cmd == "write":
        s = write(args.vmlinux, args.dump, args.out, args.sections.split(",") if args.sections else None)
        print(json.dumps(s))
    elif args.cmd == "check":
        hdr, out = rebuild(args.file, args.vmlinux)
        print(f"{args.file}: {', '.join(f'{k} {len(v)} bytes' for k, v in out.items())}: sha256 OK")
        if args.dump:
            meta = sidecar(args.dump)
            dump = read_dump(args.dump)
            base = int(meta["link_virt_base"], 16)
            for name, b in out.items():
                s = next(x for x in Elf(args.vmlinux).sections if x["name"] == name)
                lo = s["addr"] - base
                if dump[lo:lo + len(b)] != b:
                    print(f"  {name}: differs from {args.dump}")
                    return 1
            print(f"  identical to {args.dump}")
    else:
        hdr, secs = read(args.file)
        for k, v in hdr.items():
            print(f"{k}: {v}")
        for s in secs:
            print(f"section {s['name']} 0x{s['addr']:x} size {s['size']}: {s['nruns']} runs, {s['nbytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
