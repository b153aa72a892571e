#!/usr/bin/env python3
"""gtdiff.py - where does a ground-truth memory dump differ from the vmlinux file?

Compares every SHF_EXECINSTR section of an extracted vmlinux (ELF32/ELF64) with the
same bytes in a physical-memory dump made by boot-and-dump.sh, and prints the byte
ranges that differ (the kernel's own boot-time patching), with counts per section.

Usage:
  gtdiff.py VMLINUX DUMP [--phys-base ADDR] [--kallsyms FILE] [--json OUT]
            [--list] [--max-list N] [--sections a,b,...]

  VMLINUX        extracted vmlinux (scripts/extract-vmlinux), the unpatched original
  DUMP           dump: raw, or .zst (decompressed with `zstd -dc`); if DUMP.json or
                 (for X.phys.zst) X.phys.json exists, phys_base is read from it
  --phys-base    guest physical address of the dump's first byte (default: sidecar,
                 else the lowest PT_LOAD p_paddr of VMLINUX)
  --kallsyms     /proc/kallsyms of the same kernel booted with nokaslr (plain or .zst;
                 boot-and-dump.sh keeps one per boot in the cache). Enables symbol names
                 and classification of each range by the patch table that explains it:
                   alt (.altinstructions), para (.parainstructions), lock (.smp_locks),
                   retpoline (.retpoline_sites), return (.return_sites),
                   mcount (__mcount_loc: ftrace NOPs), jump (__jump_table: static keys),
                   static_call (.static_call_sites), sct (__SCT__ static-call trampolines),
                   unknown (none of these)
                 Without CONFIG_KALLSYMS_ALL (the 686 image) kallsyms has no data symbols;
                 __mcount_loc and __jump_table are then found by scanning the image
                 (longest run of entries that point at "call __fentry__" / at a
                 jump-label instruction); --no-scan disables that. The scan result is
                 cached in VMLINUX.scan.json.
  --list         print every differing range (default: summary only)
  --json OUT     write all ranges and the summary as JSON ("-" = stdout)
  --sections     comma-separated section names to compare (default: all executable)
  --base-dump D  compare DUMP with another dump D instead of with the vmlinux file

Each range is a maximal run of differing bytes, given by link-time virtual address.
This compares with the vmlinux as it is, unrelocated: for KASLR dumps (and for the classification
of whole-text differences of every dump) use gtwhole.py, which relocates first.
Tables are read from VMLINUX (not from the dump: the kernel frees .smp_locks on UP and
may poison freed memory).
"""

import argparse
import bisect
import json
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gtlib import Elf  # noqa: E402

SHF_EXECINSTR = 0x4
SHT_PROGBITS = 1


def read_maybe_zst(path):
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


def sidecar_for(dump):
    """gtboot.py's <tag>.json beside <tag>.phys.zst, or the first layout's X.phys.json."""
    cands = [os.path.join(os.path.dirname(dump), os.path.basename(dump).split(".")[0] + ".json"), dump + ".json"]
    if dump.endswith(".zst"):
        cands.append(dump[:-4] + ".json")
    for c in cands:
        if os.path.exists(c):
            with open(c) as f:
                return json.load(f)
    return None


def diff_ranges(a, b, chunk=256):
    """Yield (start, end) of maximal runs where a[i] != b[i]; len(a) == len(b)."""
    n = len(a)
    run_start = None
    i = 0
    while i < n:
        j = min(i + chunk, n)
        if a[i:j] == b[i:j]:
            if run_start is not None:
                yield run_start, i
                run_start = None
            i = j
            continue
        for k in range(i, j):
            if a[k] != b[k]:
                if run_start is None:
                    run_start = k
            elif run_start is not None:
                yield run_start, k
                run_start = None
        i = j
    if run_start is not None:
        yield run_start, n


class Kallsyms:
    def __init__(self, path):
        text = read_maybe_zst(path).decode("ascii", "replace").replace("\r", "")
        self.by_name = {}
        funcs = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or len(parts[1]) != 1:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            name = parts[2]
            self.by_name.setdefault(name, addr)
            if parts[1] in "tTwW" and len(parts) == 3 and addr:
                funcs.append((addr, name))
        funcs.sort()
        self.faddr = [a for a, _ in funcs]
        self.fname = [n for _, n in funcs]

    def sym(self, addr):
        i = bisect.bisect_right(self.faddr, addr) - 1
        if i < 0:
            return "?"
        return f"{self.fname[i]}+0x{addr - self.faddr[i]:x}"

    def get(self, name):
        return self.by_name.get(name)


