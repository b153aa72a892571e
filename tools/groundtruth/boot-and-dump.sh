#!/usr/bin/env bash
# boot-and-dump.sh - the first interface of the ground-truth boots, kept for its users:
# one image x one -cpu x one -smp, default command line "console=ttyS0 nokaslr panic=0".
# It now runs gtboot.py (which see: run boot with a runtime dump, panic boot with the
# panic-point dump, KASLR, command lines, ELF cores); outputs go to the per-configuration
# directories described in docs/groundtruth.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<EOF
Usage: $(basename "$0") --image VMLINUZ --cpu MODEL [--smp N] [--mode both|cpuinfo|dump]
                        [--accel tcg|kvm] [--mem SIZE] [--timeout SEC] [--append STR]
                        [--cache-dir DIR] [--data-dir DIR] [--source DIR] [--qemu BIN] [--keep-raw]
  --mode both     (default) run boot (cpuinfo, kallsyms, runtime dump) + panic boot (panic-point dump)
  --mode cpuinfo  the run boot without memory dumps (cpuinfo, kallsyms, boot.txt only)
  --mode dump     the panic boot only
Everything else is passed to gtboot.py; see $(dirname "$0")/gtboot.py --help.
EOF
}

args=()
while [ $# -gt 0 ]; do
	case $1 in
	--mode)
		case $2 in
		both) args+=(--mode both) ;;
		cpuinfo) args+=(--mode cpuinfo) ;;
		dump) args+=(--mode panic) ;;
		*) echo "--mode must be both, cpuinfo or dump" >&2; exit 64 ;;
		esac
		shift 2 ;;
	-h | --help) usage; exit 0 ;;
	--keep-raw) args+=("$1"); shift ;;
	*) args+=("$1" "$2"); shift 2 ;;
	esac
done
exec python3 "$HERE/gtboot.py" "${args[@]}"
