#!/usr/bin/env bash
# demo.sh - the main job end to end on this machine: builds the service, starts nats-server and PostgreSQL in
# ./.demo/ on free loopback ports, runs message-event-service for tenant "demo", feeds it traffic, prints what
# landed (rows per table, DLQ records, metrics), and stops everything it started (by PID) on exit.
#
# Knobs: MES_DEMO_HOLD=1 keeps everything running after the summary until Ctrl-C (to look at /metrics).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
COMPANY=demo
SCHEMA=daisi_demo
BUILD=$ROOT/build
BIN=$BUILD/message-event-service
READY_LINE="Both consumers started successfully"

NATS_PID="" PG_DATA="" PG_PID="" SVC_PID=""
NATS_PORT="" PG_PORT="" HTTP_PORT=""

log() { printf '[demo] %s\n' "$*"; }
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"
report_failures demo
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

# Kills a PID recorded by an earlier run, but only if it still is the process we started.
kill_if_ours() {
  local pid=$1 marker=$2 cmd
  alive "$pid" || return 0
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  [[ $cmd == *"$marker"* ]] || return 0
  log "stopping leftover process $pid from a previous run"
  kill -9 "$pid" 2>/dev/null || true
}

stop_all() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if alive "$SVC_PID"; then
    kill -TERM "$SVC_PID"
    for _ in $(seq 1 250); do alive "$SVC_PID" || break; sleep 0.1; done
    alive "$SVC_PID" && kill -9 "$SVC_PID"
  fi
  if alive "$NATS_PID"; then
    kill -TERM "$NATS_PID"
    for _ in $(seq 1 50); do alive "$NATS_PID" || break; sleep 0.1; done
    alive "$NATS_PID" && kill -9 "$NATS_PID"
  fi
  if alive "$PG_PID"; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 20 stop >/dev/null 2>&1
    alive "$PG_PID" && kill -9 "$PG_PID"
  fi
  wait 2>/dev/null
  [ -n "$SVC_PID$NATS_PID$PG_PID" ] && log "stopped everything the demo started (logs in .demo/)"
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------------------------
bash scripts/install-deps.sh demo || die "installing the demo's packages failed (see above)"
find_pg_bin || die "cannot start PostgreSQL"

log "building build/ (RelWithDebInfo)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target message-event-service mes-publish
[ -x "$BIN" ] || die "$BIN was not built"

# A rerun starts clean: stop what a killed earlier run may have left, then remove .demo/.
if [ -f "$DEMO/pids" ]; then
  while read -r name pid marker; do kill_if_ours "$pid" "$marker"; done <"$DEMO/pids"
fi
[ -L "$DEMO/pg" ] && rm -rf "$(readlink "$DEMO/pg")"
rm -rf "$DEMO"
mkdir -p "$DEMO/nats"
chmod 755 "$DEMO"
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NATS_PORT=$(free_port) && PG_PORT=$(free_port) && HTTP_PORT=$(free_port) || die "no free port found"

# --- nats-server ---------------------------------------------------------------------------------------------
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DEMO/nats/store" >"$DEMO/nats/nats.log" 2>&1 &
NATS_PID=$!
echo "nats $NATS_PID $DEMO/nats" >>"$DEMO/pids"
wait_for 20 "nats-server" grep -qs "Server is ready" "$DEMO/nats/nats.log" ||
  { tail -n 20 "$DEMO/nats/nats.log"; die "nats-server did not start"; }
log "nats-server pid $NATS_PID on nats://127.0.0.1:$NATS_PORT (JetStream store .demo/nats/store)"

# --- PostgreSQL ----------------------------------------------------------------------------------------------
# The data dir must be reachable by the postgres user; a repo under a private home dir is not, so fall back to
# /tmp then (linked from .demo/pg).
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$DEMO"; then
  PG_HOME=$(mktemp -d /tmp/mes-demo-pg-XXXXXX)
  chmod 755 "$PG_HOME"
  ln -s "$PG_HOME" "$DEMO/pg"
  log "note: postgres cannot enter $DEMO; PostgreSQL data lives in $PG_HOME"
else
  PG_HOME=$DEMO/pg
  mkdir -p "$PG_HOME"
