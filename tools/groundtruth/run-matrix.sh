#!/usr/bin/env bash
# run-matrix.sh - run gtboot.py for every configuration of a matrix file, one boot at a time.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
	cat <<USAGE
Usage: $(basename "$0") [--matrix FILE] [--only REGEX] [--mode both|run|panic] [-- gtboot.py options]

Runs tools/groundtruth/gtboot.py for each line of FILE (default: matrix.txt beside this script),
sequentially. A line is
    IMAGE CPU SMP kaslr|nokaslr -|core|core-full [kernel arguments...]
IMAGE is a short name:
    cloud61    \$GT_IMAGES/vmlinuz-6.1.0-50-cloud-amd64          (GT_IMAGES default /work/shared/linux)
    i686       \$GT_IMAGES/vmlinuz-6.1.0-50-686
    cloud612   \$GT_IMAGES/vmlinuz-6.12.118+deb12-cloud-amd64
    amd64-61   \$GT_DEBS/linux-image-6.1.0-50-amd64-unsigned/boot/vmlinuz-6.1.0-50-amd64
    amd64-612  \$GT_DEBS/linux-image-6.12.118+deb12-amd64-unsigned/boot/vmlinuz-6.12.118+deb12-amd64
               (GT_DEBS default /work/debs/x)
    or a path to a bzImage.
--only REGEX keeps the lines that match REGEX. Boots whose dumps exist are skipped (gtboot.py
--force redoes them). A summary line per configuration ("OK"/"FAIL", seconds) goes to stdout.

The first version of this script ran the product --images x --cpus x --smps (nokaslr, default
command line); that is still available:
    $(basename "$0") --product [--images "A B"] [--cpus "X Y"] [--smps "1 2"] [-- options]
USAGE
}

GT_IMAGES=${GT_IMAGES:-/work/shared/linux}
GT_DEBS=${GT_DEBS:-/work/debs/x}
MATRIX=$HERE/matrix.txt
ONLY=
MODE=both
PRODUCT=0
IMAGES="$GT_IMAGES/vmlinuz-6.1.0-50-cloud-amd64 $GT_IMAGES/vmlinuz-6.1.0-50-686"
CPUS="Nehalem Cascadelake-Server Icelake-Server EPYC-Rome EPYC-Milan qemu64 max"
SMPS="1 2"
while [ $# -gt 0 ]; do
	case $1 in
	--matrix) MATRIX=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;;
	--mode) MODE=$2; shift 2 ;;
	--product) PRODUCT=1; shift ;;
	--images) IMAGES=$2; shift 2 ;;
	--cpus) CPUS=$2; shift 2 ;;
	--smps) SMPS=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) echo "unknown option $1 (see --help)" >&2; exit 64 ;;
	esac
done

image_path() {
	case $1 in
	cloud61) echo "$GT_IMAGES/vmlinuz-6.1.0-50-cloud-amd64" ;;
	i686) echo "$GT_IMAGES/vmlinuz-6.1.0-50-686" ;;
	cloud612) echo "$GT_IMAGES/vmlinuz-6.12.118+deb12-cloud-amd64" ;;
	amd64-61) echo "$GT_DEBS/linux-image-6.1.0-50-amd64-unsigned/boot/vmlinuz-6.1.0-50-amd64" ;;
	amd64-612) echo "$GT_DEBS/linux-image-6.12.118+deb12-amd64-unsigned/boot/vmlinuz-6.12.118+deb12-amd64" ;;
	*) echo "$1" ;;
	esac
}

fail=0
run() {
	local t0 st
	t0=$(date +%s)
	if python3 "$HERE/gtboot.py" "$@" >&2; then st=OK; else st=FAIL; fail=$((fail + 1)); fi
	echo "$st $* $(($(date +%s) - t0))s"
}

if [ "$PRODUCT" = 1 ]; then
	for img in $IMAGES; do
		for cpu in $CPUS; do
			for smp in $SMPS; do
				run --image "$img" --cpu "$cpu" --smp "$smp" --mode "$MODE" "$@"
			done
		done
	done
	exit $((fail > 0))
fi

while read -r img cpu smp kaslr extra args; do
	case $img in '' | '#'*) continue ;; esac
	line="$img $cpu $smp $kaslr $extra $args"
	if [ -n "$ONLY" ] && ! [[ $line =~ $ONLY ]]; then continue; fi
	opts=(--image "$(image_path "$img")" --cpu "$cpu" --smp "$smp" --mode "$MODE")
	[ "$kaslr" = kaslr ] && opts+=(--kaslr)
	case $extra in
	core) opts+=(--core filtered) ;;
	core-full) opts+=(--core full) ;;
	esac
	[ -n "$args" ] && opts+=(--cmdline "$args")
	run "${opts[@]}" "$@"
done < <(cat "$MATRIX")
exit $((fail > 0))
