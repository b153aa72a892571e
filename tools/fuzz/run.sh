#!/usr/bin/env bash
# Coverage-guided fuzzing of Altpatch's readers with SharpFuzz + AFL++ (docs/fuzzing.md).
#
#   tools/fuzz/run.sh [-t SECONDS] [-o DIR] [-s] [TARGET...]
#
# Publishes tests/Altpatch.Fuzz into DIR/bin (default artifacts/fuzz), instruments Altpatch.dll and the decoder
# libraries there with the sharpfuzz tool, writes the seed corpus (DIR/seeds, from ../shared/linux) and adds tests/data/fuzz/corpus, then
# runs afl-fuzz on each TARGET (default: all) for SECONDS (default 60) at nice 19. Findings: DIR/out/TARGET;
# a summary line per target; exit 1 when any target saved a crash (replay it with
# `dotnet tests/Altpatch.Fuzz/bin/Release/net10.0/Altpatch.Fuzz.dll replay TARGET FILE`) or, without -s, when a
# session did not start or was aborted. -s (the CI smoke): only saved crashes fail; a session that afl-fuzz could
# not start or keep (a loaded machine) is reported and skipped.
# Needs: afl-fuzz (apt-get install afl++) and sharpfuzz (dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0).
set -uo pipefail
cd "$(dirname "$0")/../.."
seconds=60
out=artifacts/fuzz
smoke=0
while getopts "t:o:s" opt; do
  case $opt in
    t) seconds=$OPTARG ;;
    o) out=$OPTARG ;;
    s) smoke=1 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
export PATH="$PATH:$HOME/.dotnet/tools"
for tool in afl-fuzz sharpfuzz; do
  command -v $tool >/dev/null || { echo "fuzz: $tool is not installed (see the comment at the top of $0)"; exit 2; }
done

mkdir -p "$out"
rm -rf "$out/bin"
dotnet publish tests/Altpatch.Fuzz -c Release -o "$out/bin" >"$out.publish.log" 2>&1 || { cat "$out.publish.log"; exit 2; }
# Altpatch, and the decoders its payload readers wrap (without them the payload targets see a few dozen edges).
for dll in Altpatch SharpCompress ZstdSharp K4os.Compression.LZ4; do
  sharpfuzz "$out/bin/$dll.dll" >/dev/null || { echo "fuzz: sharpfuzz could not instrument $dll.dll"; exit 2; }
done
# The seeds come from the uninstrumented build (instrumented code may only run under afl-fuzz).
dotnet build tests/Altpatch.Fuzz -c Release >/dev/null 2>&1
driver=tests/Altpatch.Fuzz/bin/Release/net10.0/Altpatch.Fuzz.dll
rm -rf "$out/seeds"
dotnet "$driver" seed "$out/seeds" || exit 2

targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <(dotnet "$driver" list | awk '{print $1}')

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_BIN_CHECK=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1 \
       AFL_MAP_SIZE=65536 AFL_SKIP_CRASHES=1 AFL_FAST_CAL=1
# The payload decoders fuzzed are the managed ones (instrumented), not the system's liblzma/libzstd that the library
# tries first (src/Altpatch/Images/NativeXz.cs, NativeZstd.cs).
export ALTPATCH_MANAGED_XZ=1 ALTPATCH_MANAGED_ZSTD=1
crashed=0
for t in "${targets[@]}"; do
  in="$out/in/$t"
  rm -rf "$in" && mkdir -p "$in"
  cp "$out/seeds/$t"/* "$in"/ 2>/dev/null
  cp tests/data/fuzz/corpus/"$t"/* "$in"/ 2>/dev/null
  if [ -z "$(ls -A "$in")" ]; then echo "fuzz: $t has no seeds"; continue; fi
  mkdir -p "$out/out"
  # -V: stop after SECONDS of fuzzing; -t: a fixed per-input timeout (not "+", which lets afl-fuzz lower it: SharpFuzz runs
  # every input in one process, so a timeout kills the whole session; the table targets load their frame on the first input).
  # At nice 19 on a busy machine the first input (start-up, JIT, a frame) can starve past any timeout: a session that
  # does not get going is tried again, up to 3 times, resuming what the previous one found.
  rm -rf "$out/out/$t"
  for attempt in 1 2 3; do
    AFL_AUTORESUME=1 nice -n 19 afl-fuzz -V "$seconds" -t 30000 -m none -i "$in" -o "$out/out/$t" -- dotnet "$out/bin/Altpatch.Fuzz.dll" run "$t" \
      >"$out/out/$t.log" 2>&1
    grep -aq "No instrumentation detected\|Fork server handshake failed\|Timeout while initializing fork server" "$out/out/$t.log" || break
    echo "fuzz: $t did not get going (attempt $attempt), trying again"
    sleep 5
  done
  stats="$out/out/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then echo "fuzz: $t did not start (see $out/out/$t.log)"; [ $smoke = 1 ] || crashed=1; continue; fi
  if grep -aq "PROGRAM ABORT" "$out/out/$t.log"; then
    echo "fuzz: $t was aborted: $(grep -a -A1 'PROGRAM ABORT' "$out/out/$t.log" | tr -d '\033' | tr '\n' ' ' | cut -c1-160)"
    [ $smoke = 1 ] || crashed=1
  fi
  get() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(get saved_crashes); hangs=$(get saved_hangs)
  echo "fuzz: $t: $(get execs_done) execs in $(( $(get last_update) - $(get start_time) )) s, corpus $(get corpus_count), edges $(get edges_found), crashes $crashes, hangs $hangs"
  [ "${crashes:-0}" != 0 ] && { crashed=1; ls "$out/out/$t/default/crashes"; }
done
exit $crashed
