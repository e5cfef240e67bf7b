#!/usr/bin/env bash
# soak.sh [DURATION] - a long run of one tenant with two replicas under a steady realistic load, watching for what
# only time shows: memory or descriptors that grow, connections that pile up, latency that drifts, events lost.
#
#   bash bench/soak.sh            # 10 minutes
#   bash bench/soak.sh 30m        # DURATION: 90s, 3m, 30m, 1h, or seconds
#
# 1. The drain rate: bench-drain (bench/README.md) drains a pre-published realistic-mix backlog (history batches of
#    20 items) with the real service; SOAK_RATE=N skips it and uses N as the load rate instead.
# 2. nats-server (JetStream, monitoring on -m PORT) and PostgreSQL on free loopback ports; two replicas of the
#    service for tenant "soak" (same COMPANY_ID, same durables).
# 3. mes-loadgen runs the same mix at 50% of that rate with 1% poison (--invalid-ratio 0.01) for DURATION, plus
#    20 probe events/s published by mes-publish that carry their publish time (bench-latency's method: latency =
#    the row's updated_at - publish time).
# 4. Every 10 s: RSS, open fds and threads of each replica (/proc), PostgreSQL sessions of the service
#    (pg_stat_activity, application_name message-event-service), NATS client connections (/connz).
# 5. At the end mes-loadgen --verify proves every published event is stored, in the DLQ or an exhausted event, and
#    every probe must be in PostgreSQL. p99 publish->commit per 10 s window comes from the probes' rows.
# 6. Verdict: RSS and fd slope over the second half ~ 0 (fitted change over the second half within max(2 MiB, 5%)
#    of the replica's RSS and within 2 fds), p99 stable (median window p99 of the second half <= 2 x that of the
#    first half + 20 ms: these machines are shared, single windows spike), nothing lost. Samples and the verdict go to SOAK_OUT, the chart to SOAK_OUT/soak.png.
#
# Environment: SOAK_RATE (skip the drain measurement), SOAK_DRAIN_COUNT (events for it, default 60000),
# SOAK_BUILD_DIR (default <repo>/build-bench, shared with bench/run.sh), SOAK_SERVICE_BIN (another service binary,
# e.g. build-asan/message-event-service for a sanitizer soak: give SOAK_RATE then), SOAK_OUT (default
# $SOAK_BUILD_DIR/soak-results/<timestamp>). Exit status: 0 the verdict passed, 1 it failed or the run could not
# be completed. Not part of the test suite (it asserts on rates and times).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SOAK_BUILD_DIR:-$ROOT/build-bench}
OUT=${SOAK_OUT:-$BUILD/soak-results/$(date +%Y%m%d-%H%M%S)}
DURATION=${1:-10m}
COMPANY=soak
SAMPLE_S=10
PROBES_PER_S=20
# shellcheck source=lib.sh
. "$ROOT/bench/lib.sh" # MIX
T0=$SECONDS

log() { printf '[soak %(%H:%M:%S)T +%ss] %s\n' -1 "$((SECONDS - T0))" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

case $DURATION in
  *[0-9]s) DUR_S=${DURATION%s} ;;
  *[0-9]m) DUR_S=$((${DURATION%m} * 60)) ;;
  *[0-9]h) DUR_S=$((${DURATION%h} * 3600)) ;;
  *[0-9]) DUR_S=$DURATION ;;
  *) die "DURATION must look like 90s, 10m, 1h or 600 (got '$DURATION')" ;;
esac
[[ $DUR_S =~ ^[0-9]+$ ]] && [ "$DUR_S" -ge 60 ] || die "DURATION must be at least 60s (got '$DURATION')"

bash "$ROOT/scripts/install-deps.sh" >&2 || die "installing the packages failed (see above)"
for tool in nats-server curl psql gnuplot python3 ss; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (bash scripts/install-deps.sh)"
done
find_pg_bin || die "cannot start PostgreSQL"
log "building into $BUILD ..."
{ cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
  cmake --build "$BUILD" -j2 --target message-event-service mes-loadgen mes-publish bench-drain >/dev/null; } ||
  die "build failed (run the cmake commands above to see why)"
