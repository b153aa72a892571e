#!/usr/bin/env python3
"""gtreloc.py - the relocation the x86 bzImage decompressor applies under KASLR, in Python.

The decompressed payload of a bzImage is `vmlinux.bin.all` = the stripped vmlinux ELF followed by
`vmlinux.relocs` (arch/x86/boot/compressed/Makefile, CONFIG_X86_NEED_RELOCS); scripts/extract-vmlinux
writes exactly these bytes. arch/x86/boot/compressed/misc.c: parse_elf() copies every PT_LOAD to
output + (p_paddr - LOAD_PHYSICAL_ADDR), then handle_relocations() walks the table BACKWARDS from the
last 4 bytes of the payload (all entries are little-endian u32 link-time virtual addresses of the
field to fix, sign-extended to 64 bits on x86-64; a 0 ends each list):

    x86-64:  ... ELF ... | 0 | 64-bit entries | 0 | inverse 32-bit entries | 0 | 32-bit entries |END
    i386:    ... ELF ... | 0 | 32-bit entries |END

  32-bit entry:          *(u32 *)field += delta
  inverse 32-bit entry:  *(s32 *)field -= delta          (x86-64 only)
  64-bit entry:          *(u64 *)field += delta          (x86-64 only)

where the field is at physical offset (entry - __START_KERNEL_map) from LOAD_PHYSICAL_ADDR, i.e. at
image offset entry - __START_KERNEL_map - LOAD_PHYSICAL_ADDR (= entry - link address of _text on
both of our layouts), and
  x86-64: delta = the virtual KASLR offset (virt_addr - LOAD_PHYSICAL_ADDR; physical placement is
          independent and needs no relocation: the kernel finds phys_base at run time);
  i386:   delta = the physical load offset (min_addr - LOAD_PHYSICAL_ADDR; virt = phys + PAGE_OFFSET).
If delta is 0 nothing is done ("No relocation needed"). Each entry must lie in [_text, __bss_start)
(the decompressor errors out otherwise).

Usage:
  gtreloc.py VMLINUX                      summary: counts per kind, where the entries point
  gtreloc.py VMLINUX --delta D --out F    write the relocated memory image (PT_LOADs laid out by
                                          p_paddr from the lowest one, .bss zero) for delta D
  gtreloc.py VMLINUX --check DUMP         relocate for the delta recorded in DUMP's sidecar
                                          (run.json / panic.json) and compare .text with the dump:
                                          prints the differing bytes before and after relocation
"""

import argparse
import bisect
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402


class Relocs:
    """The relocation table at the end of an extracted vmlinux (vmlinux.bin.all)."""

    def __init__(self, elf):
        self.elf = elf
        d = elf.data
        self.is64 = elf.cls == 2
        # ELF end: the section header table is the last thing objcopy writes.
        elf_end = max(elf.e_shoff + elf.e_shnum * elf.e_shentsize,
                      max(s["offset"] + s["filesz"] for s in elf.segments))
        self.elf_end = elf_end
        pos = len(d) - 4
        lists = []
        nlists = 3 if self.is64 else 1
        for _ in range(nlists):
            cur = []
            while True:
                if pos < elf_end:
                    raise ValueError(f"{elf.path}: relocation table runs into the ELF (no terminator)")
                (v,) = struct.unpack_from("<I", d, pos)
                pos -= 4
                if v == 0:
                    break
                cur.append(v)
            lists.append(cur)
        self.table_start = pos + 4  # offset of the first terminator (lowest byte of the table)
        if self.table_start != elf_end:
            raise ValueError(f"{elf.path}: {self.table_start - elf_end} bytes between the ELF end "
                             f"(0x{elf_end:x}) and the relocation table (0x{self.table_start:x})")
        if self.is64:
            self.r32, self.r32inv, self.r64 = lists
        else:
            (self.r32,), self.r32inv, self.r64 = lists, [], []
        text = next(s for s in elf.sections if s["name"] == ".text")
        self.link_text = text["addr"]
        self.text_paddr = elf.virt_to_phys(text["addr"])
        self.start_kernel_map = text["addr"] - self.text_paddr
        loads = elf.loads()
        self.link_phys_base = min(s["paddr"] for s in loads)
        self.size = max(s["paddr"] + s["memsz"] for s in loads) - self.link_phys_base

    def sext(self, v):
        if self.is64 and v & 0x80000000:
            return v | 0xFFFFFFFF00000000
        return v

    def offset(self, v):
        """Image offset (from the lowest p_paddr) of the field named by entry v."""
        return self.sext(v) - self.start_kernel_map - self.link_phys_base

    def image(self):
        """The memory image as parse_elf() lays it out (p_paddr order; memsz beyond filesz zero)."""
        img = bytearray(self.size)
        for s in self.elf.loads():
            o = s["paddr"] - self.link_phys_base
            img[o:o + s["filesz"]] = self.elf.data[s["offset"]:s["offset"] + s["filesz"]]
        return img

    def apply(self, img, delta):
        """Relocate img (from image()) in place for delta, as handle_relocations() does."""
        if delta == 0:
            return img
        m32 = 0xFFFFFFFF
        for v in self.r32:
            o = self.offset(v)
            (x,) = struct.unpack_from("<I", img, o)
            struct.pack_into("<I", img, o, (x + delta) & m32)
        for v in self.r32inv:
            o = self.offset(v)
            (x,) = struct.unpack_from("<I", img, o)
            struct.pack_into("<I", img, o, (x - delta) & m32)
        for v in self.r64:
            o = self.offset(v)
            (x,) = struct.unpack_from("<Q", img, o)
            struct.pack_into("<Q", img, o, (x + delta) & 0xFFFFFFFFFFFFFFFF)
        return img

    def fields(self, lo_off, hi_off):
        """(offset, width) of every relocated field within image offsets [lo_off, hi_off)."""
        out = []
        for lst, w in ((self.r32, 4), (self.r32inv, 4), (self.r64, 8)):
            for v in lst:
                o = self.offset(v)
                if lo_off <= o < hi_off:
                    out.append((o, w))
        out.sort()
        return out


