#!/usr/bin/env bash
# analyze-all.sh - everything after the boots, for every dump in the cache (docs/groundtruth.md):
#   1. gtcaps.py  -> DATA/<image>/<cfg>/caps       boot_cpu_data.x86_capability[] of the panic dump
#   2. gtwhole.py -> CACHE/<image>/<cfg>/<tag>.whole.json  every differing byte classified
#   3. gtcheck.py --write-truth -> DATA/<image>/<cfg>/panic.sites.gz (+ Altpatch's sites compared)
#   4. gtwtext.py all -> CACHE/.../<tag>.wtext.gz, DATA/.../run.wtext.gz (+ panic ones: --commit-panic)
#   5. gtreport.py -> CACHE/report.md, CACHE/report.json
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_DIR=${GT_CACHE:-/work/gt-cache}
DATA_DIR=$REPO/tests/data/groundtruth
COMMIT_PANIC='^$'
while [ $# -gt 0 ]; do
	case $1 in
	--cache-dir) CACHE_DIR=$2; shift 2 ;;
	--data-dir) DATA_DIR=$2; shift 2 ;;
	--commit-panic) COMMIT_PANIC=$2; shift 2 ;;
	-h | --help)
		sed -n '2,8p' "$0"
		echo "Usage: $(basename "$0") [--cache-dir DIR] [--data-dir DIR] [--commit-panic CONFIG-REGEX]"
		exit 0 ;;
	*) echo "unknown option $1" >&2; exit 64 ;;
	esac
done
export GT_CACHE=$CACHE_DIR
PY=${PYTHON:-python3}
for pj in "$CACHE_DIR"/*/*/panic.json; do
	[ -e "$pj" ] || continue
	C=$(dirname "$pj") img=$(basename "$(dirname "$C")") cfg=$(basename "$C")
	D=$DATA_DIR/$img/$cfg
	[ -f "$C/kallsyms.zst" ] && [ -f "$C/run.json" ] || continue
	delta=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['kaslr_delta'])" "$C/run.json")
	mkdir -p "$D"
	"$PY" "$HERE/gtcaps.py" "$CACHE_DIR/$img/vmlinux" "$C/panic.phys.zst" --kallsyms "$C/kallsyms.zst" \
		--delta "$delta" --cpuinfo "$D/cpuinfo" --out "$D/caps"
done
"$PY" "$HERE/gtwhole.py" --cache "$CACHE_DIR"
"$PY" "$HERE/gtcheck.py" --cache "$CACHE_DIR" --write-truth --truth-dir "$DATA_DIR" || true
"$PY" "$HERE/gtwtext.py" all --cache "$CACHE_DIR" --data-dir "$DATA_DIR" --commit-panic "$COMMIT_PANIC"
"$PY" "$HERE/gtreport.py" --cache "$CACHE_DIR" --out "$CACHE_DIR/report.md" --json "$CACHE_DIR/report.json"
# keep git small: drop what not-committed.txt lists (their text.sha256 stays)
while read -r pat; do
	case $pat in '' | '#'*) continue ;; esac
	# shellcheck disable=SC2086
	rm -f "$DATA_DIR"/$pat
done <"$HERE/not-committed.txt"
