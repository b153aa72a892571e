#!/usr/bin/env bash
# The NativeAOT build of the CLI against the managed one (docs/cli.md#native-executable): publishes
# src/Altpatch.Cli as one native executable (no trimming/AOT warning allowed), then runs both on the demo
# and on `kernel patch` / `kernel symbols` of the shared 6.1 cloud-amd64 (LZ4) and 686 (XZ) images, and compares their output
# bytes, and runs tests/Altpatch.AotHooks published native (hooks of NativeAOT code). Prints one line per check and "aot: N checks ok, N failed" last; exits with the number of failed checks.
# Usage: tools/aot/check.sh [OUTDIR]   (default artifacts/aot; the managed CLI is built in Release)
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-artifacts/aot}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0; failed=0
ok()   { echo "aot: ok: $*"; passed=$((passed + 1)); }
fail() { echo "aot: FAILED: $*"; failed=$((failed + 1)); }

# 1. The native executable, clean of warnings (TreatWarningsAsErrors makes them errors; the grep is the guard).
rm -rf "$out"
if dotnet publish src/Altpatch.Cli -c Release -o "$out" >"$work/publish.log" 2>&1 && [ -x "$out/Altpatch.Cli" ]; then
  if grep -q -E 'warning (IL|CS|CA)[0-9]+' "$work/publish.log"; then
    fail "publish warnings:"; grep -E 'warning (IL|CS|CA)[0-9]+' "$work/publish.log" | sort -u | head -20
  else
    ok "dotnet publish: $out/Altpatch.Cli ($(stat -c %s "$out/Altpatch.Cli") bytes), no warnings"
  fi
else
  fail "dotnet publish"; tail -30 "$work/publish.log"
  echo "aot: $passed checks ok, $failed failed"; exit "$failed"
fi
if ! dotnet build src/Altpatch.Cli -c Release >"$work/build.log" 2>&1; then
  fail "dotnet build -c Release (the managed CLI to compare with)"; tail -30 "$work/build.log"
  echo "aot: $passed checks ok, $failed failed"; exit "$failed"
fi
native="$(pwd)/$out/Altpatch.Cli"
managed=(dotnet "$(pwd)/src/Altpatch.Cli/bin/Release/net10.0/Altpatch.Cli.dll")

# Runs "$@" (a command line without the CLI) with both CLIs in $work/run, the same working directory and the same
# relative file names, keeping each one's stdout and the files it wrote in $work/managed and $work/native.
both() {
  local name
  for name in managed native; do
    rm -rf "$work/run"; mkdir -p "$work/run"
    if [ "$name" = managed ]; then
      (cd "$work/run" && "${managed[@]}" "$@" >stdout 2>stderr); echo $? >"$work/run/exit"
    else
      (cd "$work/run" && "$native" "$@" >stdout 2>stderr); echo $? >"$work/run/exit"
    fi
    rm -rf "$work/$name"; mv "$work/run" "$work/$name"
  done
}
# Compares file $1 of both runs after the sed script $2 (addresses of this process, clock readings).
same() {
  local f="$1" norm="${2:-}"
  cmp -s <(sed -E "$norm" "$work/managed/$f") <(sed -E "$norm" "$work/native/$f")
}
exits() { echo "managed $(cat "$work/managed/exit"), native $(cat "$work/native/exit")"; }

# 2. The demo: live code in this process, so its addresses (mmap's choice: 0x7f... or below the runtime's reservations)
# and the TSC readings differ from run to run; any hex value of 9+ digits is masked.
# The hook section counts the calls its threads made while the hook went in and out: a count, not a result.
mask='s/\b0x[0-9a-f]{9,}\b/HEX/g; s/\b[0-9]{13,}\b/TSC/g; s/"(originalResults|hookedResults)": [0-9]+/"\1": N/g; s/[0-9]+ (original results|hooked)/N \1/g'
both demo --json
if [ "$(cat "$work/native/exit")" = 0 ] && [ "$(cat "$work/managed/exit")" = 0 ] && same stdout "$mask"; then
  ok "demo --json: same output (addresses and TSC values masked)"
