#!/usr/bin/env bash
# analyze-all.sh - post-process every dump in the cache:
#   DATA_DIR/<image>/<base>.caps      boot_cpu_data.x86_capability[] decoded (gtcaps.py)
#   DATA_DIR/<image>/<base>.textdiff  summary of differing bytes in executable sections (gtdiff.py)
#   CACHE_DIR/<image>/<base>.textdiff.json.zst  every differing range (gtdiff.py --json)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_DIR=${GT_CACHE:-/work/gt-cache}
DATA_DIR=$REPO/tests/data/groundtruth
ONLY=
while [ $# -gt 0 ]; do
	case $1 in
	--cache-dir) CACHE_DIR=$2; shift 2 ;;
	--data-dir) DATA_DIR=$2; shift 2 ;;
	--only) ONLY=$2; shift 2 ;; # glob on <image>/<base>, e.g. '*686*/Nehalem-*'
	-h | --help)
		sed -n '2,6p' "$0"
		echo "Usage: $(basename "$0") [--cache-dir DIR] [--data-dir DIR] [--only 'IMAGE/BASE glob']"
		exit 0 ;;
	*) echo "unknown option $1" >&2; exit 64 ;;
	esac
done
PY=${PYTHON:-python3}
for dump in "$CACHE_DIR"/*/*.phys.zst; do
	[ -e "$dump" ] || continue
	img=$(basename "$(dirname "$dump")")
	base=$(basename "$dump" .phys.zst)
	case "$img/$base" in $ONLY) ;; *) [ -z "$ONLY" ] || continue ;; esac
	C=$CACHE_DIR/$img D=$DATA_DIR/$img
	ks=$C/$base.kallsyms.zst ci=$D/$base.cpuinfo
	ksarg=() ciarg=()
	[ -f "$ks" ] && ksarg=(--kallsyms "$ks")
	[ -f "$ci" ] && ciarg=(--cpuinfo "$ci")
	echo "== $img/$base" >&2
	"$PY" "$HERE/gtcaps.py" "$C/vmlinux" "$dump" "${ksarg[@]}" "${ciarg[@]}" --out "$D/$base.caps"
	"$PY" "$HERE/gtdiff.py" "$C/vmlinux" "$dump" "${ksarg[@]}" --json "$C/$base.textdiff.json" |
		sed "s|$CACHE_DIR|\$GT_CACHE|g" >"$D/$base.textdiff"
	zstd -q -f --rm "$C/$base.textdiff.json" -o "$C/$base.textdiff.json.zst"
	tail -1 "$D/$base.textdiff" >&2
done
