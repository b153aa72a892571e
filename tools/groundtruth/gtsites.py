#!/usr/bin/env python3
"""gtsites.py - every boot-time text writer's sites in an extracted vmlinux (Linux 6.1 and 6.12).

Library for gtwhole.py, gttruth.py, gtdiff.py and gtcheck.py; as a script it prints the tables:

  gtsites.py VMLINUX [--kallsyms FILE [--delta D]] [--system-map FILE]

Site classes (each a list of (link vaddr, length, extra)):
  alt          .altinstructions: 12-byte entries before 6.3 (u16 cpuid), 14-byte from 6.3 on
               (u32 ft_flags); s32 instr_offset (self-relative), instrlen at +10 / +12
  para         .parainstructions (6.1 only): {ptr instr; u8 type; u8 len} padded to 16 / 8 bytes
  lock         .smp_locks: s32 self-relative, 1 byte (the 0xf0 prefix)
  retpoline    .retpoline_sites: s32 self-relative, 5 (call/jmp) or 6 (jcc) bytes
  return       .return_sites: s32 self-relative, 5 or 6 bytes
  call         .call_sites (6.12): s32 self-relative call instructions, 5 bytes (call depth tracking)
  endbr        .ibt_endbr_seal (6.12): s32 self-relative ENDBR64, 4 bytes
  runtime_const  runtime_ptr_<sym> (8-byte immediates) / runtime_shift_<sym> (1 byte) (6.12)
  mcount       __start_mcount_loc..__stop_mcount_loc: absolute pointers to "call __fentry__", 5 bytes
  jump         __start___jump_table..__stop___jump_table: {s32 code; s32 target; long key}
               (key self-relative, bit 0 = branch, bit 1 = init), 2 or 5 bytes
  static_call  __start_static_call_sites..__stop_static_call_sites: {s32 addr; s32 key}
               (key self-relative, bit 0 = tail call, bit 1 = init), 5 bytes
  sct          __SCT__<name> static call trampolines (symbols), 8 bytes
  callthunk    the 16 padding bytes before every function (6.12 with CONFIG_CALL_PADDING: where
               call depth tracking writes its accounting thunks)
The symbol-bounded classes need symbols: kallsyms (from the guest; KASLR addresses are taken back
to link addresses with --delta) and/or a System.map of the same build (the -dbg package).
"""

import argparse
import bisect
import os
import re
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402
from gtreloc import Relocs  # noqa: E402

SHF_EXECINSTR = 0x4
SHT_PROGBITS = 1
NOP5_64 = bytes.fromhex("0f1f440000")
NOP5_32 = bytes.fromhex("3e8d742600")
NOPS = {bytes.fromhex("6690"), NOP5_64, NOP5_32, bytes.fromhex("8d742600"), bytes.fromhex("89f6"),
        bytes.fromhex("90")}


def read_maybe_zst(path):
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq", path], check=True, stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


class Symbols:
    """Symbols at link addresses: functions (t/T/w/W) for naming, all for lookups by name/address."""

    def __init__(self):
        self.by_name = {}
        self.by_addr = {}
        self.funcs = []
        self.all = []

    def add_file(self, path, delta=0, lo=None, hi=None, only_missing=False):
        """Add a kallsyms / System.map. Addresses in [lo, hi) (the runtime image) get -delta."""
        text = read_maybe_zst(path).decode("ascii", "replace")
        n = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or len(parts[1]) != 1:
                continue
            if len(parts) > 3:  # module symbols "[mod]"
                continue
            try:
                a = int(parts[0], 16)
            except ValueError:
                continue
            if delta and lo is not None and lo <= a < hi:
                a -= delta
            name, t = parts[2], parts[1]
            if only_missing and name in self.by_name:
                continue
            self.by_name.setdefault(name, a)
            self.by_addr.setdefault(a, name)
            self.all.append((a, name))
            if t in "tTwW" and a:
                self.funcs.append((a, name))
            n += 1
        self.funcs.sort()
        self._fa = [a for a, _ in self.funcs]
        self.all.sort()
        self._aa = [a for a, _ in self.all]
        return n

    def get(self, name):
        return self.by_name.get(name)

    def sym(self, addr):
        i = bisect.bisect_right(self._fa, addr) - 1
        if i < 0:
            return "?"
        a, n = self.funcs[i]
        return f"{n}+0x{addr - a:x}"

    def anysym(self, addr):
        """Nearest symbol of any type at or before addr (data objects, e.g. a static key)."""
        i = bisect.bisect_right(self._aa, addr) - 1
        if i < 0:
            return f"0x{addr:x}"
        a, n = self.all[i]
        return n if a == addr else f"{n}+0x{addr - a:x}"

    def func_starts(self):
        return sorted(set(self._fa))


