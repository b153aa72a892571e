#!/usr/bin/env bash
# boot-and-dump.sh - ground truth for Altpatch: boot a real kernel image under QEMU,
# capture the guest's /proc/cpuinfo, and dump the kernel's patched image from guest
# physical memory at the "VFS: Unable to mount root fs" panic.
#
# See docs/groundtruth.md for the procedure, the mapping and the caveats.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage() {
	cat <<EOF
Usage: $(basename "$0") --image VMLINUZ --cpu MODEL [options]

Boots VMLINUZ (a bzImage) twice with the same QEMU -cpu / -smp / accelerator:
  1. "cpuinfo" boot: with a tiny initramfs whose static /init prints /proc/version,
     /proc/cmdline, /proc/cpuinfo and /proc/kallsyms to ttyS0 and powers off.
     -> DATA_DIR/<image>/<base>.cpuinfo   (the guest's /proc/cpuinfo, verbatim)
     -> DATA_DIR/<image>/<base>.boot.txt  (version, cmdline, qemu command, timing)
     -> CACHE_DIR/<image>/<base>.kallsyms.zst, <base>.init-serial.log.zst
  2. "dump" boot: no initramfs, no root device -> the kernel panics in mount_root
     ("VFS: Unable to mount root fs"), after all boot-time patching and before
     free_initmem(). The script waits for the end of the panic report, stops the VM
     and pmemsave's the physical range of the vmlinux PT_LOAD segments.
     -> CACHE_DIR/<image>/<base>.phys.zst  (raw physical memory, zstd)
     -> CACHE_DIR/<image>/<base>.phys.json (sidecar: bases, size, qemu command, date...)
     -> DATA_DIR/<image>/<base>.dmesg      (kernel log of the dump boot, up to the panic)
<image> is the image file name without "vmlinuz-" (e.g. 6.1.0-50-cloud-amd64);
<base> is "<cpu>-smp<N>" for TCG and "<cpu>-kvm-smp<N>" for KVM (',' '=' in the cpu
model become '_').

Options:
  --image PATH       kernel bzImage (required)
  --cpu MODEL        QEMU -cpu model, e.g. Nehalem, Icelake-Server, EPYC-Milan, max, host
  --smp N            number of vCPUs (default 1)
  --accel A          tcg (default) or kvm
  --mode M           both (default), cpuinfo or dump
  --mem SIZE         guest RAM (default 512M)
  --timeout SEC      per-boot timeout in seconds (default 600)
  --append STR       kernel command line (default "console=ttyS0 nokaslr panic=0")
  --cache-dir DIR    large outputs (default \$GT_CACHE or /work/gt-cache)
  --data-dir DIR     small outputs to commit (default <repo>/tests/data/groundtruth)
  --source DIR       kernel source tree, for scripts/extract-vmlinux
                     (default \$GT_LINUX_SRC or /work/ref/linux-source-6.1)
  --qemu BIN         QEMU binary (default qemu-system-x86_64)
  --keep-raw         keep the uncompressed .phys file next to the .zst
  -h, --help         this text

The vmlinux is extracted once into CACHE_DIR/<image>/vmlinux; the initramfs is built
(gcc, no libc) once into CACHE_DIR/initramfs/. Boots run one at a time.
EOF
}

IMAGE= CPU= SMP=1 ACCEL=tcg MODE=both MEM=512M TIMEOUT=600
APPEND="console=ttyS0 nokaslr panic=0"
CACHE_DIR=${GT_CACHE:-/work/gt-cache}
DATA_DIR=$REPO/tests/data/groundtruth
SRC=${GT_LINUX_SRC:-/work/ref/linux-source-6.1}
QEMU=qemu-system-x86_64
KEEP_RAW=0

while [ $# -gt 0 ]; do
	case $1 in
	--image) IMAGE=$2; shift 2 ;;
	--cpu) CPU=$2; shift 2 ;;
	--smp) SMP=$2; shift 2 ;;
	--accel) ACCEL=$2; shift 2 ;;
	--mode) MODE=$2; shift 2 ;;
	--mem) MEM=$2; shift 2 ;;
	--timeout) TIMEOUT=$2; shift 2 ;;
	--append) APPEND=$2; shift 2 ;;
	--cache-dir) CACHE_DIR=$2; shift 2 ;;
	--data-dir) DATA_DIR=$2; shift 2 ;;
	--source) SRC=$2; shift 2 ;;
	--qemu) QEMU=$2; shift 2 ;;
	--keep-raw) KEEP_RAW=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
	esac
done
[ -n "$IMAGE" ] && [ -n "$CPU" ] || { usage >&2; exit 64; }
[ -r "$IMAGE" ] || { echo "cannot read $IMAGE" >&2; exit 66; }
case $ACCEL in tcg | kvm) ;; *) echo "--accel must be tcg or kvm" >&2; exit 64 ;; esac
case $MODE in both | cpuinfo | dump) ;; *) echo "--mode must be both, cpuinfo or dump" >&2; exit 64 ;; esac

