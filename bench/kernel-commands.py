#!/usr/bin/env python3
"""kernel-commands.py - the `altpatch kernel` commands beside the plain decompressor of the same image, in one run.

For each shared Debian image (../shared/linux beside the repository) it times, round-robin in a shuffled order
(so load from other processes falls on every command alike):

  floor      the payload's own decompressor to a file: `lz4 -d` / `xz -d` / `zstd -d` (the payload cut out of
             the bzImage at (setup_sects + 1) * 512 + payload_offset, payload_length - 4 bytes)
  patch      altpatch kernel patch IMAGE --cpuinfo CPUINFO --smp N -o OUT        (writes the vmlinux + .symtab)
  verify     altpatch kernel verify IMAGE --text DUMP --base ADDR --cpuinfo CPUINFO --smp N --cmdline LINE
             (DUMP: the running .text of a QEMU boot, rebuilt from the committed whole-text truth
             tests/data/groundtruth/IMAGE/CONFIG/run.wtext.gz and the decompressed vmlinux)
  symbols    altpatch kernel symbols IMAGE -o OUT
  start      altpatch --help (start-up alone)

each with the managed CLI (`dotnet src/Altpatch.Cli/bin/Release/net10.0/Altpatch.Cli.dll`) and the NativeAOT
executable (`artifacts/aot/Altpatch.Cli`), whichever are built. Wall time per run and peak RSS (ru_maxrss of the
child, from GNU time) and CPU time (user + system: steadier than wall time on a loaded machine) are recorded;
the table gives the median and min, their ratios to the floor's, the median CPU time and its ratio,
and peak RSS against the decompressed payload's size.

Usage (from the repository root; build both first):
  dotnet build src/Altpatch.Cli -c Release && dotnet publish src/Altpatch.Cli -c Release -o artifacts/aot
  python3 bench/kernel-commands.py [--runs 7] [--images cloud-amd64,686,6.12] [--only managed|native] [--cli NAME=PATH]...

Needs lz4, xz, zstd and GNU time (/usr/bin/time) on PATH. Prints a Markdown table (and the CPU, load average, commit) for docs/benchmarks.md.
"""

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# image name -> (ground-truth configuration for verify, or None where verify does not apply)
IMAGES = {
    "cloud-amd64": ("6.1.0-50-cloud-amd64", "Icelake-Server-smp2"),
    "686": ("6.1.0-50-686", "Icelake-Server-smp2"),
    "6.12": ("6.12.118+deb12-cloud-amd64", "Icelake-Server-smp2"),
}
REBUILD = """
import sys
sys.path.insert(0, %r)
import gtwtext
hdr, text = gtwtext.rebuild(sys.argv[1], sys.argv[2])
open(sys.argv[3], "wb").write(text[".text"])
print(hdr.get("runtime_stext", ""))
""" % os.path.join(REPO, "tools", "groundtruth")
FLOOR = {b"\x02\x21\x4c\x18": ["lz4", "-d", "-c"], b"\xfd7zXZ\x00": ["xz", "-d", "-c"], b"\x28\xb5\x2f\xfd": ["zstd", "-d", "-c"]}


def shared_linux():
    for d in (os.path.join(REPO, "..", "shared", "linux"), "/work/shared/linux"):
        if os.path.isdir(d):
            return os.path.abspath(d)
    sys.exit("no ../shared/linux beside the repository")


