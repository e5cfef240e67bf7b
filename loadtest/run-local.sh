#!/usr/bin/env bash
# run-local.sh - the load test of docker-compose.loadtest.yaml without Docker: starts nats-server (JetStream and
# monitoring), PostgreSQL, two tenants x two replicas of message-event-service, a real Prometheus running the shipped
# deploy/prometheus/prometheus.yml and alerts.yml unchanged (dns_sd jobs tenant_app_A/tenant_app_B, loadgen,
# nats-exporter, prometheus), runs mes-loadgen, then evaluates EVERY panel query of every dashboard in
# grafana/dashboards/ over the run and fails when a query returns no data or returns series whose legends render
# identically. Stops everything by PID.
#
# Like compose, every "container" has its own address and its compose port: the replicas listen on 127.A.B.N:8080,
# the load generator on 127.A.B.30:9102, Prometheus on 127.A.B.9:9090 (one 127.A.B.0/24 per run). A dnsmasq on
# 127.A.B.53 answers the compose service names (tenant_app_A = one A record per replica), and Prometheus runs in a
# private mount namespace whose /etc/resolv.conf names that dnsmasq (scripts/lib.sh, "compose network"); the
# machine's resolver configuration is not touched. nats-exporter resolves to an address where nothing listens: its
# target is down here. Exits 77 when the machine cannot do this (no dnsmasq, no mount namespaces).
#
#   bash loadtest/run-local.sh [DURATION [RATE]]        # defaults: 60s 2000 (events/s over both tenants)
#
# Report: loadtest/reports/<UTC timestamp>/ - panels.txt (the panel-check table), summary.txt (totals, alerts,
# loadgen report), throughput.png, latency_p99.png, dlq.png (gnuplot, from /api/v1/query_range over the run).
# Knobs: MES_BUILD_DIR (default build/; built when the binaries are missing), MES_SERVICE_BIN, MES_LOADGEN_BIN,
# MES_LOADTEST_REPORTS (parent of the report dir), MES_LOADTEST_KEEP=1 (keep the temp dir with all server logs).
#
# Panels are checked with the values Grafana would use: template variables take their "All" value (allValue,
# else .*), $__interval is the query step, $__rate_interval = max(4 x scrape interval, step + scrape interval).
# Queries on the NATS exporter's series (jetstream_*, gnatsd_*) are listed as SKIP: there is no exporter here
# (no Docker image, no network); docker-compose.loadtest.yaml runs it. Everything else must show data.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DURATION=${1:-60s}
RATE=${2:-2000}
BUILD=${MES_BUILD_DIR:-$ROOT/build}
SVC_BIN=${MES_SERVICE_BIN:-$BUILD/message-event-service}
LOADGEN_BIN=${MES_LOADGEN_BIN:-$BUILD/loadtest/mes-loadgen}
REPORTS=${MES_LOADTEST_REPORTS:-$ROOT/loadtest/reports}
PROM_CONFIG=$ROOT/deploy/prometheus/prometheus.yml
READY_DEADLINE_S=120

log() { printf '[loadtest %(%H:%M:%S)T] %s\n' -1 "$*"; }
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
report_failures loadtest
die() { printf '[loadtest] ERROR: %s\n' "$*" >&2; exit 1; }

case $DURATION in
  *[0-9]s) DUR_S=${DURATION%s} ;;
  *[0-9]m) DUR_S=$((${DURATION%m} * 60)) ;;
  *[0-9]) DUR_S=$DURATION ;;
  *) die "duration must look like 25s, 2m or 60 (got '$DURATION')" ;;