PY=${PYTHON:-python3}
GTLIB="$PY $HERE/gtlib.py"
IMAGE=$(readlink -f "$IMAGE")
NAME=$(basename "$IMAGE"); NAME=${NAME#vmlinuz-}
CPUTAG=$(printf '%s' "$CPU" | tr ',=/' '___')
BASE="$CPUTAG-smp$SMP"
[ "$ACCEL" = kvm ] && BASE="$CPUTAG-kvm-smp$SMP"
CDIR=$CACHE_DIR/$NAME
DDIR=$DATA_DIR/$NAME
mkdir -p "$CDIR" "$DDIR" "$CACHE_DIR/initramfs"

log() { printf '[%s] %s %s: %s\n' "$(date +%T)" "$NAME" "$BASE" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- vmlinux + initramfs
VMLINUX=$CDIR/vmlinux
if [ ! -s "$VMLINUX" ]; then
	log "extracting vmlinux with $SRC/scripts/extract-vmlinux"
	bash "$SRC/scripts/extract-vmlinux" "$IMAGE" >"$VMLINUX.tmp"
	mv "$VMLINUX.tmp" "$VMLINUX"
fi
read -r PHYS_START PHYS_END VIRT_START ELFCLASS < <($GTLIB load-range "$VMLINUX")
PHYS_SIZE=$((PHYS_END - PHYS_START))
if [ "$ELFCLASS" = elf64 ]; then GARCH=x86_64; GCCM=-m64; else GARCH=i386; GCCM=-m32; fi

INITRD=$CACHE_DIR/initramfs/gtinit-$GARCH.cpio
if [ ! -s "$INITRD" ] || [ "$HERE/init/gtinit.c" -nt "$INITRD" ]; then
	log "building $INITRD"
	T=$(mktemp -d)
	mkdir -p "$T/root/proc" "$T/root/dev"
	gcc $GCCM -Os -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie \
		-Wall -o "$T/root/init" "$HERE/init/gtinit.c"
	(cd "$T/root" && find . | LC_ALL=C sort | cpio -o -H newc --owner 0:0 --quiet) >"$INITRD.tmp"
	mv "$INITRD.tmp" "$INITRD"
	rm -rf "$T"
fi

QEMU_BASE=("$QEMU" -machine pc -accel "$ACCEL" -cpu "$CPU" -smp "$SMP" -m "$MEM"
	-nodefaults -no-user-config -display none -no-reboot -kernel "$IMAGE")
QEMU_VERSION=$("$QEMU" --version | head -1)

QPID=
cleanup() {
	if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; fi
	[ -n "${WORK:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gt.XXXXXX")

# ---------------------------------------------------------------- 1. cpuinfo boot
if [ "$MODE" != dump ]; then
	SER=$WORK/init-serial.log
	CMD=("${QEMU_BASE[@]}" -initrd "$INITRD" -append "$APPEND" -serial "file:$SER")
	log "cpuinfo boot: ${CMD[*]}"
	T0=$(now)
	rc=0
	timeout --kill-after=10 "$TIMEOUT" "${CMD[@]}" 2>"$WORK/init-qemu.stderr" || rc=$?
	SECS=$(elapsed "$T0")
	log "cpuinfo boot ended rc=$rc after ${SECS}s"
	cat "$WORK/init-qemu.stderr" >&2 || true
	zstd -q -19 -f "$SER" -o "$CDIR/$BASE.init-serial.log.zst"
	if ! $GTLIB split-serial "$SER" "$WORK/blocks" >/dev/null; then
		log "ERROR: no cpuinfo block in the serial log (kept in $CDIR/$BASE.init-serial.log.zst)"
		exit 1
	fi
	if ! grep -q '^processor' "$WORK/blocks/cpuinfo.txt"; then
		log "ERROR: the cpuinfo block holds no 'processor' line:"
		head -5 "$WORK/blocks/cpuinfo.txt" >&2
		exit 1
	fi
	grep -q '@@GT-INIT-DONE@@' "$SER" || log "WARNING: init did not finish (timeout?)"
	cp "$WORK/blocks/cpuinfo.txt" "$DDIR/$BASE.cpuinfo"
	if [ -f "$WORK/blocks/kallsyms.txt" ]; then
		zstd -q -19 -f "$WORK/blocks/kallsyms.txt" -o "$CDIR/$BASE.kallsyms.zst"
	fi
	{
		echo "# ground-truth cpuinfo boot (tools/groundtruth/boot-and-dump.sh)"
		echo "date: $(date -u +%FT%TZ)"
		echo "image: $IMAGE"
		echo "image_sha256: $(sha256sum "$IMAGE" | cut -d' ' -f1)"
		echo "qemu: $QEMU_VERSION"
		echo "accel: $ACCEL"
		echo "cpu: $CPU"
		echo "smp: $SMP"
		echo "qemu_command: ${CMD[*]}" | sed "s|$SER|SERIAL.log|; s|$INITRD|gtinit-$GARCH.cpio|"
		echo "qemu_exit_status: $rc"
		echo "seconds: $SECS"
		echo "guest_version: $(tr -d '\n' <"$WORK/blocks/version.txt" 2>/dev/null || true)"
		echo "guest_cmdline: $(tr -d '\n' <"$WORK/blocks/cmdline.txt" 2>/dev/null || true)"
		echo "qemu_stderr: |"
		sed 's/^/  /' "$WORK/init-qemu.stderr"
	} >"$DDIR/$BASE.boot.txt"
	log "wrote $DDIR/$BASE.cpuinfo"
fi

# ---------------------------------------------------------------- 2. dump boot
if [ "$MODE" != cpuinfo ]; then
	SER=$WORK/dump-serial.log
	SOCK=$WORK/qmp.sock
	RAW=$CDIR/$BASE.phys
	CMD=("${QEMU_BASE[@]}" -append "$APPEND" -serial "file:$SER" -qmp "unix:$SOCK,server=on,wait=off")
	log "dump boot: ${CMD[*]}"
	T0=$(now)
	"${CMD[@]}" 2>"$WORK/dump-qemu.stderr" &
	QPID=$!
	wrc=0
	# The panic report ends with "---[ end Kernel panic - not syncing: ... ]---".
	$GTLIB wait-serial "$SER" 'end Kernel panic - not syncing' "$TIMEOUT" "$QPID" || wrc=$?
	SECS=$(elapsed "$T0")
	cat "$WORK/dump-qemu.stderr" >&2 || true
	if [ $wrc -ne 0 ]; then
		log "ERROR: no panic seen (wait status $wrc after ${SECS}s); serial log tail:"
		tr -d '\r' <"$SER" | tail -20 >&2 || true
		zstd -q -f "$SER" -o "$CDIR/$BASE.dump-serial.log.zst" || true
		exit 1
	fi
	PANIC=$(tr -d '\r' <"$SER" | grep -m1 'Kernel panic - not syncing' | sed 's/^\[[^]]*\] //')
	log "panic after ${SECS}s: $PANIC"
	case $PANIC in
	*"VFS: Unable to mount root fs"*) ;;
	*) log "ERROR: unexpected panic (not the mount_root one)"; exit 1 ;;
	esac
	sleep 1 # let the panic path settle (it only spins in panic() from now on)
	$GTLIB qmp "$SOCK" stop
	rm -f "$RAW"
	$GTLIB qmp "$SOCK" "pmemsave:{\"val\": $((PHYS_START)), \"size\": $PHYS_SIZE, \"filename\": \"$RAW\"}"
	$GTLIB qmp "$SOCK" quit || true
	wait "$QPID" 2>/dev/null || true
	QPID=
	[ "$(stat -c %s "$RAW")" -eq "$PHYS_SIZE" ] || { log "ERROR: short dump"; exit 1; }
	DUMP_SHA=$(sha256sum "$RAW" | cut -d' ' -f1)
	zstd -q -10 -f "$RAW" -o "$RAW.zst"
	[ "$KEEP_RAW" = 1 ] || rm -f "$RAW"
	tr -d '\r' <"$SER" >"$DDIR/$BASE.dmesg"
	SEGS=$($GTLIB segments "$VMLINUX")
	CMDSTR=$(echo "${CMD[*]}" | sed "s|$SER|SERIAL.log|; s|$SOCK|QMP.sock|")
	"$PY" - "$RAW.zst.json.tmp" <<EOF
import json, sys
meta = {
  "what": "guest physical memory at the VFS mount_root panic (after alternative_instructions(), before free_initmem())",
  "file": "$BASE.phys.zst",
  "format": "zstd-compressed raw bytes of guest physical [phys_base, phys_base+size)",
  "image": "$IMAGE",
  "image_sha256": "$(sha256sum "$IMAGE" | cut -d' ' -f1)",
  "vmlinux": "$VMLINUX",
  "vmlinux_sha256": "$(sha256sum "$VMLINUX" | cut -d' ' -f1)",
  "elf_class": "$ELFCLASS",
  "phys_base": "$PHYS_START",
  "phys_end": "$PHYS_END",
  "size": $PHYS_SIZE,
  "virt_base": "$VIRT_START",
  "virt_minus_phys": hex($VIRT_START - $PHYS_START),
  "note": "virt = phys + virt_minus_phys for every PT_LOAD except x86-64 .data..percpu (vaddr 0); see segments",
  "segments": json.loads('''$SEGS'''),
  "dump_sha256_uncompressed": "$DUMP_SHA",
  "qemu_version": "$QEMU_VERSION",
  "qemu_command": "$CMDSTR",
  "accel": "$ACCEL",
  "cpu": "$CPU",
  "smp": $SMP,
  "kernel_cmdline": "$APPEND",
  "panic": """$PANIC""",
  "seconds_to_panic": $SECS,
  "date": "$(date -u +%FT%TZ)",
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
	mv "$RAW.zst.json.tmp" "$CDIR/$BASE.phys.json"
	log "wrote $RAW.zst ($(stat -c %s "$RAW.zst") bytes) and $CDIR/$BASE.phys.json"
fi
