#!/usr/bin/env bash
# dns_sd_discovery.sh - proves the shipped deploy/prometheus/prometheus.yml and alerts.yml (used as they are) do what
# dns_sd is there for, against real replicas of message-event-service (CTest:
# integration.loadtest.dns_sd_discovers_added_killed_and_removed_replicas):
#   1. both tenants' replicas are discovered through DNS and are `up` targets of their jobs (tenant_app_A/B);
#   2. the dashboard panels that show replicas apart ({{instance}} legends) show one series per replica;
#   3. a replica added to the DNS answer (compose --scale up) is scraped within refresh_interval + scrape_interval;
#   4. a replica killed (still in DNS) turns its target down and MessageEventServiceTargetDown goes pending for it;
#   5. replicas gone from the DNS answer (containers stopped: the killed one, and every replica of tenant_app_B) are
#      no longer targets, the killed one's TargetDown resolves, and MessageEventServiceNoReplicaUp goes pending for
#      tenant_app_B only.
# The compose network is simulated as loadtest/run-local.sh does (scripts/lib.sh): one loopback address per
# replica on port 8080, dnsmasq answering the service names, Prometheus in a private mount namespace whose
# /etc/resolv.conf names that dnsmasq. The machine's resolver configuration is never changed. Everything started
# here (dnsmasq, nats-server, PostgreSQL, replicas, Prometheus) is stopped by PID on exit.
# Exit status: 0 passed, 1 failed, 77 cannot run here (reason printed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
PROM_CONFIG=$ROOT/deploy/prometheus/prometheus.yml
DASHBOARD=$ROOT/grafana/dashboards/message-event-service.json
SVC_BIN=${MES_SERVICE_BIN:-$ROOT/build/message-event-service}
SLACK_S=15 # on top of every interval the config gives Prometheus: two busy cores shared with other tests

log() { printf '[dns_sd %(%H:%M:%S)T] %s\n' -1 "$*"; }
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"
report_failures dns_sd
skip() { printf '[dns_sd] SKIP: %s\n' "$*" >&2; exit 77; }
die() { printf '[dns_sd] FAIL: %s\n' "$*" >&2; exit 1; }

for tool in nats-server prometheus python3 curl ss; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (bash scripts/install-deps.sh)"
done
python3 -c 'import yaml' 2>/dev/null || skip "python3 has no yaml module (python3-yaml)"
find_pg_bin 2>/dev/null || skip "PostgreSQL server binaries not found (bash scripts/install-deps.sh)"
[ -x "$SVC_BIN" ] || skip "$SVC_BIN is not built (cmake --build build)"

# The intervals the assertions are bounded by are the shipped ones.
read -r SCRAPE_S EVAL_S REFRESH_S < <(python3 - "$PROM_CONFIG" <<'PY'
import re, sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
def secs(v):
    m = re.fullmatch(r"(\d+)s", str(v))
    return int(m.group(1)) if m else 0
refresh = [secs(sd.get("refresh_interval", "30s")) for j in c["scrape_configs"] if j["job_name"].startswith("tenant_app_")
           for sd in j.get("dns_sd_configs", [])]
print(secs(c["global"].get("scrape_interval", "1m")), secs(c["global"].get("evaluation_interval", "1m")),
      max(refresh) if refresh else 0)
PY
)
[ "$SCRAPE_S" -gt 0 ] && [ "$EVAL_S" -gt 0 ] && [ "$REFRESH_S" -gt 0 ] ||
  die "$PROM_CONFIG: tenant jobs without dns_sd_configs, or intervals that are not whole seconds"