fi
pg_start "$PG_HOME" "$PG_PORT" 200 || die "PostgreSQL did not start"
echo "postgres $PG_PID $PG_DATA" >>"$DEMO/pids"
psql_q() { psql "$DSN" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
wait_for 20 "PostgreSQL" psql_q "SELECT 1" >/dev/null
log "PostgreSQL pid $PG_PID on 127.0.0.1:$PG_PORT (data .demo/pg/data)"

# --- the service ---------------------------------------------------------------------------------------------
SVC_LOG=$DEMO/service.log
env COMPANY_ID="$COMPANY" NATS_URL="nats://127.0.0.1:$NATS_PORT" POSTGRES_DSN="$DSN" \
  SERVER_PORT="$HTTP_PORT" SERVER_ADDRESS=127.0.0.1 LOG_LEVEL=info "$BIN" >"$SVC_LOG" 2>&1 &
SVC_PID=$!
echo "service $SVC_PID $BIN" >>"$DEMO/pids"
svc_ready() {
  grep -q "$READY_LINE" "$SVC_LOG" && return 0
  alive "$SVC_PID" || { log "the service exited early; last 30 lines of its log:"; tail -n 30 "$SVC_LOG"; exit 1; }
  return 1
}
wait_for 60 "the service to start" svc_ready || { tail -n 30 "$SVC_LOG"; die "the service did not become ready"; }
log "message-event-service pid $SVC_PID for tenant '$COMPANY', HTTP on 127.0.0.1:$HTTP_PORT"

# --- traffic -------------------------------------------------------------------------------------------------
feed_traffic() {
  local pub=$BUILD/loadtest/mes-publish
  log "publishing loadtest/demo-events.txt (every subject, then 5 bad events) with $pub"
  sed -e "s/__CO__/$COMPANY/g" -e "s/__NOW__/$(date +%s)/g" loadtest/demo-events.txt | "$pub" --url "nats://127.0.0.1:$NATS_PORT" --id-prefix demo
  # Wait until the service has acted on every event (processed + failed = published), with a deadline.
  local want published=0
  want=$(grep -cvE '^(#|$)' loadtest/demo-events.txt)
  for _ in $(seq 1 100); do
    published=$(curl -fsS --max-time 2 "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null |
      awk '/^message_event_service_events_(processed|failed)_total\{/ {s += $2} END {print s + 0}')
    [ "${published%.*}" -ge "$want" ] && break
    sleep 0.1
  done
  log "the service acted on ${published%.*} of $want events"
  # The DLQ worker exhausts the records that cannot get better (malformed, invalid) at once; not_found records are
  # retried with backoff (nats.dlqBaseDelay, 1 minute by default) and may still resolve.
  local dropped=0
  for _ in $(seq 1 100); do
    dropped=$(curl -fsS --max-time 2 "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null |
      awk '/^dlq_tasks_dropped_total\{/ {s += $2} END {print s + 0}')
    [ "${dropped%.*}" -ge 4 ] && break
    sleep 0.1
  done
}
feed_traffic

# --- summary -------------------------------------------------------------------------------------------------
# One JetStream API request over the plain NATS protocol (no nats CLI on the machine); prints the reply payload.
nats_request() {
  local subject=$1 payload=$2 line
  exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT" || return 1
  printf 'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _DEMO.reply 1\r\nPUB %s _DEMO.reply %d\r\n%s\r\n' \
    "$subject" "${#payload}" "$payload" >&3
  while IFS= read -r -t 5 line <&3; do
    if [[ $line == "MSG _DEMO.reply "* ]]; then
      IFS= read -r -t 5 line <&3 && printf '%s\n' "${line%$'\r'}"
      break
    fi
  done
  exec 3>&-
}

echo
log "summary"
tables=$(psql_q "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = '$SCHEMA' AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1" || true)
if [ -n "$tables" ]; then
  echo "  rows per table in schema $SCHEMA:"
  for t in $tables; do
    printf '    %-28s %s\n' "$t" "$(psql_q "SELECT count(*) FROM \"$SCHEMA\".\"$t\"" || echo '?')"
  done
else
  echo "  schema $SCHEMA has no tables yet"
fi
dlq_info=$(nats_request "\$JS.API.STREAM.INFO.dlq_stream" "{\"subjects_filter\":\"v1.dlq.$COMPANY\"}" || true)
if [[ $dlq_info == *'"error"'* || -z $dlq_info ]]; then
  echo "  DLQ records: dlq_stream not found"
else
  dlq_count=$(grep -o "\"v1.dlq.$COMPANY\":[0-9]*" <<<"$dlq_info" | cut -d: -f2 || true)
  echo "  DLQ records (dlq_stream, v1.dlq.$COMPANY): ${dlq_count:-0}"
fi
echo "  why events went to the DLQ (from the service log):"
grep '"event sent to DLQ"' "$SVC_LOG" |
  sed -E 's/.*"subject":"([^"]*)".*"error_class":"([^"]*)","error":"(([^"\\]|\\.)*)".*/    \1  [\2] \3/' || true
echo "  exhausted events (message-event-service exhausted list):"
env COMPANY_ID="$COMPANY" POSTGRES_DSN="$DSN" NATS_URL="nats://127.0.0.1:$NATS_PORT" "$BIN" exhausted list 2>/dev/null |
  sed 's/^/    /' || echo "    (none yet)"
echo "  metrics: http://127.0.0.1:$HTTP_PORT/metrics (non-zero event counters):"
metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null || echo "")
if [ -n "$metrics" ]; then
  grep -E '^message_event_service_events_(received|processed|failed)_total' <<<"$metrics" | grep -v ' 0$' |
    sed -E 's/\{event_type="([^"]*)",company_id="[^"]*",consumer_type="([^"]*)"\}/ \1 (\2)/; s/^message_event_service_//; s/^/    /'
else
  echo "    (no metrics answer)"
fi

if [ "${MES_DEMO_HOLD:-0}" = 1 ]; then
  log "running; press Ctrl-C to stop"
  while alive "$SVC_PID"; do sleep 1; done
fi
