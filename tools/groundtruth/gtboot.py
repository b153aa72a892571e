#!/usr/bin/env python3
"""gtboot.py - boot one real kernel image under QEMU and dump its text (ground truth).

One configuration = image x -cpu x -smp x kernel command line x KASLR on/off. Two kinds of boot,
both with the same QEMU machine, CPU model, vCPU count, accelerator and command line:

  run    With the gtinit initramfs. The guest boots to user space; /init (init/gtinit.c) prints
         /proc/version, /proc/cmdline, /proc/cpuinfo, /proc/iomem, the CPU vulnerability files,
         the kernel log and /proc/kallsyms on ttyS0, then "@@GT-READY@@", and waits. The host
         stops the VM (QMP "stop") and pmemsave's the kernel image's physical range starting at
         the "Kernel code" address of /proc/iomem: the text of a RUNNING kernel (after the
         initcalls, free_initmem(), mark_rodata_ro(), with whatever jump labels / static calls
         the drivers flipped). Under KASLR the randomized addresses come from the guest itself
         (_text in kallsyms, Kernel code in iomem); gva2gpa over the monitor cross-checks them.
         --core also writes an ELF core with "dump-guest-memory -p" (PT_LOADs with kernel virtual
         addresses, like /proc/kcore), restricted to the kernel image's physical range
         (--core full: all guest memory).
  panic  Without initramfs and root device: the kernel panics in mount_root() after all
         boot-time patching, before free_initmem() (.init.text intact). The host waits for the
         end of the panic report, stops the VM and pmemsave's the image. Under KASLR the virtual
         offset comes from the panic's "Kernel Offset:" line and the physical address from the
         monitor's gva2gpa.

Usage:
  gtboot.py --image VMLINUZ --cpu MODEL [--smp N] [--kaslr] [--cmdline "EXTRA ARGS"]
            [--mode both|run|panic|cpuinfo] [--core [filtered|full]] [options]

  --image PATH      the bzImage
  --cpu MODEL       QEMU -cpu model (Haswell, Skylake-Client, Icelake-Server, EPYC-Rome, qemu64...)
  --smp N           vCPUs (default 1)
  --kaslr           boot without "nokaslr" (default: nokaslr)
  --cmdline STR     extra kernel arguments, after "console=ttyS0 [nokaslr] panic=0"
  --append STR      the whole kernel command line instead (KASLR is on unless it says nokaslr)
  --name CFG        configuration name (default: <cpu>-smp<N>[+<arg>...][+kaslr], '=' -> '-',
                    ',' '/' -> '_'; e.g. Haswell-smp2+mitigations-off+kaslr)
  --mode M          both (run + panic, default), run, panic, or cpuinfo (run boot without dumps)
  --core [KIND]     with the run boot, also an ELF core: filtered (default) or full
  --mem SIZE        guest RAM (default 512M)
  --accel A         tcg (default) or kvm
  --timeout SEC     per boot (default 600)
  --cache-dir DIR   large outputs (default $GT_CACHE or /work/gt-cache)
  --data-dir DIR    small outputs to commit (default <repo>/tests/data/groundtruth)
  --source DIR      kernel source for scripts/extract-vmlinux (default $GT_LINUX_SRC, else
                    /work/ref/linux-source-<6.1|6.12> by the image's version)
  --qemu BIN        default qemu-system-x86_64
  --keep-raw        keep the uncompressed dumps next to the .zst
  --force           redo boots whose outputs exist (default: skip them)

Outputs (<image> = file name without "vmlinuz-", <cfg> = configuration name):
  DATA_DIR/<image>/<cfg>/boot.txt     command line, KASLR, _text/_stext, physical base, QEMU
                                      command and warnings, vulnerabilities, timings (both boots)
  DATA_DIR/<image>/<cfg>/cpuinfo      the guest's /proc/cpuinfo (run boot), verbatim
  DATA_DIR/<image>/<cfg>/dmesg        kernel log of the run boot (syslog READ_ALL at /init)
  DATA_DIR/<image>/<cfg>/panic.dmesg.gz  serial log of the panic boot, up to the panic (gzip)
  CACHE_DIR/<image>/vmlinux           extracted vmlinux (+ the relocs table at its end)
  CACHE_DIR/<image>/<cfg>/run.phys.zst, run.json       runtime dump + sidecar
  CACHE_DIR/<image>/<cfg>/run.core.zst                 ELF core (--core)
  CACHE_DIR/<image>/<cfg>/panic.phys.zst, panic.json   panic-point dump + sidecar
  CACHE_DIR/<image>/<cfg>/kallsyms.zst, iomem.txt      from the run boot
  CACHE_DIR/<image>/<cfg>/run-serial.log.zst, panic-serial.log.zst
Exit status 0 when every requested boot produced its dump.
"""

