#!/bin/sh
# fuzz.sh - build the libFuzzer payload harness with clang and run it for $1 seconds (default 60); non-zero on a crash.
set -eu

SECONDS_TO_RUN=${1:-60}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${MES_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mes-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

CC=clang cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Debug -DMES_FUZZ=ON -DMES_TESTS=ON >"$WORK/configure.log" 2>&1 ||
  { cat "$WORK/configure.log"; exit 1; }
cmake --build "$BUILD" --target fuzz_payload -j"$(nproc)"

# Run on a copy: libFuzzer adds every new interesting input to the first corpus directory.
mkdir -p "$WORK/corpus" "$WORK/artifacts"
cp "$ROOT"/tests/fuzz/corpus/* "$WORK/corpus/"

echo "fuzzing for ${SECONDS_TO_RUN}s (crash reproducers go to $ROOT/build-fuzz-artifacts on failure)"
status=0
# libFuzzer's progress lines go to a log (thousands of them); the summary and any crash report are shown.
"$BUILD/tests/fuzz/fuzz_payload" "$WORK/corpus" \
  -max_total_time="$SECONDS_TO_RUN" -max_len=70000 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$WORK/artifacts/" >"$WORK/fuzz.log" 2>&1 || status=$?
grep -E '^(stat::|Done|INFO: Seed)' "$WORK/fuzz.log" || true

if [ "$status" -ne 0 ] || [ -n "$(ls -A "$WORK/artifacts")" ]; then
  tail -n 60 "$WORK/fuzz.log" >&2
  mkdir -p "$ROOT/build-fuzz-artifacts"
  cp "$WORK"/artifacts/* "$ROOT/build-fuzz-artifacts/" 2>/dev/null || true
  echo "fuzz_payload FAILED (status $status); reproducers in $ROOT/build-fuzz-artifacts" >&2
  exit 1
fi
echo "fuzz_payload: no crash in ${SECONDS_TO_RUN}s"
