#!/usr/bin/env python3
"""gtmodules.py - boot a real kernel under QEMU, load real modules, dump their text (module ground truth).

The initramfs holds init/gtinit.c's /init and the modules, with /modules/order ("FILE NAME" per
line, dependencies first). /init loads each with finit_module(), prints the return codes (block
"modload"), /sys/module/NAME/sections/* (blocks "sections_NAME", one ".text: 0x..." line per
section), /proc/modules, the kernel log and /proc/kallsyms, then "@@GT-READY@@". The host stops the
VM (QMP "stop") and saves every executable section of each module that is still mapped (not
.init.*: the loader frees them once the module's init returned) with QMP "memsave" (a guest
*virtual* address, translated through CPU 0's page tables; the CPUs idle in the kernel, whose page
tables map the module area).

Usage:
  gtmodules.py --image VMLINUZ --cpu MODEL [--smp N] [--kaslr] [--cmdline "EXTRA"] MODULE.ko...

  MODULE.ko    the modules, in load order (a module's dependencies before it)
  --name CFG   configuration name (default <cpu>-smp<N>[+<arg>...][+kaslr], as gtboot.py)
  --timeout S  boot timeout (default 900)

Outputs (<image> = file name without "vmlinuz-"):
  DATA_DIR/<image>/<cfg>/boot.txt           command line, KASLR, _stext, the preempt mode the boot printed
                                            (PREEMPT_DYNAMIC), modules, QEMU command, seconds
  DATA_DIR/<image>/<cfg>/cpuinfo            the guest's /proc/cpuinfo
  DATA_DIR/<image>/<cfg>/<NAME>.sections    /sys/module/NAME/sections as "SECTION ADDRESS" lines
  DATA_DIR/<image>/<cfg>/<NAME>.text.sha256 "<section> <address> <size> <sha256>" per saved section
  DATA_DIR/<image>/<cfg>/<NAME>.<section>.gz  the saved bytes (gzip -9), for the executable sections
  CACHE_DIR/<image>/modules-<cfg>/          serial log, kallsyms, modules (zstd)
DATA_DIR defaults to <repo>/tests/data/groundtruth-modules, CACHE_DIR to $GT_CACHE or /work/gt-cache.
"""

import argparse
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from gtlib import Elf  # noqa: E402
import gtboot  # noqa: E402

SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4


def module_name(path):
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko"):
        if base.endswith(ext):
            base = base[:-len(ext)]
    return base.replace("-", "_")


def percpu_base(ko, name, kallsyms):
    """The module's per-CPU base (mod->percpu), which sysfs does not show: a symbol of its .data..percpu
    in /proc/kallsyms (module per-CPU symbols are listed at base + value) minus its value; None without one."""
    elf = Elf(ko)
    idx = [i for i, s in enumerate(elf.sections) if s.get("name") == ".data..percpu"]
    if not idx:
        return None
    out = subprocess.run(["readelf", "-sW", ko], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) == 8 and f[6] == str(idx[0]) and f[3] == "OBJECT":
            m = re.search(r"^([0-9a-f]+) \w " + re.escape(f[7]) + r"\t\[" + re.escape(name) + r"\]$", kallsyms, re.M)
            if m:
                return int(m.group(1), 16) - int(f[1], 16)
    return None


def decompressed(work, path):
    """A .ko.xz/.ko.zst as a plain .ko in WORK (gtinit.c calls finit_module() without
    MODULE_INIT_COMPRESSED_FILE; the kernel would load the same bytes either way)."""
    base = os.path.basename(path)
    for ext, tool in ((".ko.xz", ["xz", "-dc"]), (".ko.zst", ["zstd", "-dcq"])):
        if base.endswith(ext):
            os.makedirs(os.path.join(work, "ko"), exist_ok=True)
            out = os.path.join(work, "ko", base[:-len(ext)] + ".ko")
            with open(out, "wb") as f:
                subprocess.run(tool + [path], stdout=f, check=True)
            return out
    return path