SVC_BIN=${SOAK_SERVICE_BIN:-$BUILD/message-event-service}
LOADGEN=$BUILD/loadtest/mes-loadgen
PUBLISH=$BUILD/loadtest/mes-publish
mkdir -p "$OUT"

WORK="" NATS_PID="" PG_PID="" PG_DATA="" LOADGEN_PID="" PROBE_PID="" PUB_PID=""
SVC_PIDS=()
stop_all() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  for pid in "$PROBE_PID" "$LOADGEN_PID"; do alive "$pid" && kill -TERM "$pid"; done
  for pid in "${SVC_PIDS[@]}"; do alive "$pid" && kill -TERM "$pid"; done
  for pid in "${SVC_PIDS[@]}" "$PROBE_PID" "$PUB_PID" "$LOADGEN_PID"; do
    for _ in $(seq 1 250); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "pid $pid ignored SIGTERM; killing it"; kill -9 "$pid"; }
  done
  if alive "$NATS_PID"; then
    kill -TERM "$NATS_PID"
    for _ in $(seq 1 100); do alive "$NATS_PID" || break; sleep 0.1; done
    alive "$NATS_PID" && kill -9 "$NATS_PID"
  fi
  if alive "$PG_PID"; then
    (cd "$WORK" && as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 20 stop >/dev/null 2>&1)
    alive "$PG_PID" && kill -9 "$PG_PID"
  fi
  wait 2>/dev/null
  if [ -n "$WORK" ]; then
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null
    rm -rf "$WORK"
  fi
  log "stopped everything this run started; results in $OUT"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. the drain rate ------------------------------------------------------------------------------------------
if [ -n "${SOAK_RATE:-}" ]; then
  [[ $SOAK_RATE =~ ^[0-9]+$ && $SOAK_RATE -gt 0 ]] || die "SOAK_RATE must be a positive integer"
  DRAIN=$((SOAK_RATE * 2))
  log "SOAK_RATE=$SOAK_RATE given: no drain measurement"
else
  n=${SOAK_DRAIN_COUNT:-60000}
  log "measuring the drain rate: bench-drain, realistic mix (history 20 items), $n events"
  MES_BUILD_DIR=$BUILD MES_SERVICE_BIN=$SVC_BIN "$BUILD/bench/bench-drain" --label realistic-mix --count "$n" \
    --subjects "$MIX" --history-count 20 --json >"$OUT/drain.json" 2>"$OUT/drain.err" ||
    { tail -n 20 "$OUT/drain.err"; die "bench-drain failed"; }
  DRAIN=$(sed -n -E 's/.*"events_per_s":([0-9.]+).*/\1/p' "$OUT/drain.json" | head -1)
  DRAIN=${DRAIN%.*}
  [ -n "$DRAIN" ] && [ "$DRAIN" -gt 0 ] || die "no drain rate in $OUT/drain.json"
fi
RATE=$((DRAIN / 2 - PROBES_PER_S))
[ "$RATE" -gt 0 ] || die "the drain rate ($DRAIN events/s) is too low for a soak"
log "drain rate $DRAIN events/s$([ -z "${SOAK_RATE:-}" ] || echo " (2 x SOAK_RATE)"): the soak runs at $RATE events/s + $PROBES_PER_S probes/s (50%) for ${DUR_S}s"

# --- 2. servers and two replicas --------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/mes-soak.XXXXXX)
chmod 755 "$WORK"
NATS_PORT=$(free_port) && NATS_MON=$(free_port) && PG_PORT=$(free_port) && P1=$(free_port) && P2=$(free_port) ||
  die "no free port found"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
wait_for 20 "nats-server" curl -fs -o /dev/null "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" ||
  { tail -n 20 "$WORK/nats.log"; die "nats-server did not start"; }