import argparse
import hashlib
import json
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
from gtlib import Elf, Qmp  # noqa: E402

BASE_ARGS = "console=ttyS0"


def log(cfg, msg):
    print(f"[{time.strftime('%H:%M:%S')}] {cfg}: {msg}", file=sys.stderr, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_name(cpu, smp, extra, kaslr):
    tag = re.sub(r"[,/=]", lambda m: "-" if m.group(0) == "=" else "_", cpu)
    name = f"{tag}-smp{smp}"
    for a in extra.split():
        name += "+" + a.replace("=", "-").replace(",", "_").replace("/", "_")
    if kaslr:
        name += "+kaslr"
    return name


def default_source(image_name):
    if os.environ.get("GT_LINUX_SRC"):
        return os.environ["GT_LINUX_SRC"]
    m = re.match(r"(\d+\.\d+)", image_name)
    return f"/work/ref/linux-source-{m.group(1) if m else '6.1'}"


def ensure_vmlinux(image, cdir, src, cfg):
    vml = os.path.join(cdir, "vmlinux")
    if not os.path.exists(vml) or os.path.getsize(vml) == 0:
        log(cfg, f"extracting vmlinux with {src}/scripts/extract-vmlinux")
        with open(vml + ".tmp", "wb") as f:
            subprocess.run(["bash", os.path.join(src, "scripts", "extract-vmlinux"), image], stdout=f, check=True)
        os.replace(vml + ".tmp", vml)
    return vml


def ensure_initrd(cache_dir, arch, cfg):
    d = os.path.join(cache_dir, "initramfs")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, f"gtinit-{arch}.cpio")
    src = os.path.join(HERE, "init", "gtinit.c")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    log(cfg, f"building {out}")
    with tempfile.TemporaryDirectory() as t:
        root = os.path.join(t, "root")
        os.makedirs(os.path.join(root, "proc"))
        os.makedirs(os.path.join(root, "sys"))
        os.makedirs(os.path.join(root, "dev"))
        subprocess.run(["gcc", "-m64" if arch == "x86_64" else "-m32", "-Os", "-static", "-nostdlib",
                        "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie", "-Wall",
                        "-o", os.path.join(root, "init"), src], check=True)
        files = subprocess.run("find . | LC_ALL=C sort", shell=True, cwd=root, check=True,
                               capture_output=True).stdout
        with open(out + ".tmp", "wb") as f:
            subprocess.run(["cpio", "-o", "-H", "newc", "--owner", "0:0", "--quiet"], cwd=root,
                           input=files, stdout=f, check=True)
    os.replace(out + ".tmp", out)
    return out


def split_blocks(text):
    return {m.group(1): m.group(2) for m in
            re.finditer(r"@@GT-BEGIN (\w+)@@\n(.*?)@@GT-END \1@@", text, re.S)}