else
  fail "demo --json ($(exits))"; diff <(sed -E "$mask" "$work/managed/stdout") <(sed -E "$mask" "$work/native/stdout") | head -20
  cat "$work/native/stderr"
fi
both demo
if [ "$(cat "$work/native/exit")" = 0 ] && same stdout "$mask"; then
  ok "demo: same output (addresses and TSC values masked)"
else
  fail "demo ($(exits))"; diff <(sed -E "$mask" "$work/managed/stdout") <(sed -E "$mask" "$work/native/stdout") | head -20
fi

# 2b. Hooks of NativeAOT-compiled code (docs/hooks.md): tests/Altpatch.AotHooks, published native, hooks a function of its
# own AOT code and libc's abs live while threads call them; each target's line is a check.
if dotnet publish tests/Altpatch.AotHooks -c Release -o "$work/aothooks" >"$work/aothooks.log" 2>&1; then
  "$work/aothooks/Altpatch.AotHooks" >"$work/aothooks.out" 2>&1; hooks_rc=$?
  while IFS= read -r line; do
    case "$line" in
      "aot-hooks: ok: "*) ok "${line#aot-hooks: ok: }" ;;
      "aot-hooks: skipped: "*) echo "aot: skipped: hooks of NativeAOT code: ${line#aot-hooks: skipped: }" ;;
      "aot-hooks: FAILED: "*) fail "${line#aot-hooks: FAILED: }" ;;
    esac
  done <"$work/aothooks.out"
  if [ "$hooks_rc" -ne 0 ] && ! grep -q "FAILED" "$work/aothooks.out"; then fail "Altpatch.AotHooks exited $hooks_rc"; cat "$work/aothooks.out"; fi
else
  fail "dotnet publish tests/Altpatch.AotHooks"; tail -20 "$work/aothooks.log"
fi

# 3. kernel patch and kernel symbols of the real images (LZ4 and, when there, the XZ 686 image): the same bytes out.
for name in 6.1.0-50-cloud-amd64 6.1.0-50-686; do
  image=""
  for d in ../shared/linux /work/shared/linux; do
    [ -f "$d/vmlinuz-$name" ] && { image="$(cd "$d" && pwd)/vmlinuz-$name"; break; }
  done
  cpuinfo="$(pwd)/tests/data/groundtruth/$name/Icelake-Server-smp2/cpuinfo"
  if [ -z "$image" ]; then
    echo "aot: skipped: kernel patch $name (no ../shared/linux/vmlinuz-$name)"
    continue
  fi
  both kernel patch "$image" --cpuinfo "$cpuinfo" --smp 2 -o vmlinux.patched --report report.json
  if [ "$(cat "$work/native/exit")" = 0 ] && [ "$(cat "$work/managed/exit")" = 0 ] \
     && cmp -s "$work/managed/vmlinux.patched" "$work/native/vmlinux.patched" && same report.json && same stdout '/^Time /d'; then
    ok "kernel patch $name: the same OUT ($(stat -c %s "$work/native/vmlinux.patched") bytes), report and summary"
  else
    fail "kernel patch $name ($(exits))"; cat "$work/native/stderr"
    cmp "$work/managed/vmlinux.patched" "$work/native/vmlinux.patched"; cmp "$work/managed/report.json" "$work/native/report.json"
  fi
  both kernel symbols "$image"
  if [ "$(cat "$work/native/exit")" = 0 ] && [ -s "$work/native/stdout" ] && same stdout; then
    ok "kernel symbols $name: the same System.map ($(wc -l <"$work/native/stdout") lines)"
  else
    fail "kernel symbols $name ($(exits))"; cat "$work/native/stderr"
  fi
done
# 4. An error is still one line and exit 1 (no stack trace from the native runtime).
both kernel info /dev/null
if [ "$(cat "$work/native/exit")" = 1 ] && same stderr && [ "$(wc -l <"$work/native/stderr")" = 1 ]; then
  ok "kernel info /dev/null: exit 1, $(cat "$work/native/stderr")"
else
  fail "kernel info /dev/null ($(exits))"; cat "$work/managed/stderr" "$work/native/stderr"
fi
echo "aot: $passed checks ok, $failed failed"
exit "$failed"