esac
[[ $DUR_S =~ ^[0-9]+$ && $DUR_S -gt 0 ]] || die "bad duration '$DURATION'"
[[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || die "rate must be a positive integer (got '$RATE')"

bash scripts/install-deps.sh >&2 || die "installing the packages failed (see above)"
for tool in nats-server prometheus python3 curl gnuplot ss; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (bash scripts/install-deps.sh)"
done
find_pg_bin || die "cannot start PostgreSQL"
# The scrape interval the panels are evaluated with is the shipped one.
SCRAPE_S=$(python3 -c 'import re, sys, yaml
m = re.fullmatch(r"(\d+)s", str(yaml.safe_load(open(sys.argv[1]))["global"]["scrape_interval"]))
print(m.group(1) if m else "")' "$PROM_CONFIG") && [ -n "$SCRAPE_S" ] ||
  die "$PROM_CONFIG: global.scrape_interval is not a whole number of seconds"

if [ ! -x "$SVC_BIN" ] || [ ! -x "$LOADGEN_BIN" ]; then
  [ -z "${MES_SERVICE_BIN:-}${MES_LOADGEN_BIN:-}" ] || die "$SVC_BIN or $LOADGEN_BIN is missing"
  log "building $BUILD (message-event-service, mes-loadgen)"
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" --target message-event-service mes-loadgen
fi
[ -x "$SVC_BIN" ] || die "$SVC_BIN was not built"
[ -x "$LOADGEN_BIN" ] || die "$LOADGEN_BIN was not built"




WORK=$(mktemp -d /tmp/mes-loadtest.XXXXXX)
chmod 755 "$WORK" # PostgreSQL (user postgres) and dnsmasq (user nobody, re-reading the hosts file) must enter it
if ! reason=$(localnet_check "$WORK" 2>&1); then
  rm -rf "$WORK"
  echo "[loadtest] SKIP: cannot run the compose network locally: $reason" >&2
  exit 77
fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$REPORTS/$STAMP
mkdir -p "$REPORT"

NATS_PID="" PG_DATA="" PG_PID="" PROM_PID="" LOADGEN_PID="" DNS_PID=""

stop_all() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  alive "$LOADGEN_PID" && kill -TERM "$LOADGEN_PID"
  apps_stop # services first (they drain into NATS/PostgreSQL), each by its PID
  for pid in "$LOADGEN_PID" "$PROM_PID" "$NATS_PID" "$DNS_PID"; do stop_pid "$pid"; done
  if alive "$PG_PID"; then
    (cd "$WORK" && as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 20 stop >/dev/null 2>&1)
    alive "$PG_PID" && kill -9 "$PG_PID"
  fi
  wait 2>/dev/null
  if [ "${MES_LOADTEST_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    cp "$WORK"/*.log "$REPORT"/ 2>/dev/null
    if [ "${MES_LOADTEST_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  else
    rm -rf "$WORK"
  fi
  log "stopped everything this run started; report in $REPORT"
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PG_PORT=$(free_port) || die "no free port found"

# --- the compose network: one loopback address per container, dnsmasq answering the service names ----------------
localnet_pick || die "no free loopback /24"
dns_start "$WORK" || die "dnsmasq did not start"
PROM_ADDR=$NET.9 LG_ADDR=$NET.30 EXPORTER_ADDR=$NET.31
log "compose network $NET.0/24: dnsmasq pid $DNS_PID on $NET.53:53"

# --- nats-server (no scrape job names it: it stays on 127.0.0.1 with free ports) --------------------------------
nats_start "$WORK" || die "nats-server did not start"
log "nats-server pid $NATS_PID on 127.0.0.1:$NATS_PORT (monitoring :$NATS_MON)"

# --- PostgreSQL (runs as postgres; durability off: this measures the service, not the disk) --------------------
# 4 replicas x (10 lanes + DLQ pool + maintenance) need more than the default 100 connections.
pg_start "$WORK/pg" "$PG_PORT" 300 || die "PostgreSQL did not start"
log "PostgreSQL pid $PG_PID on 127.0.0.1:$PG_PORT"

# --- two tenants x two replicas, each on its own address, port 8080 as in compose ------------------------------
for r in 1 2; do
  app_start "tenant_app_A_$r" tenant_a "$NET.$((10 + r))"
  app_start "tenant_app_B_$r" tenant_b "$NET.$((20 + r))"
done
wait_for "$READY_DEADLINE_S" "the services to be ready" apps_ready || die "the services did not become ready"
log "4 service replicas ready: ${SVC_NAMES[*]} on ${SVC_ADDRS[*]} (port 8080)"

# --- the compose service names the Prometheus config uses ---------------------------------------------------------
dns_set "tenant_app_A $NET.11 $NET.12" "tenant_app_B $NET.21 $NET.22" "loadgen $LG_ADDR" \
  "nats-exporter $EXPORTER_ADDR" "prometheus $PROM_ADDR" || die "dnsmasq does not answer the service names"

# --- Prometheus: the shipped config and alert rules, as they are ------------------------------------------------
cp "$PROM_CONFIG" "$REPORT/prometheus.yml"
prom_start_ns "$PROM_CONFIG" "$PROM_ADDR" "$WORK" || die "Prometheus did not start"
PROM=http://$PROM_ADDR:9090
targets_up() {
  curl -fs --data-urlencode 'query=count(up{job=~"tenant_app_.*"} == 1)' "$PROM/api/v1/query" 2>/dev/null |
    grep -q '"value":\[[0-9.]*,"4"\]'
}
wait_for 30 "Prometheus to discover and scrape all 4 replicas" targets_up ||
  die "Prometheus does not scrape the 4 replicas; its targets: $(curl -fs "$PROM/api/v1/targets" | head -c 3000)"
log "Prometheus pid $PROM_PID on $PROM ($PROM_CONFIG unchanged, scrape interval ${SCRAPE_S}s): dns_sd found 4 replicas"

# --- load -------------------------------------------------------------------------------------------------------
T_START=$(($(date +%s) - 4 * SCRAPE_S)) # a few idle scrapes before the load give rate() its baseline
log "mes-loadgen: ${RATE} events/s for ${DUR_S}s over tenant_a,tenant_b, 1% invalid"
"$LOADGEN_BIN" --url "nats://127.0.0.1:$NATS_PORT" --company_ids tenant_a,tenant_b --rate "$RATE" \
  --duration "${DUR_S}s" --invalid-ratio 0.01 --metrics-port 9102 --metrics-address "$LG_ADDR" \
  >"$REPORT/loadgen.txt" 2>&1 &
LOADGEN_PID=$!
deadline=$((SECONDS + DUR_S + 90))
while alive "$LOADGEN_PID"; do
  [ "$SECONDS" -lt "$deadline" ] || { kill -TERM "$LOADGEN_PID"; die "mes-loadgen ran 90s past its duration"; }
  sleep 0.5
done
LG_RC=0
wait "$LOADGEN_PID" || LG_RC=$?
LOADGEN_PID=""
log "mes-loadgen exited with status $LG_RC (its report: $REPORT/loadgen.txt)"

# Drained = NATS itself (monitoring /jsz) has nothing pending or unacked for the live lanes' consumers. NATS, not
# the service's consumer_pending gauge: that one is only updated when a replica receives messages, so an idle
# replica keeps its last value. Bounded, since a backlog is a finding, not a hang.
live_backlog() {
  curl -fs "http://127.0.0.1:$NATS_MON/jsz?consumers=true" 2>/dev/null | python3 -c '
import json, sys
n = 0
for acc in json.load(sys.stdin).get("account_details", []):
    for st in acc.get("stream_detail", []):
        if st["name"] in ("wa_events_stream", "wa_history_events_stream"):
            n += sum(c["num_pending"] + c["num_ack_pending"] for c in st.get("consumer_detail", []))
print(n)'
}
drained() { [ "$(live_backlog)" = 0 ]; }
prom_scalar() { # prints the value of a one-sample instant query, or nothing
  curl -fs --data-urlencode "query=$1" "$PROM/api/v1/query" 2>/dev/null |
    sed -nE 's/.*"value":\[[0-9.]+,"([^"]+)"\].*/\1/p'
}
if wait_for 60 "the services to drain" drained; then DRAINED=yes; else DRAINED="no ($(live_backlog) messages pending/unacked after 60s)"; fi
T_DRAINED=$(date +%s)
# Two more scrapes so the range ends with the drained state (polls Prometheus's own view, no blind sleep).
scraped_after() { local t; t=$(prom_scalar 'min(timestamp(up{job=~"tenant_app_.*"}))'); [ -n "$t" ] && [ "${t%.*}" -ge $((T_DRAINED + 2 * SCRAPE_S)) ]; }
wait_for $((6 * SCRAPE_S)) "final scrapes" scraped_after || true
T_END=$(date +%s)
log "drained: $DRAINED; evaluating dashboards over $((T_END - T_START))s of data"

# --- panel checks, charts, summary -----------------------------------------------------------------------------
set +e
python3 - "$PROM" "$T_START" "$T_END" "$SCRAPE_S" "$ROOT/grafana/dashboards" "$REPORT" <<'PY'
import glob, json, math, os, re, subprocess, sys, urllib.parse, urllib.request

prom, t0, t1, scrape, dash_dir, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    sys.argv[5], sys.argv[6]
step = max(scrape, math.ceil((t1 - t0) / 200))
rate_interval = max(4 * scrape, step + scrape)           # Grafana's $__rate_interval
EXPORTER = re.compile(r"\b(jetstream|gnatsd)_[a-z_]+")   # series of the NATS exporter (absent locally)

def api(path, **params):
    data = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(urllib.request.Request(prom + path, data=data), timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", "query failed"))
    return body["data"]

def query_range(expr):
    return api("/api/v1/query_range", query=expr, start=t0, end=t1, step=step)["result"]

def substitute(expr, variables):
    expr = expr.replace("$__rate_interval", f"{rate_interval}s").replace("$__interval", f"{step}s")
    expr = expr.replace("$__range", f"{t1 - t0}s")
    for name, value in variables.items():
        expr = re.sub(r"\$\{" + name + r"(?::\w+)?\}|\$" + name + r"\b|\[\[" + name + r"\]\]", value, expr)
    return expr

def render(legend, labels):
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend)

def has_value(series):
    return any(not math.isnan(float(v)) for _, v in series["values"])

rows, failures, skipped = [], 0, 0
for path in sorted(glob.glob(os.path.join(dash_dir, "*.json"))):
    dash = json.load(open(path))
    dname = os.path.basename(path)[:-5]
    variables = {v["name"]: v.get("allValue") or ".*" for v in dash.get("templating", {}).get("list", [])}
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    for p in panels:
        if p.get("type") == "row":
            continue
        legends = {}
        for t in p.get("targets", []):
            where = f"{dname} / {p['title']} / {t['refId']}"
            expr = substitute(t["expr"], variables)
            if EXPORTER.search(expr):
                rows.append(("SKIP", where, "-", "NATS exporter series; no exporter in a local run (compose has one)"))
                skipped += 1
                continue
            try:
                result = query_range(expr)
            except Exception as e:  # a query Prometheus rejects is a broken panel
                rows.append(("FAIL", where, "-", f"query error: {e}"))
                failures += 1
                continue
            live = [s for s in result if has_value(s)]
            problems = []
            if not live:
                problems.append("no data")
            missing = sorted({l for s in live for l in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", ""))
                              if l not in s["metric"]})
            if missing:
                problems.append(f"legend label(s) {missing} absent from the series")
            for s in live:
                legends.setdefault(render(t.get("legendFormat", ""), s["metric"]), []).append(where)
            shown = ", ".join(sorted(render(t.get("legendFormat", ""), s["metric"]) for s in live)[:3])
            more = f" (+{len(live) - 3} more)" if len(live) > 3 else ""
            rows.append(("FAIL" if problems else "PASS", where, str(len(live)),
                         "; ".join(problems) if problems else shown + more))
            failures += bool(problems)
        for legend, wheres in legends.items():
            if len(wheres) > 1:
                rows.append(("FAIL", f"{dname} / {p['title']}", str(len(wheres)),
                             f"{len(wheres)} series render the same legend {legend!r}: they cannot be told apart"))
                failures += 1

width = max(len(r[1]) for r in rows)
lines = [f"panel checks over {t1 - t0}s of data (step {step}s, $__rate_interval = {rate_interval}s)",
         f"{'STATUS':6}  {'DASHBOARD / PANEL / TARGET':{width}}  {'SERIES':>6}  LEGENDS / PROBLEM"]
lines += [f"{s:6}  {w:{width}}  {n:>6}  {note}" for s, w, n, note in rows]
lines.append(f"{sum(r[0] == 'PASS' for r in rows)} passed, {failures} failed, {skipped} skipped "
             "(NATS exporter series, not available without Docker)")
open(os.path.join(report, "panels.txt"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

# --- charts: what happened over the run (seconds since the start of the range) ---
RI = f"{rate_interval}s"
charts = {
    "throughput": ("Throughput (events/s)", "events/s", [
        ("loadgen published", f"sum(rate(loadgen_messages_published_total[{RI}]))"),
        ("service received", f"sum(rate(message_event_service_events_received_total[{RI}]))"),
        ("service processed", f"sum(rate(message_event_service_events_processed_total[{RI}]))"),
        ("service failed", f"sum(rate(message_event_service_events_failed_total[{RI}]))")]),
    "latency_p99": ("Latency p99 (seconds)", "seconds", [
        (f"processing {job}", f'histogram_quantile(0.99, sum by (le) (rate(message_event_service_event_processing_duration_seconds_bucket{{job="{job}"}}[{RI}])))')
        for job in ("tenant_app_A", "tenant_app_B")] + [
        (f"DB statement {job}", f'histogram_quantile(0.99, sum by (le) (rate(message_event_service_db_operation_duration_seconds_bucket{{job="{job}",status="success"}}[{RI}])))')
        for job in ("tenant_app_A", "tenant_app_B")]),
    "dlq": ("DLQ flow (records/s)", "records/s", [
        ("published by the lanes", f"sum(rate(message_event_service_dlq_published_total[{RI}]))"),
        ("submitted to workers", f"sum(rate(dlq_tasks_submitted_total[{RI}]))"),
        ("retried", f"sum(rate(dlq_task_retries_total[{RI}]))"),
        ("reprocessed", f"sum(rate(dlq_acks_success_total[{RI}]))"),
        ("exhausted", f"sum(rate(dlq_tasks_dropped_total[{RI}]))")]),
}
for name, (title, ylabel, series) in charts.items():
    plots = []
    for i, (label, expr) in enumerate(series):
        dat = os.path.join(report, f"{name}.{i}.dat")
        with open(dat, "w") as f:
            for s in query_range(expr)[:1]:
                for ts, v in s["values"]:
                    if not math.isnan(float(v)):
                        f.write(f"{float(ts) - t0:.0f} {v}\n")
        if os.path.getsize(dat):
            plots.append(f"'{dat}' using 1:2 with lines lw 2 title '{label}'")
    if not plots:
        continue
    gp = (f"set terminal pngcairo noenhanced size 1100,500 font ',10'\nset output '{os.path.join(report, name + '.png')}'\n"
          f"set title '{title}'\nset xlabel 'seconds since start'\nset ylabel '{ylabel}'\nset grid\n"
          f"set key outside right\nset yrange [0:*]\nplot " + ", ".join(plots) + "\n")
    subprocess.run(["gnuplot"], input=gp.encode(), check=False)
    for i in range(len(series)):
        try:
            os.remove(os.path.join(report, f"{name}.{i}.dat"))
        except FileNotFoundError:
            pass

# --- totals and alerts for summary.txt ---
def instant(expr):
    return api("/api/v1/query", query=expr, time=t1)["result"]
with open(os.path.join(report, "summary.txt"), "a") as f:
    f.write("totals at the end of the run (all replicas):\n")
    for label, expr in (("received", "message_event_service_events_received_total"),
                        ("processed", "message_event_service_events_processed_total"),
                        ("failed deliveries", "message_event_service_events_failed_total"),
                        ("DLQ records published", "message_event_service_dlq_published_total"),
                        ("exhausted", "dlq_tasks_dropped_total")):
        for s in instant(f"sum by (job) ({expr})"):
            f.write(f"  {label:22} {s['metric'].get('job', ''):13} {float(s['value'][1]):.0f}\n")
    with urllib.request.urlopen(prom + "/api/v1/alerts", timeout=30) as r:  # GET-only endpoint
        alerts = json.load(r)["data"]["alerts"]
    f.write("alerts at the end of the run:" + ("" if alerts else " none") + "\n")
    for a in alerts:
        f.write(f"  {a['state']:8} {a['labels'].get('alertname')} {a['labels'].get('job', '')} "
                f"{a['labels'].get('company_id', a['labels'].get('event_type', ''))}\n")
    with urllib.request.urlopen(prom + "/api/v1/targets", timeout=30) as r:
        targets = json.load(r)["data"]["activeTargets"]
    f.write("scrape targets at the end of the run (deploy/prometheus/prometheus.yml, names from the local DNS):\n")
    for t in sorted(targets, key=lambda t: (t["labels"]["job"], t["labels"]["instance"])):
        note = {"nats-exporter": " (no exporter in a local run)", "loadgen": " (exited after its run)"}
        f.write(f"  {t['health']:7} {t['labels']['job']:13} {t['labels']['instance']:22} "
                f"{t['discoveredLabels'].get('__meta_dns_name', 'static')}"
                f"{note.get(t['labels']['job'], '') if t['health'] != 'up' else ''}\n")
sys.exit(1 if failures else 0)
PY
CHECK_RC=$?
set -e

{
  echo "run: $DURATION at $RATE events/s, tenants tenant_a and tenant_b x 2 replicas, invalid ratio 0.01"
  echo "binaries: $SVC_BIN, $LOADGEN_BIN"
  echo "mes-loadgen exit status: $LG_RC; drained: $DRAINED"
  echo "panel checks: $([ "$CHECK_RC" -eq 0 ] && echo passed || echo FAILED) (panels.txt)"
  echo "--- mes-loadgen report (loadgen.txt, last 30 lines) ---"
  tail -n 30 "$REPORT/loadgen.txt"
} >"$REPORT/summary.head"
cat "$REPORT/summary.head" "$REPORT/summary.txt" >"$REPORT/summary.new" 2>/dev/null &&
  mv "$REPORT/summary.new" "$REPORT/summary.txt"
rm -f "$REPORT/summary.head"

[ "$LG_RC" -eq 0 ] || die "mes-loadgen failed (status $LG_RC); see $REPORT/loadgen.txt"
[ "$CHECK_RC" -eq 0 ] || die "dashboard panel checks failed; see $REPORT/panels.txt"
log "all dashboard panels show data; report in $REPORT"