def read_serial(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def wait_serial(path, ok_pat, bad_pat, timeout, proc):
    """Wait until the serial log matches ok_pat (returns 'ok'), bad_pat ('bad'), QEMU exits
    ('exit') or the timeout passes ('timeout')."""
    deadline = time.time() + timeout
    ok, bad = re.compile(ok_pat), re.compile(bad_pat) if bad_pat else None
    while time.time() < deadline:
        t = read_serial(path)
        if ok.search(t):
            return "ok"
        if bad and bad.search(t):
            # give the report a moment to complete
            time.sleep(1.0)
            return "bad"
        if proc.poll() is not None:
            return "exit"
        time.sleep(0.2)
    return "timeout"


def hmp(q, line):
    return q.cmd("human-monitor-command", {"command-line": line})


def gva2gpa(q, vaddr):
    r = hmp(q, f"gva2gpa 0x{vaddr:x}")
    m = re.search(r"gpa:\s*0x([0-9a-fA-F]+)", r or "")
    if not m:
        raise RuntimeError(f"gva2gpa 0x{vaddr:x}: {r!r}")
    return int(m.group(1), 16)


def wait_qmp_socket(path, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            try:
                return Qmp(path)
            except (ConnectionRefusedError, FileNotFoundError, EOFError):
                pass
        if proc.poll() is not None:
            raise RuntimeError("QEMU exited before its QMP socket came up")
        time.sleep(0.1)
    raise RuntimeError("no QMP socket")


def zstd(src, dst, level=10):
    subprocess.run(["zstd", "-q", f"-{level}", "-T2", "-f", src, "-o", dst], check=True)


def image_geometry(vml):
    """Link-time geometry of the kernel image: the physical range to dump (all PT_LOADs), the
    link virtual address of its first byte, and the link address of _text (the .text section)."""
    e = Elf(vml)
    start, end, vstart = e.load_range()
    text = next(s for s in e.sections if s["name"] == ".text")
    # the banner's offset in the memory image (p_paddr layout from the lowest PT_LOAD)
    banner = None
    for seg in e.loads():
        data = e.data[seg["offset"]:seg["offset"] + seg["filesz"]]
        i = data.find(b"Linux version ")
        if i >= 0:
            j = data.index(b"\n", i)
            banner = (seg["paddr"] - start + i, data[i:j + 1])
            break
    return e, {"elf_class": "elf64" if e.cls == 2 else "elf32", "link_phys_base": start,
               "size": end - start, "link_virt_base": vstart, "link_text": text["addr"], "banner": banner}


def banner_ok(raw, geo):
    """The dump holds the image: its "Linux version ..." banner (in .rodata, never relocated) is at
    the same offset as in the vmlinux."""
    off, banner = geo["banner"]
    with open(raw, "rb") as f:
        f.seek(off)
        return f.read(len(banner)) == banner


def mem_bytes(mem):
    m = re.fullmatch(r"(\d+)([KMGT]?)", mem.upper().rstrip("B"))
    return int(m.group(1)) << {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def find_image(q, work, geo, cfg, mem):
    """Physical address of the image's first byte: search guest RAM for the banner."""
    off, banner = geo["banner"]
    ram = os.path.join(work, "ram")
    size = min(mem_bytes(mem), 3 << 30)
    q.cmd("pmemsave", {"val": 0, "size": size, "filename": ram})
    with open(ram, "rb") as f:
        data = f.read()
    os.unlink(ram)
    cands = []
    i = data.find(banner)
    while i >= 0:
        base = i - off
        if base >= 0 and base % 0x200000 == 0:
            cands.append(base)
        i = data.find(banner, i + 1)
    log(cfg, f"banner search: image candidates at {[hex(c) for c in cands]}")
    if len(cands) != 1:
        raise RuntimeError(f"banner search found {len(cands)} 2 MiB-aligned candidates")
    return cands[0]


def kallsyms_addr(ks_text, name):
    m = re.search(r"^([0-9a-f]+) \w " + re.escape(name) + r"$", ks_text, re.M)
    return int(m.group(1), 16) if m else None


def start_qemu(args, extra, serial, sock, stderr_path):
    cmd = [args.qemu, "-machine", "pc", "-accel", args.accel, "-cpu", args.cpu, "-smp", str(args.smp),
           "-m", args.mem, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-kernel", args.image] + extra + ["-append", args.append, "-serial", f"file:{serial}",
                                             "-qmp", f"unix:{sock},server=on,wait=off"]
    err = open(stderr_path, "wb")
    return cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def stop_qemu(proc, q=None):
    try:
        if q is not None:
            q.cmd("quit")
    except Exception:  # noqa: BLE001 - quitting; the socket may close under us
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrub(cmd, work):
    return " ".join(cmd).replace(work + "/", "")


def run_boot(args, geo, work, cdir, ddir, cfg, initrd, arch, want_dump):
    serial = os.path.join(work, "run-serial.log")
    sock = os.path.join(work, "run-qmp.sock")
    errp = os.path.join(work, "run-qemu.stderr")
    cmd, proc = start_qemu(args, ["-initrd", initrd], serial, sock, errp)
    log(cfg, f"run boot: {' '.join(cmd)}")
    t0 = time.time()
    q = None
    try:
        q = wait_qmp_socket(sock, proc)
        st = wait_serial(serial, r"@@GT-READY@@", r"Kernel panic - not syncing",
                         args.timeout, proc)
        secs_ready = time.time() - t0
        text = read_serial(serial)
        subprocess.run(["zstd", "-q", "-19", "-f", serial, "-o", os.path.join(cdir, "run-serial.log.zst")], check=True)
        if st != "ok":
            raise RuntimeError(f"run boot: no @@GT-READY@@ ({st} after {secs_ready:.1f}s); tail:\n"
                               + "\n".join(text.splitlines()[-15:]))
        blocks = split_blocks(text)
        for need in ("cpuinfo", "kallsyms", "iomem", "cmdline"):
            if need not in blocks:
                raise RuntimeError(f"run boot: no {need} block in the serial log")
        ks = blocks["kallsyms"]
        text_v = kallsyms_addr(ks, "_text")
        stext_v = kallsyms_addr(ks, "_stext")
        etext_v = kallsyms_addr(ks, "_etext")
        m = re.search(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Kernel code$", blocks["iomem"], re.M)
        if text_v is None or not m:
            raise RuntimeError("run boot: no _text in kallsyms or no 'Kernel code' in iomem")
        phys_text = int(m.group(1), 16)
        delta = text_v - geo["link_text"]
        phys_base = phys_text - (geo["link_text"] - geo["link_virt_base"])
        info = {"boot": "run", "kaslr_delta": delta, "runtime_text": text_v, "runtime_stext": stext_v,
                "runtime_etext": etext_v, "phys_base": phys_base, "phys_text_iomem": phys_text,
                "iomem_kernel": re.findall(r"^\s*([0-9a-f]+-[0-9a-f]+) : (Kernel \w+)$", blocks["iomem"], re.M),
                "seconds_to_ready": round(secs_ready, 1)}
        if want_dump:
            hmp_pa = gva2gpa(q, text_v)
            info["phys_text_gva2gpa"] = hmp_pa
            if hmp_pa != phys_text:
                raise RuntimeError(f"gva2gpa(_text) = {hmp_pa:#x} but iomem says {phys_text:#x}")
            q.cmd("stop")
            raw = os.path.join(work, "run.phys")
            q.cmd("pmemsave", {"val": phys_base, "size": geo["size"], "filename": raw})
            if os.path.getsize(raw) != geo["size"]:
                raise RuntimeError("short pmemsave")
            if not banner_ok(raw, geo):
                raise RuntimeError("the kernel banner is not where the image should be in the dump")
            if args.core:
                core = os.path.join(work, "run.core")
                dargs = {"paging": True, "protocol": f"file:{core}"}
                if args.core == "filtered":
                    dargs.update({"begin": phys_base, "length": geo["size"]})
                tc = time.time()
                q.cmd("dump-guest-memory", dargs)
                os.chmod(core, 0o644)  # QEMU creates it 0400
                info["core"] = {"kind": args.core, "bytes": os.path.getsize(core), "sha256": sha256(core),
                                "seconds": round(time.time() - tc, 1),
                                "qmp": "dump-guest-memory " + json.dumps({k: v for k, v in dargs.items() if k != "protocol"})}
                zstd(core, os.path.join(cdir, "run.core.zst"), 10)
                if args.keep_raw:
                    shutil.move(core, os.path.join(cdir, "run.core"))
            info["dump_sha256"] = sha256(raw)
            zstd(raw, os.path.join(cdir, "run.phys.zst"))
            if args.keep_raw:
                shutil.move(raw, os.path.join(cdir, "run.phys"))
        stop_qemu(proc, q)
        q = None
        info["seconds_total"] = round(time.time() - t0, 1)
        info["qemu_command"] = scrub(cmd, work).replace(initrd, f"gtinit-{arch}.cpio")
        info["qemu_stderr"] = open(errp, "rb").read().decode("utf-8", "replace")
        # small data files
        with open(os.path.join(ddir, "cpuinfo"), "w") as f:
            f.write(blocks["cpuinfo"])
        with open(os.path.join(ddir, "dmesg"), "w") as f:
            f.write(blocks.get("dmesg", ""))
        with open(os.path.join(cdir, "iomem.txt"), "w") as f:
            f.write(blocks["iomem"])
        with open(os.path.join(work, "kallsyms.txt"), "w") as f:
            f.write(ks)
        zstd(os.path.join(work, "kallsyms.txt"), os.path.join(cdir, "kallsyms.zst"), 19)
        info["guest_version"] = blocks.get("version", "").strip()
        info["guest_cmdline"] = blocks["cmdline"].strip()
        info["vulnerabilities"] = blocks.get("vulns", "")
        return info
    finally:
        if q is not None or proc.poll() is None:
            stop_qemu(proc, q)


def panic_boot(args, geo, work, cdir, ddir, cfg):
    serial = os.path.join(work, "panic-serial.log")
    sock = os.path.join(work, "panic-qmp.sock")
    errp = os.path.join(work, "panic-qemu.stderr")
    cmd, proc = start_qemu(args, [], serial, sock, errp)
    log(cfg, f"panic boot: {' '.join(cmd)}")
    t0 = time.time()
    q = None
    try:
        q = wait_qmp_socket(sock, proc)
        st = wait_serial(serial, r"end Kernel panic - not syncing", None, args.timeout, proc)
        secs = time.time() - t0
        text = read_serial(serial)
        subprocess.run(["zstd", "-q", "-19", "-f", serial, "-o", os.path.join(cdir, "panic-serial.log.zst")], check=True)
        if st != "ok":
            raise RuntimeError(f"panic boot: no panic ({st} after {secs:.1f}s); tail:\n" + "\n".join(text.splitlines()[-15:]))
        pl = re.search(r"Kernel panic - not syncing: (.*)", text).group(1)
        if "VFS: Unable to mount root fs" not in pl:
            raise RuntimeError(f"panic boot: unexpected panic: {pl}")
        time.sleep(1.0)  # let the panic path settle (it only spins in panic() from now on)
        q.cmd("stop")
        m = re.search(r"Kernel Offset: 0x([0-9a-f]+) from 0x([0-9a-f]+)", text)
        delta = int(m.group(1), 16) if m else 0
        text_v = geo["link_text"] + delta
        phys_text = gva2gpa(q, text_v)
        phys_base = phys_text - (geo["link_text"] - geo["link_virt_base"])
        raw = os.path.join(work, "panic.phys")
        q.cmd("pmemsave", {"val": phys_base, "size": geo["size"], "filename": raw})
        if os.path.getsize(raw) != geo["size"]:
            raise RuntimeError("short pmemsave")
        located = "Kernel Offset line + gva2gpa(_text)"
        if not banner_ok(raw, geo):
            # i386: the panic says "Kernel Offset: disabled" even when the decompressor moved the
            # kernel, and 0xc1000000 is a valid lowmem address whatever the kernel's place, so
            # gva2gpa proves nothing. Find the image in guest RAM by its banner instead.
            phys_base = find_image(q, work, geo, cfg, args.mem)
            delta = phys_base - geo["link_phys_base"] if geo["elf_class"] == "elf32" else delta
            text_v = geo["link_text"] + delta
            phys_text = phys_base + (geo["link_text"] - geo["link_virt_base"])
            q.cmd("pmemsave", {"val": phys_base, "size": geo["size"], "filename": raw})
            located = "banner search in guest RAM"
            if not banner_ok(raw, geo):
                raise RuntimeError("the kernel banner is not where the image should be")
        stop_qemu(proc, q)
        q = None
        info = {"boot": "panic", "kaslr_delta": delta, "runtime_text": text_v, "phys_base": phys_base,
                "located_by": located,
                "phys_text_gva2gpa": phys_text, "kernel_offset_line": m.group(0) if m else None,
                "panic": pl.strip(), "seconds_to_panic": round(secs, 1), "dump_sha256": sha256(raw)}
        zstd(raw, os.path.join(cdir, "panic.phys.zst"))
        if args.keep_raw:
            shutil.move(raw, os.path.join(cdir, "panic.phys"))
        info["seconds_total"] = round(time.time() - t0, 1)
        info["qemu_command"] = scrub(cmd, work)
        info["qemu_stderr"] = open(errp, "rb").read().decode("utf-8", "replace")
        end = text.find("---[ end Kernel panic")
        end = text.find("\n", end) + 1 if end >= 0 else len(text)
        import gzip
        with gzip.GzipFile(os.path.join(ddir, "panic.dmesg.gz"), "wb", compresslevel=9, mtime=0) as f:
            f.write(text[:end].encode())
        return info
    finally:
        if q is not None or proc.poll() is None:
            stop_qemu(proc, q)


def write_sidecar(path, args, geo, vml, info, cfg, image_name):
    meta = {
        "what": ("guest physical memory of the kernel image in a RUNNING kernel (user space reached: "
                 "after initcalls and free_initmem())" if info["boot"] == "run" else
                 "guest physical memory of the kernel image at the VFS mount_root panic (after "
                 "alternative_instructions() and the initcalls, before free_initmem())"),
        "format": "zstd-compressed raw bytes of guest physical [phys_base, phys_base + size): the image's "
                  "PT_LOADs, byte 0 = link address link_virt_base (+ kaslr_delta at run time)",
        "image": os.path.abspath(args.image), "image_name": image_name, "config": cfg,
        "image_sha256": sha256(args.image), "vmlinux": vml, "vmlinux_sha256": sha256(vml),
        "elf_class": geo["elf_class"], "size": geo["size"],
        "link_phys_base": hex(geo["link_phys_base"]), "link_virt_base": hex(geo["link_virt_base"]),
        "link_text": hex(geo["link_text"]),
        "kaslr": "nokaslr" not in args.append.split(), "kaslr_delta": hex(info["kaslr_delta"]),
        "phys_base": hex(info["phys_base"]),
        "runtime_virt_base": hex(geo["link_virt_base"] + info["kaslr_delta"]),
        # compatibility with gtdiff/gtcheck: link vaddr v is at offset v - virt_minus_phys - phys_base
        "virt_minus_phys": hex(geo["link_virt_base"] - info["phys_base"]),
        "cpu": args.cpu, "smp": args.smp, "accel": args.accel, "mem": args.mem,
        "kernel_cmdline": args.append,
        "qemu_version": subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for k, v in info.items():
        if k in ("vulnerabilities",):
            continue
        if k.startswith(("runtime_", "phys_")) and isinstance(v, int):
            v = hex(v)
        if k == "kaslr_delta":
            continue
        meta.setdefault(k, v)
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(path + ".tmp", path)
    return meta


def write_boot_txt(path, args, cfg, image_name, run_meta, panic_meta, vulns):
    def h(x):
        return x if isinstance(x, str) else (hex(x) if x is not None else "-")
    lines = ["# ground-truth configuration (tools/groundtruth/gtboot.py); see docs/groundtruth.md",
             f"image: {image_name}", f"image_sha256: {sha256(args.image)}", f"config: {cfg}",
             f"cpu: {args.cpu}", f"smp: {args.smp}", f"accel: {args.accel}", f"mem: {args.mem}",
             f"kernel_cmdline: {args.append}", f"kaslr: {'yes' if 'nokaslr' not in args.append.split() else 'no'}"]
    for tag, m in (("run", run_meta), ("panic", panic_meta)):
        if not m:
            continue
        lines += [f"{tag}.guest_cmdline: {m.get('guest_cmdline', '-')}" if tag == "run" else None,
                  f"{tag}.guest_version: {m.get('guest_version')}" if tag == "run" else None,
                  f"{tag}.kaslr_delta: {m['kaslr_delta']}",
                  f"{tag}.text: {m['runtime_virt_base'] if False else h(m.get('runtime_text'))}",
                  f"{tag}.stext: {h(m.get('runtime_stext'))}" if tag == "run" else None,
                  f"{tag}.etext: {h(m.get('runtime_etext'))}" if tag == "run" else None,
                  f"{tag}.phys_base: {m['phys_base']}",
                  f"{tag}.dump_sha256: {m.get('dump_sha256', '-')}",
                  f"{tag}.panic: {m.get('panic')}" if tag == "panic" else None,
                  f"{tag}.seconds: {m.get('seconds_to_ready', m.get('seconds_to_panic'))} (total {m.get('seconds_total')})",
                  f"{tag}.qemu_command: {m.get('qemu_command')}"]
        if m.get("core"):
            lines.append(f"{tag}.core: {json.dumps(m['core'])}")
        if m.get("qemu_stderr", "").strip():
            lines.append(f"{tag}.qemu_stderr: |")
            lines += ["  " + x for x in m["qemu_stderr"].splitlines()]
        lines = [x for x in lines if x is not None]
    if vulns:
        lines.append("vulnerabilities: |")
        lines += ["  " + x for x in vulns.strip().splitlines()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True)
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--kaslr", action="store_true")
    ap.add_argument("--cmdline", default="")
    ap.add_argument("--append")
    ap.add_argument("--name")
    ap.add_argument("--mode", default="both", choices=["both", "run", "panic", "cpuinfo"])
    ap.add_argument("--core", nargs="?", const="filtered", choices=["filtered", "full"])
    ap.add_argument("--mem", default="512M")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm"])
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--cache-dir", default=os.environ.get("GT_CACHE", "/work/gt-cache"))
    ap.add_argument("--data-dir", default=os.path.join(REPO, "tests", "data", "groundtruth"))
    ap.add_argument("--source")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--keep-raw", action="store_true")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    args.image = os.path.realpath(args.image)
    image_name = os.path.basename(args.image)
    image_name = image_name[len("vmlinuz-"):] if image_name.startswith("vmlinuz-") else image_name
    if args.append is None:
        args.append = " ".join([BASE_ARGS] + ([] if args.kaslr else ["nokaslr"]) + ["panic=0"] + args.cmdline.split())
        cfg = args.name or config_name(args.cpu, args.smp, args.cmdline, args.kaslr)
    else:
        kaslr = "nokaslr" not in args.append.split()
        extra = " ".join(a for a in args.append.split() if a not in ("console=ttyS0", "nokaslr", "panic=0"))
        cfg = args.name or config_name(args.cpu, args.smp, extra, kaslr)
    if args.accel == "kvm":
        cfg = cfg.replace(f"-smp{args.smp}", f"-kvm-smp{args.smp}", 1)
    cdir = os.path.join(args.cache_dir, image_name, cfg)
    ddir = os.path.join(args.data_dir, image_name, cfg)
    os.makedirs(cdir, exist_ok=True)
    os.makedirs(ddir, exist_ok=True)
    src = args.source or default_source(image_name)
    vml = ensure_vmlinux(args.image, os.path.join(args.cache_dir, image_name), src, cfg)
    _elf, geo = image_geometry(vml)
    arch = "x86_64" if geo["elf_class"] == "elf64" else "i386"
    initrd = ensure_initrd(args.cache_dir, arch, cfg)

    run_meta = panic_meta = None
    prev = {}
    for tag in ("run", "panic"):
        p = os.path.join(cdir, f"{tag}.json")
        if os.path.exists(p):
            with open(p) as f:
                prev[tag] = json.load(f)
    want_run = args.mode in ("both", "run", "cpuinfo")
    want_panic = args.mode in ("both", "panic")
    ok = True
    with tempfile.TemporaryDirectory(prefix="gt.") as work:
        if want_run and not args.force and "run" in prev and args.mode != "cpuinfo" \
                and os.path.exists(os.path.join(cdir, "run.phys.zst")) and (not args.core or prev["run"].get("core")):
            log(cfg, "run boot: done before (use --force to redo)")
            run_meta = prev["run"]
        elif want_run:
            try:
                info = run_boot(args, geo, work, cdir, ddir, cfg, initrd, arch, args.mode != "cpuinfo")
                if args.mode != "cpuinfo":
                    run_meta = write_sidecar(os.path.join(cdir, "run.json"), args, geo, vml, info, cfg, image_name)
                    log(cfg, f"run dump: delta {run_meta['kaslr_delta']} phys {run_meta['phys_base']} "
                             f"ready after {info['seconds_to_ready']}s, total {info['seconds_total']}s")
                else:
                    run_meta = dict(info, kaslr_delta=hex(info["kaslr_delta"]), phys_base=hex(info["phys_base"]))
                run_meta["vulnerabilities"] = info.get("vulnerabilities", "")
            except Exception as e:  # noqa: BLE001 - report and go on with the panic boot
                log(cfg, f"ERROR {e}")
                ok = False
        else:
            run_meta = prev.get("run")
        if want_panic and not args.force and "panic" in prev and os.path.exists(os.path.join(cdir, "panic.phys.zst")):
            log(cfg, "panic boot: done before (use --force to redo)")
            panic_meta = prev["panic"]
        elif want_panic:
            try:
                info = panic_boot(args, geo, work, cdir, ddir, cfg)
                panic_meta = write_sidecar(os.path.join(cdir, "panic.json"), args, geo, vml, info, cfg, image_name)
                log(cfg, f"panic dump: delta {panic_meta['kaslr_delta']} phys {panic_meta['phys_base']} "
                         f"after {info['seconds_to_panic']}s")
            except Exception as e:  # noqa: BLE001
                log(cfg, f"ERROR {e}")
                ok = False
        else:
            panic_meta = prev.get("panic")
    vulns = (run_meta or {}).get("vulnerabilities")
    if vulns is None:
        old = os.path.join(ddir, "boot.txt")
        if os.path.exists(old):
            t = open(old).read()
            i = t.find("vulnerabilities: |\n")
            vulns = "\n".join(x[2:] for x in t[i:].splitlines()[1:]) if i >= 0 else None
    if run_meta is not None and "vulnerabilities" in run_meta:
        # keep the vulnerability list in run.json too
        p = os.path.join(cdir, "run.json")
        if os.path.exists(p) and run_meta.get("boot") == "run":
            m = json.load(open(p))
            m["vulnerabilities"] = run_meta["vulnerabilities"]
            json.dump(m, open(p, "w"), indent=1)
    write_boot_txt(os.path.join(ddir, "boot.txt"), args, cfg, image_name, run_meta, panic_meta, vulns)
    print(f"{'OK' if ok else 'FAIL'} {image_name} {cfg} "
          f"run={(run_meta or {}).get('seconds_total', '-')}s panic={(panic_meta or {}).get('seconds_total', '-')}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
