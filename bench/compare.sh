#!/usr/bin/env bash
# compare.sh [REV] - before/after in one session: builds REV (default HEAD~1) beside the working tree's build
# (bench_build_old in bench/lib.sh, kept in build-bench/old/<sha>), then runs the same benchmarks against both service
# binaries, interleaved so that a noisy moment hits both alike: the realistic-mix drain three times each (medians
# compared), then publish->commit latency at paced rates (COMPARE_RATES, default 50% and 70% of the OLD build's median
# drain rate), COMPARE_REPEAT times each (default 2). Prints the medians and the new/old ratios, also of PostgreSQL's
# tx/s and the service's peak sessions.
#
# Environment: BENCH_BUILD_DIR (default <repo>/build-bench), COMPARE_MIX_COUNT (default 60000),
# BENCH_LAT_SECONDS (default 20). Raw JSON lines stay in $BENCH_BUILD_DIR/compare-results/<timestamp>.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REV=${1:-HEAD~1}
BUILD=${BENCH_BUILD_DIR:-$ROOT/build-bench}
COUNT=${COMPARE_MIX_COUNT:-60000}
LAT_SECONDS=${BENCH_LAT_SECONDS:-20}
OUT=$BUILD/compare-results/$(date +%Y%m%d-%H%M%S)
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh"

bash "$ROOT/scripts/install-deps.sh" >&2
bench_build_old "$ROOT" "$REV" "$BUILD" || exit 1
echo "building new (working tree) ..." >&2
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j2 --target message-event-service mes-loadgen bench-drain bench-latency >/dev/null
NEW_BIN=$BUILD/message-event-service
mkdir -p "$OUT"
export MES_BUILD_DIR=$BUILD

# run NAME BIN CMD...: one benchmark against BIN, its JSON line to $OUT/NAME.json.
run() {
    local name=$1 bin=$2
    shift 2
    echo "  $name ..." >&2
    MES_SERVICE_BIN=$bin "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err" || { echo "  $name FAILED" >&2; return 1; }
}
field() { sed -n -E "s/.*\"$2\":\"?([^,\"}]*)\"?.*/\1/p" "$OUT/$1.json" | head -1; }
# The median; of an even count, the mean of the middle two (with COMPARE_REPEAT=2 the lower of two hid a stalled run).
median() {
    sort -g | awk '{ v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else if (NR) print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# Every run's value, in run order, e.g. "28/67": printed beside the medians of the paced runs.
runs() { paste -sd/ -; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

for k in 1 2 3; do
    run "old-mix-$k" "$OLD_BIN" "$BUILD/bench/bench-drain" --label realistic-mix --count "$COUNT" --subjects "$MIX" \
        --history-count 20
    run "new-mix-$k" "$NEW_BIN" "$BUILD/bench/bench-drain" --label realistic-mix --count "$COUNT" --subjects "$MIX" \
        --history-count 20
done
OLD_MIX=$(for k in 1 2 3; do field "old-mix-$k" events_per_s; done | median)
NEW_MIX=$(for k in 1 2 3; do field "new-mix-$k" events_per_s; done | median)
# Paced rates: COMPARE_RATES (events/s, e.g. "4000 7000"), else 50% and 70% of the old build's drain. A paced rate
# above what the box sustains (NATS, PostgreSQL, the generator and the service share its cores) only measures how
# fast a queue grows, and that differs from run to run: then name rates below it.
if [ -n "${COMPARE_RATES:-}" ]; then
    read -r -a RATES <<<"$COMPARE_RATES"
else
    read -r -a RATES <<<"$(awk -v m="$OLD_MIX" 'BEGIN { printf "%.0f %.0f", m * 0.5, m * 0.7 }')"
fi
REPEAT=${COMPARE_REPEAT:-2}
for rate in "${RATES[@]}"; do
    for ((k = 1; k <= REPEAT; k++)); do
        for who in old new; do
            bin=$OLD_BIN
            [ "$who" = new ] && bin=$NEW_BIN
            run "$who-lat$rate-$k" "$bin" "$BUILD/bench/bench-latency" --label "lat-$rate" --rate "$rate" \
                --duration "$LAT_SECONDS" --history-count 20
        done
    done
done

echo
echo "before/after, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "old: $REV (${OLD_SHA:0:10})   new: working tree ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+changes'))"
printf '%-42s %14s %14s %8s\n' "measure" "old" "new" "new/old"
printf '%-42s %14s %14s %8s   runs: old %s, new %s\n' "realistic-mix drain (median of 3)" "$OLD_MIX" "$NEW_MIX" \
    "$(ratio "$NEW_MIX" "$OLD_MIX")" "$(for k in 1 2 3; do field "old-mix-$k" events_per_s; done | runs)" \
    "$(for k in 1 2 3; do field "new-mix-$k" events_per_s; done | runs)"
# PostgreSQL's side (bench_pgwatch): commits per second and the service's peak sessions, medians of the same runs.
for q in tx_per_s peak_sessions; do
    o=$(for k in 1 2 3; do field "old-mix-$k" "$q"; done | median)
    n=$(for k in 1 2 3; do field "new-mix-$k" "$q"; done | median)
    printf '%-42s %14s %14s %8s\n' "  drain $q (median of 3)" "$o" "$n" "$(ratio "$n" "$o")"
done
# Deadlocks PostgreSQL broke, summed over every run of a build (each stalls a writer for deadlock_timeout).
deadlocks() {
    for f in "$OUT/$1"-*.json; do field "$(basename "$f" .json)" deadlocks; done | awk '{ t += $1 } END { print t + 0 }'
}
o=$(deadlocks old) n=$(deadlocks new)
printf '%-42s %14s %14s %8s\n' "deadlocks (sum over all runs)" "$o" "$n" ""
for rate in "${RATES[@]}"; do
    for q in p50_ms p99_ms lost tx_per_s peak_sessions; do
        ov=$(for ((k = 1; k <= REPEAT; k++)); do field "old-lat$rate-$k" "$q"; done)
        nv=$(for ((k = 1; k <= REPEAT; k++)); do field "new-lat$rate-$k" "$q"; done)
        o=$(median <<<"$ov") n=$(median <<<"$nv")
        printf '%-42s %14s %14s %8s   runs: old %s, new %s\n' "$q at $rate ev/s (median of $REPEAT)" "$o" "$n" \
            "$(ratio "$n" "$o")" "$(runs <<<"$ov")" "$(runs <<<"$nv")"
    done
done
echo "raw results: $OUT"