def build_initrd(work, modules):
    root = os.path.join(work, "root")
    for d in ("proc", "sys", "dev", "modules"):
        os.makedirs(os.path.join(root, d))
    subprocess.run(["gcc", "-m64", "-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
                    "-fno-pie", "-no-pie", "-Wall", "-o", os.path.join(root, "init"),
                    os.path.join(HERE, "init", "gtinit.c")], check=True)
    lines = []
    for m in modules:
        shutil.copy(m, os.path.join(root, "modules", os.path.basename(m)))
        lines.append(f"{os.path.basename(m)} {module_name(m)}")
    with open(os.path.join(root, "modules", "order"), "w") as f:
        f.write("\n".join(lines) + "\n")
    files = subprocess.run("find . | LC_ALL=C sort", shell=True, cwd=root, check=True, capture_output=True).stdout
    out = os.path.join(work, "modinit.cpio")
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--owner", "0:0", "--quiet"], cwd=root, input=files, stdout=f, check=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True)
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--kaslr", action="store_true")
    ap.add_argument("--cmdline", default="")
    ap.add_argument("--name")
    ap.add_argument("--mem", default="512M")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--cache-dir", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--data-dir", default=os.path.join(REPO, "tests", "data", "groundtruth-modules"))
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("modules", nargs="+")
    args = ap.parse_args()
    args.accel = "tcg"
    args.image = os.path.realpath(args.image)
    image_name = os.path.basename(args.image)
    image_name = image_name[len("vmlinuz-"):] if image_name.startswith("vmlinuz-") else image_name
    args.append = " ".join(["console=ttyS0"] + ([] if args.kaslr else ["nokaslr"]) + ["panic=0"] + args.cmdline.split())
    cfg = args.name or gtboot.config_name(args.cpu, args.smp, args.cmdline, args.kaslr)
    cdir = os.path.join(args.cache_dir, image_name, "modules-" + cfg)
    ddir = os.path.join(args.data_dir, image_name, cfg)
    os.makedirs(cdir, exist_ok=True)
    os.makedirs(ddir, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="gtmod.") as work:
        files = [decompressed(work, m) for m in args.modules]
        initrd = build_initrd(work, files)
        serial = os.path.join(work, "serial.log")
        sock = os.path.join(work, "qmp.sock")
        errp = os.path.join(work, "qemu.stderr")
        cmd, proc = gtboot.start_qemu(args, ["-initrd", initrd], serial, sock, errp)
        gtboot.log(cfg, f"module boot: {' '.join(cmd)}")
        t0 = time.time()
        q = None
        try:
            q = gtboot.wait_qmp_socket(sock, proc)
            st = gtboot.wait_serial(serial, r"@@GT-READY@@", r"Kernel panic - not syncing", args.timeout, proc)
            secs = time.time() - t0
            text = gtboot.read_serial(serial)
            subprocess.run(["zstd", "-q", "-19", "-f", serial, "-o", os.path.join(cdir, "serial.log.zst")], check=True)
            if st != "ok":
                raise RuntimeError(f"no @@GT-READY@@ ({st} after {secs:.1f}s); tail:\n" + "\n".join(text.splitlines()[-15:]))
            blocks = gtboot.split_blocks(text)
            for line in blocks.get("modload", "").splitlines():
                name, rc = line.split()
                if rc != "0":
                    raise RuntimeError(f"finit_module({name}) = {rc}")
            ks = blocks["kallsyms"]
            stext = gtboot.kallsyms_addr(ks, "_stext")
            q.cmd("stop")
            saved = []
            for m, ko in zip(args.modules, files):
                name = module_name(m)
                sec_text = blocks.get("sections_" + name)
                if not sec_text:
                    raise RuntimeError(f"no sections block for {name}")
                addrs = {}
                for line in sec_text.splitlines():
                    k, v = line.split(": ", 1)
                    addrs[k] = int(v.strip(), 16)
                pcpu = percpu_base(ko, name, ks)
                with open(os.path.join(ddir, f"{name}.sections"), "w") as f:
                    for k in sorted(addrs, key=lambda k: (addrs[k], k)):
                        f.write(f"{k} 0x{addrs[k]:x}\n")
                    if pcpu is not None:
                        f.write(f"# not in sysfs: the per-CPU base, from a per-CPU symbol in /proc/kallsyms\n.data..percpu 0x{pcpu:x}\n")
                elf = Elf(ko)
                sums = []
                for s in elf.sections:
                    if not (s["flags"] & SHF_ALLOC and s["flags"] & SHF_EXECINSTR) or s["size"] == 0:
                        continue
                    if s["name"].startswith(".init") or s["name"] not in addrs:
                        continue
                    raw = os.path.join(work, f"{name}{s['name']}.bin")
                    q.cmd("memsave", {"val": addrs[s["name"]] - (1 << 64 if addrs[s["name"]] >= 1 << 63 else 0), "size": s["size"], "filename": raw, "cpu-index": 0})
                    data = open(raw, "rb").read()
                    if len(data) != s["size"]:
                        raise RuntimeError(f"short memsave of {name} {s['name']}")
                    sums.append(f"{s['name']} 0x{addrs[s['name']]:x} {s['size']} {hashlib.sha256(data).hexdigest()}")
                    with gzip.GzipFile(os.path.join(ddir, f"{name}{s['name']}.gz"), "wb", 9, mtime=0) as g:
                        g.write(data)
                    saved.append(f"{name}{s['name']}")
                with open(os.path.join(ddir, f"{name}.text.sha256"), "w") as f:
                    f.write("\n".join(sums) + "\n")
            gtboot.stop_qemu(proc, q)
            q = None
            with open(os.path.join(ddir, "cpuinfo"), "w") as f:
                f.write(blocks["cpuinfo"])
            with open(os.path.join(work, "kallsyms.txt"), "w") as f:
                f.write(ks)
            subprocess.run(["zstd", "-q", "-19", "-f", os.path.join(work, "kallsyms.txt"), "-o", os.path.join(cdir, "kallsyms.zst")], check=True)
            with open(os.path.join(ddir, "boot.txt"), "w") as f:
                f.write(f"image: {os.path.basename(args.image)}\nconfig: {cfg}\ncpu: {args.cpu}\nsmp: {args.smp}\n")
                f.write(f"kernel_cmdline: {blocks['cmdline'].strip()}\nkaslr: {'yes' if args.kaslr else 'no'}\n")
                f.write(f"stext: 0x{stext:x}\n")
                pm = re.search(r"Dynamic Preempt: (\w+)", text)
                if pm:
                    f.write(f"preempt: {pm.group(1)}\n")
                f.write("modules: " + " ".join(module_name(m) for m in args.modules) + "\n")
                f.write("module_files: " + " ".join(os.path.relpath(m, os.path.dirname(os.path.dirname(m))) for m in args.modules) + "\n")
                f.write("proc_modules: " + " | ".join(blocks.get("modules", "").splitlines()) + "\n")
                f.write(f"seconds_to_ready: {secs:.1f}\n")
                f.write("qemu_command: " + gtboot.scrub(cmd, work) + "\n")
            gtboot.log(cfg, f"saved {len(saved)} sections in {time.time() - t0:.0f}s: {' '.join(saved)}")
        finally:
            if q is not None or proc.poll() is None:
                gtboot.stop_qemu(proc, q)


if __name__ == "__main__":
    main()