class Sites:
    """Intervals [start, end) of known patch sites, by class."""

    def __init__(self):
        self.items = []  # (start, end, cls)

    def add(self, start, length, cls):
        self.items.append((start, start + length, cls))

    def freeze(self):
        self.items.sort()
        self.starts = [s for s, _, _ in self.items]
        # maximum interval length, to bound the backwards search
        self.maxlen = max((e - s for s, e, _ in self.items), default=0)

    def classes_at(self, addr):
        out = set()
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and self.items[i][0] > addr - self.maxlen - 1:
            s, e, c = self.items[i]
            if s <= addr < e:
                out.add(c)
            i -= 1
        return out


def exec_ranges(elf):
    return [(s["addr"], s["addr"] + s["size"]) for s in elf.sections
            if s["type"] == SHT_PROGBITS and s["flags"] & SHF_EXECINSTR and s["size"]]


def in_ranges(rs, a):
    return any(lo <= a < hi for lo, hi in rs)


def scan_mcount_loc(elf, fentry):
    """Find __mcount_loc without symbols: the longest run of pointer-sized words in a
    PT_LOAD whose every value points at "call __fentry__" (e8 rel32). Returns
    (vaddr, bytes) or (None, None)."""
    is64 = elf.cls == 2
    ptr = 8 if is64 else 4
    fmt = "<Q" if is64 else "<I"
    xr = exec_ranges(elf)
    best = (0, None, None)
    for seg in elf.loads():
        data = elf.data[seg["offset"]:seg["offset"] + seg["filesz"]]
        vals = [v for (v,) in struct.iter_unpack(fmt, data[:len(data) // ptr * ptr])]
        run = 0
        for i, v in enumerate(vals + [0]):
            ok = False
            if v and in_ranges(xr, v):
                fo = _file_off(elf, v)
                if fo is not None and elf.data[fo] == 0xE8:
                    (rel,) = struct.unpack_from("<i", elf.data, fo + 1)
                    ok = ((v + 5 + rel) & ((1 << (8 * ptr)) - 1)) == fentry
            if ok:
                run += 1
            else:
                if run > best[0]:
                    start = i - run
                    best = (run, seg["vaddr"] + start * ptr,
                            data[start * ptr:i * ptr])
                run = 0
    return best[1], best[2]


JUMP_INSNS = (b"\xeb", b"\xe9", b"\x66\x90", b"\x89\xf6", b"\x0f\x1f\x44\x00\x00",
              b"\x3e\x8d\x74\x26\x00")


def scan_jump_table(elf, min_entries=64):
    """Find __jump_table without symbols: the longest run of {s32 code, s32 target, long key}
    entries whose code and target are in executable sections, whose key (relative, low
    2 bits are flags) is in a data section and whose code holds a jump-label
    instruction (jmp8/jmp32/nop2/nop5). Returns (vaddr, bytes)."""
    is64 = elf.cls == 2
    esz = 16 if is64 else 12
    xr = exec_ranges(elf)
    # static_key objects live in data (.data, .bss, .data..ro_after_init, .init.data ...)
    dr = [(s["addr"], s["addr"] + s["size"]) for s in elf.sections
          if s["flags"] & 0x2 and not s["flags"] & SHF_EXECINSTR and s["size"] and s["addr"]]
    mask = (1 << (64 if is64 else 32)) - 1

    def good(seg, off):
        va = seg["vaddr"] + off
        code, target = struct.unpack_from("<ii", elf.data, seg["offset"] + off)
        ca, ta = (va + code) & mask, (va + 4 + target) & mask
        if not (in_ranges(xr, ca) and in_ranges(xr, ta)):
            return False
        (key,) = struct.unpack_from("<q" if is64 else "<i", elf.data, seg["offset"] + off + 8)
        if not in_ranges(dr, ((va + 8 + key) & mask) & ~3):
            return False
        fo = _file_off(elf, ca)
        return fo is not None and any(elf.data[fo:fo + len(j)] == j for j in JUMP_INSNS)

    best = (0, None, None)
    for seg in elf.loads():
        n = seg["filesz"]
        for phase in range(0, esz, 4):
            run = 0
            off = phase
            while off + esz <= n:
                if good(seg, off):
                    run += 1
                else:
                    if run > best[0]:
                        st = off - run * esz
                        best = (run, seg["vaddr"] + st,
                                elf.data[seg["offset"] + st:seg["offset"] + off])
                    run = 0
                off += esz
            if run > best[0]:
                st = off - run * esz
                best = (run, seg["vaddr"] + st, elf.data[seg["offset"] + st:seg["offset"] + off])
    if best[0] < min_entries:
        return None, None
    return best[1], best[2]


def _file_off(elf, vaddr):
    for s in elf.loads():
        if s["vaddr"] <= vaddr < s["vaddr"] + s["filesz"]:
            return vaddr - s["vaddr"] + s["offset"]
    return None


def cached_scan(elf, key, fn):
    """Run a table scan once per vmlinux: results go to VMLINUX.scan.json (if writable)."""
    path = elf.path + ".scan.json"
    st = os.stat(elf.path)
    tag = f"{st.st_size}:{int(st.st_mtime)}"
    cache = {}
    try:
        with open(path) as f:
            cache = json.load(f)
        if cache.get("tag") != tag:
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        a, n = cache[key]
        if a is None:
            return None, None
        o = _file_off(elf, a)
        return a, elf.data[o:o + n]
    a, data = fn()
    cache["tag"] = tag
    cache[key] = [a, len(data) if data else 0]
    try:
        with open(path, "w") as f:
            json.dump(cache, f)
    except OSError:
        pass
    return a, data


def load_sites(elf, ks, heuristics=True):
    """Build the site intervals from the vmlinux tables (+ kallsyms for symbol-bounded ones)."""
    is64 = elf.cls == 2
    ptr = 8 if is64 else 4
    secs = {s["name"]: s for s in elf.sections}
    sites = Sites()
    counts = {}

    def file_off(vaddr):
        for s in elf.loads():
            if s["vaddr"] <= vaddr < s["vaddr"] + s["filesz"]:
                return vaddr - s["vaddr"] + s["offset"]
        return None

    def sec_bytes(name):
        s = secs.get(name)
        if not s:
            return None, None
        return s["addr"], elf.data[s["offset"]:s["offset"] + s["size"]]

    def sym_bytes(start_sym, stop_sym):
        if ks is None:
            return None, None
        a, b = ks.get(start_sym), ks.get(stop_sym)
        if a is None or b is None or b < a:
            return None, None
        o = file_off(a)
        if o is None:
            return None, None
        return a, elf.data[o:o + (b - a)]

    def orig(vaddr, n):
        o = file_off(vaddr)
        return elf.data[o:o + n] if o is not None else b""

    def insn_len(vaddr, default=5):
        b = orig(vaddr, 2)
        if len(b) == 2 and b[0] == 0x0F and 0x80 <= b[1] <= 0x8F:
            return 6  # jcc rel32
        if len(b) >= 1 and b[0] in (0xEB, 0x70 + 0, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77,
                                    0x78, 0x79, 0x7A, 0x7B, 0x7C, 0x7D, 0x7E, 0x7F):
            return 2
        if b[:2] == b"\x66\x90":
            return 2
        return default

    # .altinstructions: s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen; u8 replen
    base, data = sec_bytes(".altinstructions")
    n = 0
    if data:
        for i in range(0, len(data) - 11, 12):
            ioff, _roff, _cpuid, ilen, _rlen = struct.unpack_from("<iiHBB", data, i)
            sites.add(base + i + ioff, ilen, "alt")
            n += 1
    counts["alt"] = n

    # .parainstructions: u8 *instr; u8 type; u8 len; (padded to pointer size)
    base, data = sec_bytes(".parainstructions")
    n = 0
    if data:
        esz = 16 if is64 else 8
        fmt = "<QBB" if is64 else "<IBB"
        for i in range(0, len(data) - esz + 1, esz):
            instr, _typ, ln = struct.unpack_from(fmt, data, i)
            sites.add(instr, ln, "para")
            n += 1
    counts["para"] = n

    # s32 self-relative lists
    for sec, cls in ((".smp_locks", "lock"), (".retpoline_sites", "retpoline"),
                     (".return_sites", "return")):
        base, data = sec_bytes(sec)
        n = 0
        if data:
            for i in range(0, len(data) - 3, 4):
                (off,) = struct.unpack_from("<i", data, i)
                if off == 0:
                    continue
                a = base + i + off
                sites.add(a, 1 if cls == "lock" else insn_len(a), cls)
                n += 1
        counts[cls] = n

    if ks is not None:
        # __mcount_loc: unsigned long absolute addresses of "call __fentry__"
        a, data = sym_bytes("__start_mcount_loc", "__stop_mcount_loc")
        if data is None and heuristics and ks.get("__fentry__"):
            a, data = cached_scan(elf, f"mcount_loc:{ks.get('__fentry__')}",
                                  lambda: scan_mcount_loc(elf, ks.get("__fentry__")))
            if data:
                counts["mcount_loc_found_by_scan"] = hex(a)
        n = 0
        if data:
            fmt = "<Q" if is64 else "<I"
            for i in range(0, len(data) - ptr + 1, ptr):
                (addr,) = struct.unpack_from(fmt, data, i)
                if addr:
                    sites.add(addr, 5, "mcount")
                    n += 1
        counts["mcount"] = n

        # __jump_table: s32 code; s32 target; long key (relative, x86)
        a, data = sym_bytes("__start___jump_table", "__stop___jump_table")
        if data is None and heuristics:
            a, data = cached_scan(elf, "jump_table", lambda: scan_jump_table(elf))
            if data:
                counts["jump_table_found_by_scan"] = hex(a)
        n = 0
        if data:
            esz = 16 if is64 else 12
            for i in range(0, len(data) - esz + 1, esz):
                (code,) = struct.unpack_from("<i", data, i)
                addr = (a + i + code) & ((1 << (8 * ptr)) - 1)
                head = orig(addr, 2)
                ln = 2 if head[:1] == b"\xeb" or head in (b"\x66\x90", b"\x89\xf6") else 5
                sites.add(addr, ln, "jump")
                n += 1
        counts["jump"] = n

        # .static_call_sites: s32 addr; s32 key
        a, data = sym_bytes("__start_static_call_sites", "__stop_static_call_sites")
        n = 0
        if data:
            for i in range(0, len(data) - 7, 8):
                (off,) = struct.unpack_from("<i", data, i)
                addr = (a + i + off) & ((1 << (8 * ptr)) - 1)
                sites.add(addr, 5, "static_call")
                n += 1
        counts["static_call"] = n

        # static call trampolines __SCT__*: 8 bytes each (jmp rel32 / ret; + "SCT" signature)
        n = 0
        for name, addr in ks.by_name.items():
            if name.startswith("__SCT__"):
                sites.add(addr, 8, "sct")
                n += 1
        counts["sct"] = n

    sites.freeze()
    return sites, counts


def load_sites_gtsites(args, side):
    from gtsites import Kernel, load_symbols
    k = Kernel(args.vmlinux)
    delta = int(side.get("kaslr_delta", "0x0"), 16) if side and side.get("boot") == "run" else 0
    k.syms = load_symbols(args.vmlinux, args.kallsyms, delta, None, k.size, k.link_virt_base) \
        if args.kallsyms else None
    sites = Sites()
    counts = {}
    for cls, lst in k.tables().items():
        for a, n, _ in lst:
            sites.add(a, n, cls)
        counts[cls] = len(lst)
    sites.freeze()
    return sites, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vmlinux")
    ap.add_argument("dump")
    ap.add_argument("--phys-base")
    ap.add_argument("--kallsyms")
    ap.add_argument("--json")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--max-list", type=int, default=0, help="stop listing after N ranges (0 = all)")
    ap.add_argument("--sections")
    ap.add_argument("--base-dump", help="compare DUMP against this other dump (same image, "
                    "same phys_base) instead of against the vmlinux file: e.g. two boots of "
                    "the same configuration (determinism) or smp1 vs smp2")
    ap.add_argument("--no-scan", action="store_true",
                    help="do not search for __mcount_loc / __jump_table when kallsyms lacks "
                         "their bounds (kernels without CONFIG_KALLSYMS_ALL)")
    args = ap.parse_args()

    elf = Elf(args.vmlinux)
    dump = read_maybe_zst(args.dump)
    side = sidecar_for(args.dump)
    if args.phys_base:
        phys_base = int(args.phys_base, 0)
    elif side:
        # gtboot.py's dumps start at the image's first byte wherever KASLR put it physically
        phys_base = int(side.get("link_phys_base", side["phys_base"]), 0)
    else:
        phys_base = elf.load_range()[0]

    base_dump = read_maybe_zst(args.base_dump) if args.base_dump else None
    if base_dump is not None and len(base_dump) != len(dump):
        sys.exit("--base-dump has a different size")
    ks = Kallsyms(args.kallsyms) if args.kallsyms else None
    if ks is not None and elf.cls == 2 or (side and "link_virt_base" in side):
        # the tables of every line (6.1 and 6.12) as gtsites.py reads them
        sites, site_counts = load_sites_gtsites(args, side)
    else:
        sites, site_counts = load_sites(elf, ks, heuristics=not args.no_scan)

    want = set(args.sections.split(",")) if args.sections else None
    secs = [s for s in elf.sections
            if s["type"] == SHT_PROGBITS and s["flags"] & SHF_EXECINSTR and s["size"]
            and (want is None or s["name"] in want)]

    ranges = []
    summary = {}
    for s in secs:
        paddr = elf.virt_to_phys(s["addr"])
        doff = paddr - phys_base
        if paddr is None or doff < 0 or doff + s["size"] > len(dump):
            print(f"warning: {s['name']} not covered by the dump", file=sys.stderr)
            continue
        if base_dump is not None:
            orig = base_dump[doff:doff + s["size"]]
        else:
            orig = elf.data[s["offset"]:s["offset"] + s["size"]]
        new = dump[doff:doff + s["size"]]
        nr = nb = 0
        by_cls = {}
        for a, b in diff_ranges(orig, new):
            va = s["addr"] + a
            r = {"section": s["name"], "vaddr": va, "paddr": paddr + a, "len": b - a,
                 "orig": orig[a:b].hex(), "new": new[a:b].hex()}
            if sites.items:
                cls = set()
                for k in range(va, va + (b - a)):
                    c = "+".join(sorted(sites.classes_at(k))) or "unknown"
                    by_cls[c] = by_cls.get(c, 0) + 1  # bytes per class
                    cls.add(c)
                r["class"] = ",".join(sorted(cls))
            if ks is not None:
                r["sym"] = ks.sym(va)
            ranges.append(r)
            nr += 1
            nb += b - a
        summary[s["name"]] = {"vaddr": s["addr"], "size": s["size"], "ranges": nr,
                              "bytes": nb, "bytes_by_class": by_cls}

    hexw = 16 if elf.cls == 2 else 8
    print(f"vmlinux {args.vmlinux}")
    print(f"dump    {args.dump} (phys_base 0x{phys_base:x}, {len(dump)} bytes)")
    if base_dump is not None:
        print(f"against {args.base_dump} (not the vmlinux file); 'orig' below = that dump")
    if side:
        print(f"boot    cpu={side.get('cpu')} smp={side.get('smp')} accel={side.get('accel')}")
    print("site tables: " + ", ".join(f"{k}={v}" for k, v in site_counts.items()))
    if args.list:
        for i, r in enumerate(ranges):
            if args.max_list and i >= args.max_list:
                print(f"... ({len(ranges) - i} more)")
                break
            o, nw = r["orig"], r["new"]
            if len(o) > 32:
                o, nw = o[:32] + "..", nw[:32] + ".."
            print(f"{r['vaddr']:0{hexw}x} +{r['len']:<3d} {r['section']:<22s} "
                  f"{r.get('class', ''):<14s} {r.get('sym', ''):<40s} {o} -> {nw}")
    tot_r = tot_b = 0
    tot_cls = {}
    print(f"{'section':<24s} {'size':>9s} {'ranges':>8s} {'bytes':>8s}  differing bytes by class")
    for name, v in summary.items():
        tot_r += v["ranges"]
        tot_b += v["bytes"]
        for c, k in v["bytes_by_class"].items():
            tot_cls[c] = tot_cls.get(c, 0) + k
        bc = " ".join(f"{c}={k}" for c, k in sorted(v["bytes_by_class"].items()))
        print(f"{name:<24s} {v['size']:>9d} {v['ranges']:>8d} {v['bytes']:>8d}  {bc}")
    bc = " ".join(f"{c}={k}" for c, k in sorted(tot_cls.items()))
    print(f"{'TOTAL':<24s} {'':>9s} {tot_r:>8d} {tot_b:>8d}  {bc}")
    if sites.items:
        unk = tot_cls.get("unknown", 0)
        print(f"unexplained differing bytes (no known patch site): {unk}")

    if args.json:
        out = {"vmlinux": args.vmlinux, "dump": args.dump, "phys_base": phys_base,
               "site_tables": site_counts, "summary": summary, "ranges": ranges,
               "boot": side}
        if args.json == "-":
            json.dump(out, sys.stdout, indent=None)
        else:
            with open(args.json, "w") as f:
                json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
