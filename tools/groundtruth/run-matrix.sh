#!/usr/bin/env bash
# run-matrix.sh - run boot-and-dump.sh for every image x CPU model x -smp, one at a time.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<USAGE
Usage: $(basename "$0") [--images "A B"] [--cpus "X Y"] [--smps "1 2"] [--accel tcg|kvm]
                     [--mode both|cpuinfo|dump] [-- extra boot-and-dump.sh options]
Defaults:
  --images "/work/shared/linux/vmlinuz-6.1.0-50-cloud-amd64 /work/shared/linux/vmlinuz-6.1.0-50-686"
  --cpus   "Nehalem Cascadelake-Server Icelake-Server EPYC-Rome EPYC-Milan qemu64 max"
  --smps   "1 2"   --accel tcg   --mode both
Boots run sequentially; a failed boot is reported and the matrix goes on.
A summary line per run ("OK"/"FAIL", seconds) goes to stdout.
USAGE
}

IMAGES="/work/shared/linux/vmlinuz-6.1.0-50-cloud-amd64 /work/shared/linux/vmlinuz-6.1.0-50-686"
CPUS="Nehalem Cascadelake-Server Icelake-Server EPYC-Rome EPYC-Milan qemu64 max"
SMPS="1 2"
ACCEL=tcg
MODE=both
while [ $# -gt 0 ]; do
	case $1 in
	--images) IMAGES=$2; shift 2 ;;
	--cpus) CPUS=$2; shift 2 ;;
	--smps) SMPS=$2; shift 2 ;;
	--accel) ACCEL=$2; shift 2 ;;
	--mode) MODE=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) echo "unknown option $1" >&2; exit 64 ;;
	esac
done

fail=0
for img in $IMAGES; do
	for cpu in $CPUS; do
		for smp in $SMPS; do
			t0=$(date +%s)
			if "$HERE/boot-and-dump.sh" --image "$img" --cpu "$cpu" --smp "$smp" \
				--accel "$ACCEL" --mode "$MODE" "$@"; then
				st=OK
			else
				st=FAIL; fail=$((fail + 1))
			fi
			echo "$st $(basename "$img") $cpu smp$smp accel=$ACCEL $(( $(date +%s) - t0 ))s"
		done
	done
done
exit $((fail > 0))