WORK=$(mktemp -d /tmp/mes-dnssd.XXXXXX)
chmod 755 "$WORK" # PostgreSQL (user postgres) and dnsmasq (user nobody) must enter it
NATS_PID="" PG_PID="" PG_DATA="" PROM_PID="" DNS_PID=""
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    for f in prometheus.log dnsmasq.log dnsmasq.out; do
      [ -s "$WORK/$f" ] && { echo "--- $f (last 20 lines)"; tail -n 20 "$WORK/$f"; }
    done
  fi
  apps_stop
  for pid in "$PROM_PID" "$NATS_PID" "$DNS_PID"; do stop_pid "$pid"; done
  if alive "$PG_PID"; then
    (cd "$WORK" && as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 20 stop >/dev/null 2>&1)
    stop_pid "$PG_PID"
  fi
  wait 2>/dev/null
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

reason=$(localnet_check "$WORK" 2>&1) || skip "cannot simulate the compose network here: $reason"

# --- the compose stack: DNS, NATS, PostgreSQL, tenant_app_A x 2, tenant_app_B x 2, Prometheus ----------------------
localnet_pick || die "no free loopback /24"
dns_start "$WORK" || die "dnsmasq did not start"
nats_start "$WORK" || die "nats-server did not start"
PG_PORT=$(free_port) || die "no free port"
pg_start "$WORK/pg" "$PG_PORT" 300 || die "PostgreSQL did not start"
A1=$NET.11 A2=$NET.12 A3=$NET.13 B1=$NET.21 B2=$NET.22 PROM_ADDR=$NET.9
app_start tenant_app_A_1 tenant_a "$A1"
app_start tenant_app_A_2 tenant_a "$A2"
app_start tenant_app_B_1 tenant_b "$B1"
app_start tenant_app_B_2 tenant_b "$B2"
# As compose: a container resolves once it runs, before it is ready. Prometheus starts meanwhile.
dns_set "tenant_app_A $A1 $A2" "tenant_app_B $B1 $B2" "prometheus $PROM_ADDR" "loadgen $NET.30" \
  "nats-exporter $NET.31" || die "dnsmasq does not answer the service names"
prom_start_ns "$PROM_CONFIG" "$PROM_ADDR" "$WORK" || die "Prometheus did not start"
wait_for 120 "the replicas to be ready" apps_ready || die "the replicas did not become ready"
PROM=http://$PROM_ADDR:9090
log "stack up on $NET.0/24: dnsmasq $DNS_PID, nats $NATS_PID, postgres $PG_PID, replicas ${SVC_PIDS[*]}," \
  "Prometheus $PROM_PID ($PROM_CONFIG as shipped: scrape ${SCRAPE_S}s, evaluation ${EVAL_S}s, dns refresh ${REFRESH_S}s)"

# promcheck MODE ARGS...: asks Prometheus's HTTP API; prints what it saw and succeeds when it matches.
#   targets JOB INSTANCE=HEALTH...  the job's active targets are exactly these (none given: the job has no target),
#                                   every one discovered through DNS and scraped at or after $SINCE (epoch seconds)
#   alert NAME STATE LABEL=VALUE    an alert NAME with that label is in STATE (pending/firing); STATE "none": absent
#   alerts NAME LABEL=VALUE...      the alerts NAME exist for exactly these label values (none given: no alert)
#   panels JOB=INSTANCE,...         every dashboard target whose legend names {{instance}} shows exactly these
#                                   replicas of each job, one series (one distinct legend) each
SINCE=0
promcheck() {
  python3 - "$PROM" "$DASHBOARD" "$SCRAPE_S" "$SINCE" "$@" <<'PY'
import json, re, sys, urllib.parse, urllib.request
prom, dashboard, scrape, since, mode, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
    sys.argv[5], sys.argv[6:]

def api(path, **params):
    url = prom + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"{path}: {body.get('error')}")
    return body["data"]

ok = False
if mode == "targets":
    job, want = args[0], dict(a.split("=") for a in args[1:])
    ts = [t for t in api("/api/v1/targets", state="active")["activeTargets"] if t["labels"]["job"] == job]
    from datetime import datetime
    def scraped(t):
        ls = re.sub(r"(\.\d{6})\d*", r"\1", t["lastScrape"]).replace("Z", "+00:00")
        return datetime.fromisoformat(ls).timestamp() if not ls.startswith("0001") else 0
    got = {t["labels"]["instance"]: t["health"] for t in ts}
    print(f"{job}: " + (", ".join(f"{i} {h}" + (f" ({t['lastError']})" if t["lastError"] else "")
                                  for t in ts for i, h in [(t["labels"]["instance"], t["health"])]) or "no targets"))
    ok = got == want and all(t["discoveredLabels"].get("__meta_dns_name") == job and scraped(t) >= since for t in ts)