pg_start "$WORK/pg" "$PG_PORT" 100 || die "PostgreSQL did not start"
NATS_URL=nats://127.0.0.1:$NATS_PORT
PORTS=("$P1" "$P2")
for r in 0 1; do
  env COMPANY_ID=$COMPANY NATS_URL="$NATS_URL" POSTGRES_DSN="$DSN" SERVER_PORT="${PORTS[$r]}" \
    SERVER_ADDRESS=127.0.0.1 LOG_LEVEL=info "$SVC_BIN" >"$WORK/replica$((r + 1)).log" 2>&1 &
  SVC_PIDS+=($!)
done
both_ready() {
  local r
  for r in 0 1; do
    alive "${SVC_PIDS[$r]}" || { tail -n 20 "$WORK/replica$((r + 1)).log"; die "replica $((r + 1)) exited"; }
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:${PORTS[$r]}/ready" || return 1
  done
}
wait_for 120 "both replicas to be ready" both_ready || die "the replicas did not become ready"
log "nats-server pid $NATS_PID (:$NATS_PORT, monitoring :$NATS_MON), PostgreSQL pid $PG_PID (:$PG_PORT)," \
  "replicas pids ${SVC_PIDS[*]} (:$P1, :$P2), tenant $COMPANY"

# --- 3. the load and the probes ---------------------------------------------------------------------------------
"$LOADGEN" --url "$NATS_URL" --company_ids $COMPANY --subjects "$MIX" --history-count 20 --invalid-ratio 0.01 \
  --rate "$RATE" --duration "${DUR_S}s" --id-prefix soak --verify "$DSN" --verify-timeout 300s \
  >"$WORK/loadgen.log" 2>&1 &
LOADGEN_PID=$!
# Probe k: a new chat whose last_message carries its publish time (wall clock, us), read back from its row.
probes() {
  local k=0 next us
  next=${EPOCHREALTIME/./}
  while [ "$k" -lt $((DUR_S * PROBES_PER_S)) ]; do
    us=${EPOCHREALTIME/./}
    if [ "$us" -lt "$next" ]; then
      sleep "$(printf '0.%06d' $((next - us)))"
      continue
    fi
    printf 'v1.chats.upsert.%s {"chat_id":"probe-%d","jid":"6599%08d@s.whatsapp.net","agent_id":"probe-a%d","phone_number":"+6599%08d","push_name":"Probe","is_group":false,"not_spam":true,"unread_count":1,"conversation_timestamp":%d,"last_message":{"text":"probe","pub_us":%s}}\n' \
      "$COMPANY" "$k" "$k" "$((k % 8))" "$k" "$((us / 1000000))" "${EPOCHREALTIME/./}"
    k=$((k + 1))
    next=$((next + 1000000 / PROBES_PER_S))
  done
}
mkfifo "$WORK/probes.fifo"
"$PUBLISH" --url "$NATS_URL" --id-prefix probe <"$WORK/probes.fifo" >"$WORK/probes.log" 2>&1 &
PUB_PID=$!
probes >"$WORK/probes.fifo" &
PROBE_PID=$!
log "mes-loadgen pid $LOADGEN_PID: $RATE events/s, 1% poison, ${DUR_S}s; probes pid $PROBE_PID -> mes-publish" \
  "pid $PUB_PID: $PROBES_PER_S/s"

# --- 4. samples -------------------------------------------------------------------------------------------------
SAMPLES=$OUT/samples.tsv
printf 't_s\trss1_mib\trss2_mib\tfds1\tfds2\tthreads1\tthreads2\tpg_sessions\tnats_conns\tprocessed\tfailed\n' \
  >"$SAMPLES"
