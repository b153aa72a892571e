#!/usr/bin/env python3
"""Helpers for tools/groundtruth (stdlib only, Python >= 3.8).

Sub-commands (used by boot-and-dump.sh, usable by hand):

  load-range VMLINUX            print "PHYS_START PHYS_END VIRT_START ELFCLASS" of the
                                PT_LOAD segments (the range to pmemsave)
  segments VMLINUX              print the PT_LOAD segments as JSON
  qmp SOCKET CMD...             run QMP commands on a QEMU QMP unix socket;
                                each CMD is "name" or "name:{json arguments}"
  split-serial LOG OUTDIR       cut the @@GT-BEGIN x@@ ... @@GT-END x@@ blocks of a
                                serial log into OUTDIR/x.txt (CR removed); exit 1 if
                                the cpuinfo block is missing
  wait-serial LOG PATTERN TIMEOUT [PID]
                                wait until LOG contains PATTERN (a regex); exit 0 when
                                found, 2 on timeout, 3 if PID has exited
"""

import json
import os
import re
import socket
import struct
import sys
import time

PT_LOAD = 1


# --------------------------------------------------------------------------- ELF

class Elf:
    """Minimal ELF32/ELF64 little-endian reader (program + section headers)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        if d[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        self.cls = d[4]  # 1 = ELF32, 2 = ELF64
        if d[5] != 1:
            raise ValueError(f"{path}: not little-endian")
        if self.cls == 2:
            (self.e_type, self.e_machine, _, self.e_entry, self.e_phoff, self.e_shoff, _,
             _, self.e_phentsize, self.e_phnum, self.e_shentsize, self.e_shnum,
             self.e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", d, 16)
        else:
            (self.e_type, self.e_machine, _, self.e_entry, self.e_phoff, self.e_shoff, _,
             _, self.e_phentsize, self.e_phnum, self.e_shentsize, self.e_shnum,
             self.e_shstrndx) = struct.unpack_from("<HHIIIIIHHHHHH", d, 16)
        self.segments = []
        for i in range(self.e_phnum):
            off = self.e_phoff + i * self.e_phentsize
            if self.cls == 2:
                p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = \
                    struct.unpack_from("<IIQQQQQQ", d, off)
            else:
                p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = \
                    struct.unpack_from("<IIIIIIII", d, off)
            self.segments.append(dict(type=p_type, flags=p_flags, offset=p_offset,
                                      vaddr=p_vaddr, paddr=p_paddr, filesz=p_filesz,
                                      memsz=p_memsz, align=p_align))
        self.sections = []
        for i in range(self.e_shnum):
            off = self.e_shoff + i * self.e_shentsize
            if self.cls == 2:
                (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
                 sh_addralign, sh_entsize) = struct.unpack_from("<IIQQQQIIQQ", d, off)
            else:
                (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info,
                 sh_addralign, sh_entsize) = struct.unpack_from("<IIIIIIIIII", d, off)
            self.sections.append(dict(name_off=sh_name, type=sh_type, flags=sh_flags,
                                      addr=sh_addr, offset=sh_offset, size=sh_size))
        if self.sections and self.e_shstrndx < len(self.sections):
            strtab = self.sections[self.e_shstrndx]
            for s in self.sections:
                o = strtab["offset"] + s["name_off"]
                s["name"] = d[o:d.index(b"\0", o)].decode("ascii", "replace")
        else:
            for s in self.sections:
                s["name"] = ""

    def loads(self):
        return [s for s in self.segments if s["type"] == PT_LOAD]

    def virt_to_phys(self, vaddr):
        """Map a link-time virtual address to its load (physical) address."""
        for s in self.loads():
            if s["vaddr"] <= vaddr < s["vaddr"] + s["memsz"]:
                return vaddr - s["vaddr"] + s["paddr"]
        return None

    def load_range(self):
        ls = self.loads()
        start = min(s["paddr"] for s in ls)
        end = max(s["paddr"] + s["memsz"] for s in ls)
        first = min(ls, key=lambda s: s["paddr"])
        return start, end, first["vaddr"] - (first["paddr"] - start)


# --------------------------------------------------------------------------- QMP

class Qmp:
    def __init__(self, path, timeout=120.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self._read_msg()  # greeting
        self.cmd("qmp_capabilities")

    def _read_msg(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read_msg()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error']}")
            return r.get("return")


# --------------------------------------------------------------------------- main

def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    sub = argv[1]
    if sub == "load-range":
        e = Elf(argv[2])
        start, end, vstart = e.load_range()
        print(f"0x{start:x} 0x{end:x} 0x{vstart:x} {'elf64' if e.cls == 2 else 'elf32'}")
        return 0
    if sub == "segments":
        e = Elf(argv[2])
        print(json.dumps([{k: (hex(v) if k in ("vaddr", "paddr", "offset", "filesz", "memsz") else v)
                           for k, v in s.items()} for s in e.loads()], indent=1))
        return 0
    if sub == "qmp":
        q = Qmp(argv[2])
        for c in argv[3:]:
            name, _, js = c.partition(":")
            ret = q.cmd(name, json.loads(js) if js else None)
            if ret:
                print(json.dumps(ret) if not isinstance(ret, str) else ret)
        return 0
    if sub == "split-serial":
        log, outdir = argv[2], argv[3]
        text = open(log, "rb").read().decode("utf-8", "replace").replace("\r", "")
        os.makedirs(outdir, exist_ok=True)
        found = {}
        for m in re.finditer(r"@@GT-BEGIN (\w+)@@\n(.*?)@@GT-END \1@@", text, re.S):
            found[m.group(1)] = m.group(2)
        for k, v in found.items():
            with open(os.path.join(outdir, k + ".txt"), "w") as f:
                f.write(v)
        print(" ".join(sorted(found)))
        return 0 if "cpuinfo" in found else 1
    if sub == "wait-serial":
        log, pat, timeout = argv[2], re.compile(argv[3].encode()), float(argv[4])
        pid = int(argv[5]) if len(argv) > 5 else None
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with open(log, "rb") as f:
                    if pat.search(f.read()):
                        return 0
            except FileNotFoundError:
                pass
            if pid is not None:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return 3
            time.sleep(0.2)
        return 2
    print(f"unknown sub-command {sub}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
