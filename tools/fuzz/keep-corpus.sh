#!/usr/bin/env bash
# Keeps part of what afl-fuzz grew as the regression corpus: tests/data/fuzz/corpus/TARGET, replayed by
# FuzzCorpusTests in every test run.
#
#   tools/fuzz/keep-corpus.sh OUTDIR...      (e.g. artifacts/fuzz/out)
#
# Per target, from every OUTDIR/TARGET/default/queue: the entries that found new coverage ("+cov") first, then the
# rest, smallest first, at most 30 files and 512 KiB (named NN-idQUEUEID). Crashes are not copied here:
# a crash is fixed first and its input kept under tests/data/fuzz/crashes/TARGET by hand, named for what it was.
set -euo pipefail
cd "$(dirname "$0")/../.."
declare -A seen
for outdir in "$@"; do
  for q in "$outdir"/*/default/queue; do
    [ -d "$q" ] || continue
    t=$(basename "$(dirname "$(dirname "$q")")")
    seen[$t]+="$q "
  done
done
for t in "${!seen[@]}"; do
  dest=tests/data/fuzz/corpus/$t
  rm -rf "$dest" && mkdir -p "$dest"
  total=0; n=0
  # shellcheck disable=SC2086
  while IFS= read -r f; do
    size=$(stat -c %s "$f")
    [ $((total + size)) -gt 524288 ] && continue
    id=$(basename "$f" | sed 's/^id:\([0-9]*\).*/\1/')
    cp "$f" "$dest/$(printf "%02d" $n)-id$id"
    total=$((total + size)); n=$((n + 1))
    [ $n -ge 30 ] && break
  done < <(for q in ${seen[$t]}; do
             find "$q" -maxdepth 1 -type f -name 'id:*' -printf '%s %p\n'
           done | awk '{ cov = ($2 ~ /\+cov/) ? 0 : 1; print cov, $1, $2 }' | sort -n -k1,1 -k2,2 | cut -d' ' -f3-)
  echo "corpus: $t: $n files, $total bytes"
done