proc_rss() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo nan; }
proc_thr() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo nan; }
proc_fds() { local n; n=$(ls "/proc/$1/fd" 2>/dev/null | wc -l); [ "$n" -gt 0 ] && echo "$n" || echo nan; }
metric_sum() { # metric_sum NAME: the sum over both replicas of a counter's samples
  local p
  for p in "$P1" "$P2"; do curl -fs --max-time 3 "http://127.0.0.1:$p/metrics"; done 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.0f", s}'
}
sample() {
  local t=$1 pg nats
  pg=$(psql "$DSN" -XAtq -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'message-event-service'" \
    2>/dev/null || echo nan)
  nats=$(curl -fs --max-time 3 "http://127.0.0.1:$NATS_MON/connz" 2>/dev/null |
    sed -n -E 's/.*"num_connections": *([0-9]+).*/\1/p' | head -1)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" \
    "$(proc_rss "${SVC_PIDS[0]}")" "$(proc_rss "${SVC_PIDS[1]}")" \
    "$(proc_fds "${SVC_PIDS[0]}")" "$(proc_fds "${SVC_PIDS[1]}")" \
    "$(proc_thr "${SVC_PIDS[0]}")" "$(proc_thr "${SVC_PIDS[1]}")" "$pg" "${nats:-nan}" \
    "$(metric_sum message_event_service_events_processed_total)" \
    "$(metric_sum message_event_service_events_failed_total)" >>"$SAMPLES"
}
START_US=${EPOCHREALTIME/./}
next=$SECONDS
CRASH=""
while true; do
  t=$(((${EPOCHREALTIME/./} - START_US) / 1000000))
  [ "$t" -le "$DUR_S" ] || break
  for r in 0 1; do
    alive "${SVC_PIDS[$r]}" && continue
    wait "${SVC_PIDS[$r]}"
    CRASH="replica $((r + 1)) died at t=${t}s with status $? ($(grep -v '^{' "$WORK/replica$((r + 1)).log" |
      grep -m1 -E 'ERROR|free\(\)|Assertion|abort' | cut -c1-160); log: $OUT/replica$((r + 1)).log)"
    log "$CRASH"
    break 2
  done
  sample "$t"
  if [ $((t / 60)) -ne "${last_min:--1}" ]; then
    last_min=$((t / 60))
    log "t=${t}s $(tail -n 1 "$SAMPLES" | awk -F'\t' '{printf "RSS %s/%s MiB, fds %s/%s, threads %s/%s, pg %s, nats %s, processed %s", $2, $3, $4, $5, $6, $7, $8, $9, $10}')"
  fi
  next=$((next + SAMPLE_S))
  while [ "$SECONDS" -lt "$next" ]; do sleep 0.5; done
done

# --- 5. verify ----------------------------------------------------------------------------------------------------
if [ -n "$CRASH" ]; then # the samples so far still make a chart; nothing can be verified
  log "stopping the load early: $CRASH"
  RUN_S=$t
  kill -TERM "$LOADGEN_PID" "$PROBE_PID" 2>/dev/null
else
  RUN_S=$DUR_S
  log "load over; mes-loadgen verifies (waits for the drain, up to 300s)"
fi
deadline=$((SECONDS + 400))
while alive "$LOADGEN_PID"; do
  [ "$SECONDS" -lt "$deadline" ] || die "mes-loadgen still runs 400s after the load ended"
  sleep 0.5
done
LG_RC=0
wait "$LOADGEN_PID" || LG_RC=$?
LOADGEN_PID=""
wait "$PROBE_PID" 2>/dev/null
PROBE_PID=""
# The probes' publisher ends when its input does (the probe loop ended with the load).
wait_for 30 "the probe publisher to finish" bash -c "! kill -0 $PUB_PID 2>/dev/null" || kill -TERM "$PUB_PID"
wait "$PUB_PID" 2>/dev/null
PUB_PID=""
[ -n "$CRASH" ] || sample "$(((${EPOCHREALTIME/./} - START_US) / 1000000))" # after the drain
PROBES_SENT=$(sed -n -E 's/^published ([0-9]+) events \(([0-9]+) failed\).*/\1/p' "$WORK/probes.log")
PROBES_FAILED=$(sed -n -E 's/^published ([0-9]+) events \(([0-9]+) failed\).*/\2/p' "$WORK/probes.log")
psql "$DSN" -XAtq -F $'\t' >"$OUT/p99.tsv" 2>"$WORK/p99.err" <<SQL
SELECT floor(((last_message->>'pub_us')::bigint - $START_US) / 1e6 / $SAMPLE_S) * $SAMPLE_S + $SAMPLE_S AS t_end,
       count(*),
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 1),
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 1),
       round(max(ms)::numeric, 1)