def kernel_version(elf):
    m = re.search(rb"Linux version (\d+)\.(\d+)\.(\d+)", elf.data)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


class Kernel:
    """An extracted vmlinux: its memory image (laid out by p_paddr), relocations and site tables."""

    def __init__(self, path, symbols=None):
        self.path = path
        self.elf = Elf(path)
        self.rel = Relocs(self.elf)
        self.is64 = self.elf.cls == 2
        self.ptr = 8 if self.is64 else 4
        self.mask = (1 << (8 * self.ptr)) - 1
        self.version = kernel_version(self.elf)
        self.image = bytes(self.rel.image())
        loads = self.elf.loads()
        first = min(loads, key=lambda s: s["paddr"])
        self.link_virt_base = first["vaddr"]  # link address of image offset 0
        self.size = self.rel.size
        self.secs = {s["name"]: s for s in self.elf.sections}
        self.syms = symbols

    # ------------------------------------------------------------------ addresses
    def off(self, vaddr):
        """Image offset of a link address (not for the x86-64 per-CPU segment)."""
        o = vaddr - self.link_virt_base
        return o if 0 <= o < self.size else None

    def orig(self, vaddr, n):
        o = self.off(vaddr)
        return self.image[o:o + n] if o is not None else b""

    def exec_sections(self):
        return [s for s in self.elf.sections
                if s["type"] == SHT_PROGBITS and s["flags"] & SHF_EXECINSTR and s["size"]]

    def sec_bytes(self, name):
        s = self.secs.get(name)
        if not s or not s["size"]:
            return None, b""
        o = self.off(s["addr"])
        if o is None:
            return None, b""
        return s["addr"], self.image[o:o + s["size"]]

    def sym_range(self, start, stop):
        if self.syms is None:
            return None, b""
        a, b = self.syms.get(start), self.syms.get(stop)
        if a is None or b is None or b < a:
            return None, b""
        o = self.off(a)
        return a, self.image[o:o + (b - a)]

    def insn_len(self, vaddr):
        """Length of the call/jmp/jcc rel32 at a retpoline/return site; with
        -mindirect-branch-cs-prefix the compiler puts a CS prefix (2e) on the branch to a
        retpoline thunk: 'cs jmp __x86_indirect_thunk_r10' is 6 bytes."""
        b = self.orig(vaddr, 3)
        pre = 0
        while b[pre:pre + 1] == b"\x2e":
            pre += 1
            b = self.orig(vaddr, pre + 2)
        b = b[pre:]
        if len(b) == 2 and b[0] == 0x0F and 0x80 <= b[1] <= 0x8F:
            return pre + 6
        return pre + 5

    # ------------------------------------------------------------------ tables
    def alt_entry_size(self):
        return 14 if self.version >= (6, 3, 0) else 12

    def tables(self):
        """{class: [(vaddr, length, extra)]} in table order."""
        if hasattr(self, "_tables"):
            return self._tables
        t = {}
        m = self.mask
        base, data = self.sec_bytes(".altinstructions")
        esz = self.alt_entry_size()
        lo = []
        for i in range(0, len(data) - esz + 1, esz):
            (ioff,) = struct.unpack_from("<i", data, i)
            ilen = data[i + esz - 2]
            lo.append(((base + i + ioff) & m, ilen, i // esz))
        t["alt"] = lo
        base, data = self.sec_bytes(".parainstructions")
        lo = []
        if data:
            pe, fmt = (16, "<QBB") if self.is64 else (8, "<IBB")
            for i in range(0, len(data) - pe + 1, pe):
                instr, typ, ln = struct.unpack_from(fmt, data, i)
                lo.append((instr, ln, typ))
        t["para"] = lo
        for sec, cls in ((".smp_locks", "lock"), (".retpoline_sites", "retpoline"),
                         (".return_sites", "return"), (".call_sites", "call"),
                         (".ibt_endbr_seal", "endbr")):
            base, data = self.sec_bytes(sec)
            lo = []
            for i in range(0, len(data) - 3, 4):
                (off,) = struct.unpack_from("<i", data, i)
                if off == 0:
                    continue
                a = (base + i + off) & m
                ln = {"lock": 1, "call": 5, "endbr": 4}.get(cls) or self.insn_len(a)
                lo.append((a, ln, i // 4))
            t[cls] = lo
        lo = []
        for name, s in self.secs.items():
            for prefix, ln in (("runtime_ptr_", 8), ("runtime_shift_", 1)):
                if name.startswith(prefix):
                    base, data = self.sec_bytes(name)
                    for i in range(0, len(data) - 3, 4):
                        (off,) = struct.unpack_from("<i", data, i)
                        lo.append(((base + i + off) & m, ln, name[len("runtime_"):]))
        t["runtime_const"] = lo
        # symbol-bounded tables
        a, data = self.sym_range("__start_mcount_loc", "__stop_mcount_loc")
        fmt = "<Q" if self.is64 else "<I"
        t["mcount"] = [(v, 5, None) for (v,) in struct.iter_unpack(fmt, data[:len(data) // self.ptr * self.ptr]) if v]
        a, data = self.sym_range("__start___jump_table", "__stop___jump_table")
        je = 16 if self.is64 else 12
        lo = []
        for i in range(0, len(data) - je + 1, je):
            code, target = struct.unpack_from("<ii", data, i)
            (key,) = struct.unpack_from("<q" if self.is64 else "<i", data, i + 8)
            ea = a + i
            ca, ta = (ea + code) & m, (ea + 4 + target) & m
            kv = (ea + 8 + key) & m
            head = self.orig(ca, 2)
            ln = 2 if head[:1] == b"\xeb" or head in (b"\x66\x90", b"\x89\xf6") else 5
            lo.append((ca, ln, {"target": ta, "key": kv & ~3, "branch": kv & 1, "init": (kv >> 1) & 1}))
        t["jump"] = lo
        a, data = self.sym_range("__start_static_call_sites", "__stop_static_call_sites")
        lo = []
        for i in range(0, len(data) - 7, 8):
            off, key = struct.unpack_from("<ii", data, i)
            sa = (a + i + off) & m
            kv = (a + i + 4 + key) & m
            lo.append((sa, 5, {"key": kv & ~3, "tail": kv & 1, "init": (kv >> 1) & 1}))
        t["static_call"] = lo
        lo = []
        if self.syms is not None:
            for name, addr in self.syms.by_name.items():
                if name.startswith("__SCT__") and self.off(addr) is not None:
                    lo.append((addr, 8, name[len("__SCT__"):]))
        lo.sort()
        t["sct"] = lo
        lo = []
        if self.version >= (6, 2, 0) and self.syms is not None and self.syms.get("__call_sites") is not None \
                or ".call_sites" in self.secs:
            # CONFIG_CALL_PADDING: 16 bytes of padding before each function
            tx = self.secs[".text"]
            for f in self.syms.func_starts() if self.syms else []:
                if tx["addr"] + 16 <= f < tx["addr"] + tx["size"]:
                    lo.append((f - 16, 16, None))
        t["callthunk"] = lo
        self._tables = t
        return t

    def site_index(self, classes=None):
        return SiteIndex(self.tables(), classes)


class SiteIndex:
    """Which classes cover a byte: sorted intervals with a bounded backwards search."""

    def __init__(self, tables, classes=None):
        items = []
        for cls, lst in tables.items():
            if classes and cls not in classes:
                continue
            for a, n, _ in lst:
                items.append((a, a + n, cls))
        items.sort()
        self.items = items
        self.starts = [s for s, _, _ in items]
        self.maxlen = max((e - s for s, e, _ in items), default=0)

    def classes_at(self, addr):
        out = set()
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and self.items[i][0] > addr - self.maxlen - 1:
            s, e, c = self.items[i]
            if s <= addr < e:
                out.add(c)
            i -= 1
        return out


def load_symbols(kernel_path, kallsyms=None, delta=0, system_map=None, size=None, link_base=None):
    """Symbols at link addresses from the guest's kallsyms (KASLR: minus delta inside the runtime
    image) and, for what kallsyms lacks (no CONFIG_KALLSYMS_ALL on 686), a System.map."""
    s = Symbols()
    if kallsyms:
        lo = hi = None
        if delta and link_base is not None:
            lo, hi = link_base + delta, link_base + delta + size
        s.add_file(kallsyms, delta, lo, hi)
    if system_map and os.path.exists(system_map):
        s.add_file(system_map, only_missing=bool(kallsyms))
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vmlinux")
    ap.add_argument("--kallsyms")
    ap.add_argument("--delta", default="0")
    ap.add_argument("--system-map")
    args = ap.parse_args()
    k = Kernel(args.vmlinux)
    k.syms = load_symbols(args.vmlinux, args.kallsyms, int(args.delta, 0), args.system_map, k.size, k.link_virt_base)
    print(f"{args.vmlinux}: Linux {'.'.join(map(str, k.version))}, {'ELF64' if k.is64 else 'ELF32'}, "
          f"alt_instr {k.alt_entry_size()} bytes")
    for cls, lst in k.tables().items():
        print(f"  {cls:<14s} {len(lst):>7d} sites, {sum(n for _, n, _ in lst):>8d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