elif mode in ("alert", "alerts"):
    name = args[0]
    alerts = [a for a in api("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]
    print(f"{name}: " + (", ".join(f"{a['state']} {a['labels']}" for a in alerts) or "none"))
    if mode == "alert":
        state, (k, v) = args[1], args[2].split("=", 1)
        mine = [a["state"] for a in alerts if a["labels"].get(k) == v]
        ok = mine == [] if state == "none" else mine == [state]
    else:
        want = sorted(args[1:])
        key = want[0].split("=", 1)[0] if want else "job"
        ok = sorted(f"{key}={a['labels'].get(key)}" for a in alerts) == want
elif mode == "panels":
    want = {j: sorted(i.split(",")) for j, i in (a.split("=", 1) for a in args)}
    dash = json.load(open(dashboard))
    variables = {v["name"]: v.get("allValue") or ".*" for v in dash.get("templating", {}).get("list", [])}
    panels = [q for p in dash["panels"] for q in [p] + p.get("panels", [])]
    checked = 0
    ok = True
    for p in panels:
        for t in p.get("targets", []):
            legend = t.get("legendFormat", "")
            if "{{instance}}" not in legend.replace(" ", ""):
                continue
            expr = t["expr"].replace("$__rate_interval", f"{4 * scrape}s").replace("$__interval", f"{scrape}s")
            for n, v in variables.items():
                expr = re.sub(r"\$\{" + n + r"(?::\w+)?\}|\$" + n + r"\b", v, expr)
            res = api("/api/v1/query", query=expr)["result"]
            render = lambda m: re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda g: m.get(g.group(1), ""), legend)
            legends = [render(s["metric"]) for s in res]
            got = {j: sorted(s["metric"].get("instance", "") for s in res if s["metric"].get("job") == j) for j in want}
            good = got == want and len(set(legends)) == len(legends)
            print(f"{'ok ' if good else 'not'} {p['title']}: {sorted(legends)}")
            ok &= good
            checked += 1
    ok &= checked > 0
print("MATCH" if ok else "NO MATCH")
sys.exit(0 if ok else 1)
PY
}

# expect DEADLINE_S WHAT MODE ARGS...: polls promcheck until it matches; prints the last view and fails otherwise.
expect() {
  local limit=$1 deadline=$((SECONDS + $1)) what=$2 out
  shift 2
  until out=$(promcheck "$@" 2>&1); do
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s\n' "$out" >&2
      die "$what: not seen within ${limit}s"
    fi
    sleep 0.5
  done
  printf '%s\n' "$out" | grep -v '^MATCH$' | sed 's/^/    /'
}

# --- 1. discovery: every replica of both tenants is an `up` target of its job ------------------------------------
t0=$SECONDS
expect $((REFRESH_S + 2 * SCRAPE_S + SLACK_S)) "both tenants' replicas up" targets tenant_app_A "$A1:8080=up" "$A2:8080=up"
expect $((2 * SCRAPE_S + SLACK_S)) "both tenants' replicas up" targets tenant_app_B "$B1:8080=up" "$B2:8080=up"
log "PASS 1: dns_sd found tenant_app_A = {$A1, $A2}, tenant_app_B = {$B1, $B2}, all up ($((SECONDS - t0))s after start)"

# --- 2. the per-replica panels show each replica apart --------------------------------------------------------------
expect $((4 * SCRAPE_S + SLACK_S)) "per-replica panels" panels "tenant_app_A=$A1:8080,$A2:8080" \
  "tenant_app_B=$B1:8080,$B2:8080"
log "PASS 2: the dashboard's per-replica panels show 2 + 2 distinct instance series"