FROM (SELECT last_message, extract(epoch FROM updated_at) * 1000 - (last_message->>'pub_us')::float8 / 1000 AS ms
      FROM daisi_$COMPANY.chats WHERE chat_id LIKE 'probe-%') p
GROUP BY 1 ORDER BY 1;
SQL
PROBES_STORED=$(psql "$DSN" -XAtq -c "SELECT count(*) FROM daisi_$COMPANY.chats WHERE chat_id LIKE 'probe-%'")
DLQ_ROWS=$(psql "$DSN" -XAtq -c "SELECT count(*) FROM daisi_$COMPANY.exhausted_events" 2>/dev/null || echo "n/a")

# --- 6. verdict and chart ----------------------------------------------------------------------------------------
grep -E '^verify|published|rate|loss|DLQ' "$WORK/loadgen.log" | tail -n 12 >"$OUT/loadgen-summary.txt"
python3 - "$SAMPLES" "$OUT/p99.tsv" "$RUN_S" "$LG_RC" "${PROBES_SENT:-0}" "${PROBES_FAILED:-0}" \
  "${PROBES_STORED:-0}" "$OUT/verdict.txt" "$RATE" "$DRAIN" "$DLQ_ROWS" "$CRASH" "$PROBES_PER_S" <<'PY'
import math, statistics, sys
samples_f, p99_f, dur, lg_rc, sent, pfail, stored, verdict_f, rate, drain, exhausted, crash, probes_per_s = \
    sys.argv[1:14]
probes_per_s = int(probes_per_s)
dur, lg_rc, sent, pfail, stored = int(dur), int(lg_rc), int(sent), int(pfail), int(stored)
rows = [l.rstrip("\n").split("\t") for l in open(samples_f)][1:]
cols = ["t", "rss1", "rss2", "fds1", "fds2", "thr1", "thr2", "pg", "nats", "processed", "failed"]
def num(v):
    try:
        return float(v)
    except ValueError:
        return math.nan
data = [dict(zip(cols, map(num, r))) for r in rows]
load = [d for d in data if d["t"] <= dur]          # the last sample is taken after the drain
half = [d for d in load if d["t"] >= dur / 2]
def slope(key):
    pts = [(d["t"], d[key]) for d in half if not math.isnan(d[key])]
    if len(pts) < 3:
        return math.nan, math.nan
    mt = statistics.fmean(p[0] for p in pts)
    mv = statistics.fmean(p[1] for p in pts)
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    s = sum((t - mt) * (v - mv) for t, v in pts) / sxx
    return s, mv
lines, ok = [], True
span = (half[-1]["t"] - half[0]["t"]) if len(half) > 1 else 0
lines.append(f"soak: {dur}s{' (ended early)' if crash else ''} at {rate} events/s (+{probes_per_s} probes/s) = "
             f"50% of {drain} events/s, "
             f"1% poison, tenant soak x 2 replicas; {len(load)} samples every 10s")
for r in ("1", "2"):
    s, mv = slope("rss" + r)
    if math.isnan(s):
        ok = False
        lines.append(f"replica {r}: fewer than 3 samples in the second half: no slope (run longer)")
        continue
    change = s * span
    good = not math.isnan(s) and abs(change) <= max(2.0, 0.05 * mv)
    ok &= good
    lines.append(f"replica {r} RSS: mean {mv:.1f} MiB over the second half, slope {s * 3600:+.1f} MiB/h "
                 f"(fitted change {change:+.2f} MiB over {span:.0f}s) -> {'ok' if good else 'GROWS'}")
    s, mv = slope("fds" + r)
    change = s * span
    good = not math.isnan(s) and abs(change) <= 2
    ok &= good
    lines.append(f"replica {r} fds: mean {mv:.1f}, slope {s * 3600:+.1f} /h (fitted change {change:+.2f}) "
                 f"-> {'ok' if good else 'GROWS'}")
    th = [d["thr" + r] for d in load if not math.isnan(d["thr" + r])] or [math.nan]
    lines.append(f"replica {r} threads: {min(th):.0f}..{max(th):.0f}")
