#!/usr/bin/env bash
# test.sh - the project's test command (README, CI): installs dependencies, builds build/ (RelWithDebInfo) and
# runs every test, then builds build-asan/ (ASan+UBSan) and runs every test again, then the fresh-machine check,
# the container image check (scripts/image-test.sh) and a short fuzz run.
# Exits non-zero when any step fails; ends with a one-line-per-step summary.
#
# Knobs:
#   MES_TEST_QUICK=1      skip the sanitizer passes (ASan+UBSan, TSan)
#   MES_ASAN_CC=gcc       compiler for the sanitizer build (default: clang when installed, else gcc)
#   MES_CTEST_ARGS="..."  extra ctest arguments for both passes, e.g. "-R integration -V"
#   MES_FUZZ_SECONDS=N    length of the fuzz run (default 30)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
JOBS=$(nproc 2>/dev/null || echo 2)
read -r -a CTEST_EXTRA <<<"${MES_CTEST_ARGS:-}"
summary=()
failed=0

# step NAME CMD...: runs CMD, records PASS/FAIL with its duration; returns CMD's status.
step() {
  local name=$1 start rc
  shift
  echo
  echo "=== ${name}"
  start=$(date +%s)
  "$@"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    summary+=("PASS  ${name} ($(($(date +%s) - start))s)")
  elif [ "$rc" -eq 77 ]; then # the step could not run on this machine and said why
    summary+=("SKIP  ${name} (could not run here: see its output)")
    return 0
  else
    summary+=("FAIL  ${name} (exit ${rc}, $(($(date +%s) - start))s)")
    failed=1
  fi
  return "$rc"
}

skip() {
  summary+=("SKIP  $1")
}

run_pass() { # run_pass DIR LABEL [cmake args...]
  local dir=$1 label=$2
  shift 2
  if step "configure ${dir}/ (${label})" cmake -S . -B "$dir" "$@" &&
     step "build ${dir}/" cmake --build "$dir" -j"$JOBS"; then
    step "ctest ${dir}/" ctest --test-dir "$dir" --output-on-failure -j2 --timeout 300 "${CTEST_EXTRA[@]}" \
      ${PASS_CTEST_ARGS:-}
  else
    skip "ctest ${dir}/ (build failed)"
  fi
}

if step "install dependencies" bash scripts/install-deps.sh; then
  # The house style (.clang-format) over every C file: fails naming the files that differ.
  step "format: C files match .clang-format" bash scripts/check-format.sh
  run_pass build RelWithDebInfo -DCMAKE_BUILD_TYPE=RelWithDebInfo

  if [ "${MES_TEST_QUICK:-0}" = 1 ]; then
    skip "sanitizer pass (MES_TEST_QUICK=1)"
  else
    asan_cc=${MES_ASAN_CC:-}
    if [ -z "$asan_cc" ]; then
      if command -v clang >/dev/null 2>&1; then asan_cc=clang; else asan_cc=gcc; fi
    fi
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    # Sanitizers slow the service 5-15x: a test that misses a deadline there gets one more run (its first output
    # stays in the log). The plain pass above gets no second chance.
    CC=$asan_cc PASS_CTEST_ARGS="--repeat until-pass:2" run_pass build-asan "ASan+UBSan, ${asan_cc}" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMES_SANITIZE=ON
    unset ASAN_OPTIONS UBSAN_OPTIONS
    # ThreadSanitizer over the threaded parts (lanes, prefetchers, DLQ pool, HTTP, harness): every unit and
    # integration test except the static file checks and the serial load-test run, which add no new threading.
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp}
    CC=$asan_cc PASS_CTEST_ARGS="-E static|loadtest --repeat until-pass:2" run_pass build-tsan "TSan, ${asan_cc}" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMES_TSAN=ON
    unset TSAN_OPTIONS
  fi

  # The README's first command on a minimal Debian 12 chroot (scripts/fresh-machine.sh; cached root filesystem).
  step "fresh machine: demo in a minimal Debian 12 chroot" bash scripts/fresh-machine.sh

  # deploy/Dockerfile built with podman (layers cached) and run against its own NATS and PostgreSQL.
  step "image: deploy/Dockerfile built and run with podman" bash scripts/image-test.sh

  if [ -f scripts/fuzz.sh ]; then
    step "fuzz (${MES_FUZZ_SECONDS:-30}s)" bash scripts/fuzz.sh "${MES_FUZZ_SECONDS:-30}"
  else
    skip "fuzz (no scripts/fuzz.sh)"
  fi
fi

echo
echo "=== summary"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "RESULT: FAILED"
  exit 1
fi
echo "RESULT: all passed"