# --- 3. scale up: a third tenant_app_A replica appears in DNS and is scraped -----------------------------------------
app_start tenant_app_A_3 tenant_a "$A3"
wait_for 120 "tenant_app_A_3 to be ready" apps_ready || die "tenant_app_A_3 did not become ready"
SINCE=$(date +%s.%N)
t0=$SECONDS
dns_set "tenant_app_A $A1 $A2 $A3" || die "dnsmasq does not answer the new replica"
expect $((REFRESH_S + SCRAPE_S + SLACK_S)) "the added replica scraped" targets tenant_app_A "$A1:8080=up" "$A2:8080=up" \
  "$A3:8080=up"
added_s=$(python3 -c "import time; print(f'{time.time() - $SINCE:.1f}')")
log "PASS 3: $A3 added to the DNS answer was discovered and scraped after ${added_s}s" \
  "(refresh_interval ${REFRESH_S}s + scrape_interval ${SCRAPE_S}s)"
SINCE=0
expect $((4 * SCRAPE_S + SLACK_S)) "per-replica panels after scaling" panels "tenant_app_A=$A1:8080,$A2:8080,$A3:8080" \
  "tenant_app_B=$B1:8080,$B2:8080"
log "PASS 3b: the per-replica panels show the third tenant_app_A replica as its own series"

# --- 4. a replica killed: its target turns down, TargetDown goes pending --------------------------------------------
kill -9 "${SVC_PIDS[4]}"
wait "${SVC_PIDS[4]}" 2>/dev/null || true
SVC_PIDS[4]=""
t0=$SECONDS
expect $((SCRAPE_S + SLACK_S)) "the killed replica's target down" targets tenant_app_A "$A1:8080=up" "$A2:8080=up" \
  "$A3:8080=down"
down_s=$((SECONDS - t0))
expect $((SCRAPE_S + EVAL_S + SLACK_S)) "TargetDown pending" alert MessageEventServiceTargetDown pending "instance=$A3:8080"
expect 1 "TargetDown for the killed replica only" alerts MessageEventServiceTargetDown "instance=$A3:8080"
log "PASS 4: killed $A3 (SIGKILL): target down after ${down_s}s, MessageEventServiceTargetDown pending after" \
  "$((SECONDS - t0))s (fires after its for: 2m)"

# --- 5. replicas gone from DNS: no longer targets; a tenant with none left alerts --------------------------------
# As compose does when containers stop: the killed replica leaves the answer, and tenant_app_B is scaled to 0.
t0=$SECONDS
dns_set "tenant_app_A $A1 $A2" "tenant_app_B" || die "dnsmasq does not drop the replicas"
kill -TERM "${SVC_PIDS[2]}" "${SVC_PIDS[3]}" # they shut down meanwhile; cleanup waits for them by PID
expect $((REFRESH_S + SLACK_S)) "the removed replica dropped" targets tenant_app_A "$A1:8080=up" "$A2:8080=up"
expect $((REFRESH_S + SLACK_S)) "tenant_app_B without targets" targets tenant_app_B
# A dropped target's series end with staleness markers written when its next scrapes would have been (up to two
# scrape intervals later); the next rule evaluation after that sees them gone.
expect $((2 * SCRAPE_S + EVAL_S + SLACK_S)) "TargetDown of the removed replica resolved" \
  alerts MessageEventServiceTargetDown
expect $((2 * SCRAPE_S + EVAL_S + SLACK_S)) "NoReplicaUp pending for tenant_app_B only" \
  alerts MessageEventServiceNoReplicaUp job=tenant_app_B
expect 1 "NoReplicaUp pending" alert MessageEventServiceNoReplicaUp pending job=tenant_app_B
log "PASS 5: replicas gone from DNS are no longer scraped; MessageEventServiceNoReplicaUp pending for tenant_app_B" \
  "after $((SECONDS - t0))s (TargetDown cannot see it: nothing is down, the targets are gone)"
log "all dns_sd discovery checks passed"