pg = [d["pg"] for d in load if not math.isnan(d["pg"])] or [math.nan]
nc = [d["nats"] for d in load if not math.isnan(d["nats"])] or [math.nan]
lines.append(f"PostgreSQL sessions of the service: {min(pg):.0f}..{max(pg):.0f}; NATS connections: "
             f"{min(nc):.0f}..{max(nc):.0f}")
win = []
for l in open(p99_f):
    f = l.split("\t")
    if len(f) == 5 and float(f[0]) <= dur + 10 and float(f[0]) > 0:
        win.append((float(f[0]), int(f[1]), float(f[2]), float(f[3]), float(f[4])))
win = [w for w in win if w[1] >= 5 * probes_per_s]   # a partial window at the end says little
first = [w[3] for w in win if w[0] > 10 and w[0] <= dur / 2]   # the first window is the warm-up
second = [w[3] for w in win if w[0] > dur / 2]
if first and second:
    m1, m2 = statistics.median(first), statistics.median(second)
    good = m2 <= 2 * m1 + 20
    ok &= good
    allp = [w[3] for w in win if w[0] > 10]
    lines.append(f"p99 publish->commit per 10s window: median {m1:.1f} ms (first half) vs {m2:.1f} ms (second half), "
                 f"range {min(allp):.1f}..{max(allp):.1f} ms, worst single probe {max(w[4] for w in win):.1f} ms "
                 f"-> {'stable' if good else 'DRIFTS'}")
else:
    ok = False
    lines.append("p99 publish->commit: not enough windows")
lost = sent - stored
if crash:
    ok = False
    lines.append(f"CRASH: {crash}")
    lines.append("nothing lost: not verified (the run ended early)")
else:
    good = lg_rc == 0 and pfail == 0 and lost == 0 and sent > 0
    ok &= good
    lines.append(f"nothing lost: mes-loadgen --verify exit {lg_rc}; probes published {sent} ({pfail} failed), "
                 f"stored {stored}; exhausted_events rows {exhausted} -> {'ok' if good else 'LOST'}")
lines.append("VERDICT: " + ("PASS" if ok else "FAIL"))
open(verdict_f, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if ok else 1)
PY
VERDICT_RC=$?
cat "$OUT/loadgen-summary.txt"

gnuplot 2>"$WORK/gnuplot.log" <<EOF || log "gnuplot failed: $(tail -n 3 "$WORK/gnuplot.log")"
set terminal pngcairo noenhanced size 1200,900 font ',9'
set output '$OUT/soak.png'
set multiplot layout 3,2 title 'soak: ${RUN_S}s$([ -z "$CRASH" ] || echo " (a replica died)") at ${RATE} events/s (50% of ${DRAIN}), 1% poison, 2 replicas'
set datafile separator '\t'
set key top left
set offsets 0, 0, graph 0.3, 0
set grid
set xlabel 'seconds'
set yrange [0:*]
set title 'RSS (MiB)'
plot '$SAMPLES' using 1:2 skip 1 with linespoints title 'replica 1', '' using 1:3 skip 1 with linespoints title 'replica 2'
set title 'open fds'
plot '$SAMPLES' using 1:4 skip 1 with linespoints title 'replica 1', '' using 1:5 skip 1 with linespoints title 'replica 2'
set title 'threads'
plot '$SAMPLES' using 1:6 skip 1 with linespoints title 'replica 1', '' using 1:7 skip 1 with linespoints title 'replica 2'
set title 'connections'
plot '$SAMPLES' using 1:8 skip 1 with linespoints title 'PostgreSQL sessions (service)', '' using 1:9 skip 1 with linespoints title 'NATS connections'
set title 'publish->commit per 10 s window (ms)'
plot '$OUT/p99.tsv' using (\$1 - 5):4 with linespoints title 'p99', '' using (\$1 - 5):3 with linespoints title 'p50'
set title 'events processed (both replicas, cumulative)'
plot '$SAMPLES' using 1:10 skip 1 with linespoints title 'processed', '' using 1:11 skip 1 with linespoints title 'failed deliveries'
unset multiplot
EOF
[ -s "$OUT/soak.png" ] && log "chart: $OUT/soak.png"
exit "$VERDICT_RC"
