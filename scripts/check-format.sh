#!/usr/bin/env bash
# check-format.sh [--fix] - every C file of the project against .clang-format (the house style). Without --fix it
# changes nothing and fails naming the files that differ; with --fix it formats them in place.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
command -v clang-format >/dev/null 2>&1 || { echo "clang-format is not installed (bash scripts/install-deps.sh)"; exit 77; }
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.c' '*.h' 2>/dev/null || find src include tests bench loadtest examples -name '*.[ch]')
if [ "${1:-}" = --fix ]; then
  clang-format -i --style=file "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror --style=file "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -gt 0 ]; then
  echo "not formatted per .clang-format (bash scripts/check-format.sh --fix): ${bad[*]}"
  exit 1
fi
echo "format: ${#files[@]} files match .clang-format"