def cut_payload(image, out):
    with open(image, "rb") as f:
        d = f.read()
    setup_sects = d[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", d, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = d[start:start + payload_length - 4]
    size = struct.unpack_from("<I", d, start + payload_length - 4)[0]
    with open(out, "wb") as f:
        f.write(payload)
    for magic, cmd in FLOOR.items():
        if payload.startswith(magic):
            return cmd, size
    sys.exit(f"{image}: payload compression not lz4/xz/zstd")


def run(cmd, stdout_path=None):
    """(seconds, CPU seconds (user + system), peak RSS bytes) of one run of cmd; exits on a failing command. The peak RSS comes from GNU time
    (`/usr/bin/time -f %M`), which forks the command from its own small process: a command started straight from
    this one would report this Python's peak (Linux keeps a process's peak RSS across exec, and a vfork child's
    exec counts its parent's)."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    rss_file = os.path.join(tempfile.gettempdir(), f"altpatch-kbench-rss-{os.getpid()}")
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file] + cmd, stdout=out, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if stdout_path:
        out.close()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()}")
    with open(rss_file) as f:
        kib, user, system = f.read().split()[-3:]
    os.unlink(rss_file)
    return dt, float(user) + float(system), int(kib) * 1024


def median(xs):
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--images", default="cloud-amd64,686,6.12")
    ap.add_argument("--only", choices=["managed", "native"])
    ap.add_argument("--cli", action="append", default=[], metavar="NAME=PATH",
                    help="another altpatch executable to run beside them (e.g. a native build of an older commit)")
    args = ap.parse_args()

    clis = {}
    dll = os.path.join(REPO, "src", "Altpatch.Cli", "bin", "Release", "net10.0", "Altpatch.Cli.dll")
    native = os.path.join(REPO, "artifacts", "aot", "Altpatch.Cli")
    if os.path.exists(dll) and args.only != "native":
        clis["managed"] = ["dotnet", dll]
    if os.path.exists(native) and args.only != "managed":
        clis["native"] = [native]
    for extra in args.cli:
        name, _, path = extra.partition("=")
        clis[name] = [os.path.abspath(path)]
    if not clis:
        sys.exit("build the CLI first: dotnet build src/Altpatch.Cli -c Release; dotnet publish src/Altpatch.Cli -c Release -o artifacts/aot")

    linux = shared_linux()
    tmp = tempfile.mkdtemp(prefix="altpatch-kbench-")
    try:
        benches = []   # (image key, label, cmd, stdout file)
        sizes = {}
        for key in args.images.split(","):
            name, config = IMAGES[key]
            image = os.path.join(linux, f"vmlinuz-{name}")
            payload = os.path.join(tmp, f"{key}.payload")
            floor, size = cut_payload(image, payload)
            sizes[key] = size
            vmlinux = os.path.join(tmp, f"{key}.vmlinux")
            benches.append((key, f"`{floor[0]} -d` (floor)", floor + [payload], vmlinux))
            for cli, prefix in clis.items():
                benches.append((key, f"symbols ({cli})", prefix + ["kernel", "symbols", image, "-o", os.path.join(tmp, f"{key}.{cli}.map")], None))
            if config is None:
                continue
            gt = os.path.join(REPO, "tests", "data", "groundtruth", name, config)
            cpuinfo = os.path.join(gt, "cpuinfo")
            hdr = dict(ln.split(": ", 1) for ln in open(os.path.join(gt, "boot.txt")).read().splitlines() if ": " in ln)
            run(floor + [payload], vmlinux)
            dump = os.path.join(tmp, f"{key}.text")
            # tools/groundtruth/gtwtext.py rebuilds the text (checking both sha256s), in a child process: this one must
            # stay small, as every command forked from it starts with its peak RSS (Linux keeps it across exec).
            base = subprocess.run([sys.executable, "-c", REBUILD, os.path.join(gt, "run.wtext.gz"), vmlinux, dump],
                                  check=True, capture_output=True, text=True).stdout.strip() or hdr["run.stext"]
            smp = hdr["smp"]
            for cli, prefix in clis.items():
                benches.append((key, f"patch ({cli})", prefix + ["kernel", "patch", image, "--cpuinfo", cpuinfo, "--smp", smp,
                                                             "-o", os.path.join(tmp, f"{key}.{cli}.out")], None))
                benches.append((key, f"verify ({cli})", prefix + ["kernel", "verify", image, "--text", dump, "--base", base,
                                                              "--cpuinfo", cpuinfo, "--smp", smp, "--cmdline", hdr["kernel_cmdline"]], None))
        for cli, prefix in clis.items():
            benches.append(("-", f"`--help`: start-up ({cli})", prefix + ["--help"], None))

        # one warm-up round, then the timed rounds, each in its own shuffled order
        for b in benches:
            run(b[2], b[3])   # warm-up
        times = {i: [] for i in range(len(benches))}
        cpus = {i: [] for i in range(len(benches))}
        rss = {i: 0 for i in range(len(benches))}
        for _ in range(args.runs):
            order = list(range(len(benches)))
            random.shuffle(order)
            for i in order:
                dt, cpu_s, peak = run(benches[i][2], benches[i][3])
                times[i].append(dt)
                cpus[i].append(cpu_s)
                rss[i] = max(rss[i], peak)

        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print(f"CPU: {cpu}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end; commit {commit}; "
              f"{args.runs} rounds (+1 warm-up), {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print()
        print("| image | command | median ms | min ms | median / floor | min / floor | CPU ms (median) | CPU / floor | peak RSS MiB | RSS / decompressed |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        floor = {}
        for i, (key, label, _, _) in enumerate(benches):
            if label.endswith("(floor)"):
                floor[key] = (median(times[i]), min(times[i]), median(cpus[i]))
        for i, (key, label, _, _) in enumerate(benches):
            med, lo, cpu_med = median(times[i]), min(times[i]), median(cpus[i])
            f = floor.get(key)
            ratios = f"{med / f[0]:.2f}x | {lo / f[1]:.2f}x" if f else " | "
            cpu_ratio = f"{cpu_med / f[2]:.2f}x" if f and f[2] > 0 else ""
            rel = f"{rss[i] / sizes[key]:.2f}" if key in sizes else ""
            img = IMAGES[key][0] if key in IMAGES else "-"
            print(f"| {img} | {label} | {med * 1000:.0f} | {lo * 1000:.0f} | {ratios} | {cpu_med * 1000:.0f} | {cpu_ratio} | {rss[i] / 2**20:.0f} | {rel} |")
        print()
        print("decompressed payload (vmlinux + relocs): " + ", ".join(f"{IMAGES[k][0]} {s / 2**20:.1f} MiB" for k, s in sizes.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