def section_counts(rel):
    secs = sorted((s["addr"], s["addr"] + s["size"], s["name"]) for s in rel.elf.sections
                  if s["addr"] and s["size"])
    starts = [a for a, _, _ in secs]
    out = {}
    for kind, lst in (("32", rel.r32), ("inv32", rel.r32inv), ("64", rel.r64)):
        for v in lst:
            a = rel.sext(v)
            i = bisect.bisect_right(starts, a) - 1
            name = secs[i][2] if i >= 0 and secs[i][0] <= a < secs[i][1] else "?"
            out.setdefault(name, {}).setdefault(kind, 0)
            out[name][kind] += 1
    return out


def load_dump(path):
    import subprocess
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dcq", path], check=True, stdout=subprocess.PIPE).stdout
    with open(path, "rb") as f:
        return f.read()


def sidecar(dump_path):
    d = os.path.dirname(dump_path)
    b = os.path.basename(dump_path).split(".")[0]
    for c in (os.path.join(d, b + ".json"), dump_path + ".json"):
        if os.path.exists(c):
            with open(c) as f:
                return json.load(f)
    raise FileNotFoundError(f"no sidecar for {dump_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vmlinux")
    ap.add_argument("--delta")
    ap.add_argument("--out")
    ap.add_argument("--check")
    args = ap.parse_args()
    elf = Elf(args.vmlinux)
    rel = Relocs(elf)
    print(f"{args.vmlinux}: ELF ends at 0x{rel.elf_end:x}, relocation table 0x{rel.table_start:x}.."
          f"0x{len(elf.data):x} ({len(elf.data) - rel.table_start} bytes)")
    print(f"  32-bit: {len(rel.r32)}  inverse 32-bit: {len(rel.r32inv)}  64-bit: {len(rel.r64)}")
    print(f"  __START_KERNEL_map 0x{rel.start_kernel_map:x}, _text 0x{rel.link_text:x}, image "
          f"0x{rel.link_phys_base:x}+0x{rel.size:x}")
    for name, c in sorted(section_counts(rel).items(), key=lambda kv: -sum(kv[1].values())):
        print(f"    {name:<28s} " + " ".join(f"{k}={v}" for k, v in c.items()))
    bad = [v for lst in (rel.r32, rel.r32inv, rel.r64) for v in lst
           if not 0 <= rel.offset(v) < rel.size]
    if bad:
        print(f"  {len(bad)} entries outside the image, e.g. 0x{bad[0]:x}")
        return 1
    if args.out:
        img = rel.apply(rel.image(), int(args.delta or "0", 0))
        with open(args.out, "wb") as f:
            f.write(img)
        print(f"wrote {args.out}")
    if args.check:
        side = sidecar(args.check)
        delta = int(side["kaslr_delta"], 16)
        dump = load_dump(args.check)
        text = next(s for s in elf.sections if s["name"] == ".text")
        lo = text["addr"] - int(side["link_virt_base"], 16)
        hi = lo + text["size"]
        plain = rel.image()
        n0 = sum(1 for a, b in zip(plain[lo:hi], dump[lo:hi]) if a != b)
        img = rel.apply(bytearray(plain), delta)
        n1 = sum(1 for a, b in zip(img[lo:hi], dump[lo:hi]) if a != b)
        nf = len(rel.fields(lo, hi))
        print(f"{args.check}: delta 0x{delta:x}; .text bytes differing from the vmlinux: {n0} unrelocated, "
              f"{n1} relocated ({nf} relocated fields in .text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
