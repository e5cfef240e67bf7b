#!/usr/bin/env bash
# check-observability.sh - static checks of the load-test and deployment files (SPEC 14): the compose file, the
# Prometheus config and alert rules, the Grafana dashboards and the Kubernetes manifests. CTest runs each check as
# static.observability.<check> (tests/CMakeLists.txt).
#
#   bash scripts/check-observability.sh compose|prometheus|dashboards|k8s|all
#
# dashboards - every dashboard JSON parses, has the rows in order, uses the datasource uid "prometheus"; every
#   target aggregates, its legendFormat names exactly the labels of its `by (...)` clause, targets of one panel have
#   distinct legends; every metric a panel, template variable or alert uses exists. Where the names come from:
#   * the service: the live /metrics of the built binary (MES_SERVICE_BIN, else build*/message-event-service),
#     started with unreachable PostgreSQL/NATS - its HTTP server starts first and every family is exported from
#     startup (SPEC 7), so this is exactly what Prometheus would scrape, histogram _bucket/_sum/_count included,
#     however src/metrics.c builds the names. Without a built binary: the string literals of src/metrics.c (less
#     strict: any *_seconds/*_size name may take histogram suffixes). The output says which source was used.
#   * the load generator: the "loadgen_*" string literals of loadtest/*.c (SPEC 13 names as fallback when the
#     source is not there yet);
#   * the NATS exporter: NATS_EXPORTER_METRICS below, names read from prometheus-nats-exporter's collector source
#     (collector.go namespaces "gnatsd"/"jetstream", jsz.go consumer/stream series, varz fields);
#   * Prometheus itself: PROMETHEUS_METRICS below.
# Exit status: 0 all good (or docker-compose absent for `compose`), 1 a check failed, 2 bad usage.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
COMPOSE_FILE=docker-compose.loadtest.yaml
PROM_DIR=deploy/prometheus
# Overridable so the checks can be pointed at a broken copy to prove they catch it.
DASH_DIR=${MES_OBS_DASH_DIR:-grafana/dashboards}
K8S_DIR=${MES_OBS_K8S_DIR:-deploy/k8s}

# Series of the prometheus-nats-exporter (v0.15, flags -varz -connz -jsz=all) that the dashboards may use.
NATS_EXPORTER_METRICS="jetstream_consumer_num_pending jetstream_consumer_num_ack_pending
jetstream_consumer_num_redelivered jetstream_consumer_num_waiting jetstream_consumer_delivered_stream_seq
jetstream_consumer_ack_floor_stream_seq jetstream_stream_total_messages jetstream_stream_total_bytes
jetstream_server_total_streams jetstream_server_total_consumers gnatsd_varz_in_msgs gnatsd_varz_out_msgs
gnatsd_varz_in_bytes gnatsd_varz_out_bytes gnatsd_varz_connections gnatsd_varz_slow_consumers"
# Series Prometheus adds to every target.
PROMETHEUS_METRICS="up scrape_duration_seconds scrape_samples_scraped scrape_series_added"
# SPEC 13 / the load generator's documented metrics, used only while loadtest/ has no loadgen source.
LOADGEN_DOCUMENTED="loadgen_messages_attempted_total loadgen_messages_published_total loadgen_publish_errors_total
loadgen_publish_latency_seconds_bucket loadgen_publish_latency_seconds_sum loadgen_publish_latency_seconds_count"

log() { printf '[check-observability] %s\n' "$*"; }
fail() { printf '[check-observability] FAIL: %s\n' "$*" >&2; exit 1; }

need_python() {
  command -v python3 >/dev/null 2>&1 || fail "python3 is not installed (scripts/install-deps.sh installs it)"
  python3 -c 'import yaml' 2>/dev/null || fail "python3 has no yaml module (Debian package python3-yaml)"
}

# ---------------------------------------------------------------------------------------------------------------
check_compose() {
  if ! command -v docker-compose >/dev/null 2>&1; then
    log "SKIP compose: docker-compose is not installed, $COMPOSE_FILE was not validated"
    return 0
  fi
  # config -q needs no Docker engine: it only parses, merges anchors and validates against the schema.
  docker-compose -f "$COMPOSE_FILE" config -q || fail "docker-compose config rejected $COMPOSE_FILE"
  need_python
  # What the schema cannot say: scaling needs no container_name and no fixed host ports on the apps, and the
  # Prometheus dns_sd jobs must name real services on the port they serve.
  python3 - "$COMPOSE_FILE" "$PROM_DIR/prometheus.yml" <<'PY'
import sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
prom = yaml.safe_load(open(sys.argv[2]))
svcs = compose["services"]
errs = []
for name in ("tenant_app_A", "tenant_app_B"):
    s = svcs.get(name)
    if s is None:
        errs.append(f"service {name} missing"); continue
    if "container_name" in s: errs.append(f"{name}: container_name prevents --scale")
    if s.get("ports"): errs.append(f"{name}: fixed host ports prevent --scale (use expose)")
    if (s.get("deploy") or {}).get("replicas", 1) < 2: errs.append(f"{name}: deploy.replicas < 2")
    if "/health" not in " ".join(map(str, (s.get("healthcheck") or {}).get("test", []))):
        errs.append(f"{name}: no healthcheck on /health")
    for dep, cond in (s.get("depends_on") or {}).items():
        if cond.get("condition") != "service_healthy": errs.append(f"{name}: depends_on {dep} not service_healthy")
for job in prom["scrape_configs"]:
    for sd in job.get("dns_sd_configs", []):
        for n in sd["names"]:
            if n not in svcs: errs.append(f"prometheus job {job['job_name']}: dns name {n} is no compose service")
            elif str(sd.get("port")) not in map(str, svcs[n].get("expose", [])):
                errs.append(f"prometheus job {job['job_name']}: {n} does not expose port {sd.get('port')}")
for e in errs: print("  " + e, file=sys.stderr)
sys.exit(1 if errs else 0)
PY
  log "OK compose: $COMPOSE_FILE is valid; apps scale (no container_name/host ports) and match the dns_sd jobs"
}

# ---------------------------------------------------------------------------------------------------------------
check_prometheus() {
  command -v promtool >/dev/null 2>&1 || fail "promtool is not installed (Debian package prometheus)"
  # check config also loads the rule files it names, relative to the config file's directory.
  promtool check config "$PROM_DIR/prometheus.yml" || fail "promtool check config"
  promtool check rules "$PROM_DIR/alerts.yml" || fail "promtool check rules"
  promtool test rules "$PROM_DIR/alerts_test.yml" || fail "promtool test rules (alert unit tests)"
  log "OK prometheus: config, rules and alert unit tests pass"
}

# ---------------------------------------------------------------------------------------------------------------
free_port() { # a port below the ephemeral range with nothing listening (same approach as scripts/demo.sh)
  local lo p
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 1 200); do
    p=$((lo - 12000 + RANDOM % 11000))
    if ! ss -Htan "( sport = :$p )" 2>/dev/null | grep -q .; then echo "$p"; return 0; fi
  done
  return 1
}

# Writes the service's metric names (one per line; histograms expanded) to $1, or returns 1.
service_metrics_live() {
  local out=$1 bin=${MES_SERVICE_BIN:-} port pid tmp ok=1
  if [ -z "$bin" ]; then
    bin=$(ls -t "$ROOT"/build*/message-event-service 2>/dev/null | head -n 1 || true)
  fi
  [ -n "$bin" ] && [ -x "$bin" ] || return 1
  port=$(free_port) || return 1
  tmp=$(mktemp -d /tmp/mes-obs-check.XXXXXX)
  # Port 1 refuses at once: the service keeps retrying within startup.timeout while /metrics already answers.
  (cd "$tmp" && exec env -i PATH="$PATH" COMPANY_ID=obs_check SERVER_PORT="$port" SERVER_ADDRESS=127.0.0.1 \
    POSTGRES_DSN="host=127.0.0.1 port=1 user=x dbname=x connect_timeout=1" NATS_URL="nats://127.0.0.1:1" \
    STARTUP_TIMEOUT=30s LOG_LEVEL=error "$bin" >"$tmp/service.log" 2>&1) &
  pid=$!
  for _ in $(seq 1 100); do
    if curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" -o "$tmp/metrics" 2>/dev/null; then ok=0; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$ok" -eq 0 ]; then
    awk '$1 == "#" && $2 == "TYPE" { if ($4 == "histogram") print $3 "_bucket\n" $3 "_sum\n" $3 "_count"; else print $3 }' \
      "$tmp/metrics" >"$out"
    log "service metric names: live /metrics of $bin ($(wc -l <"$out") names)"
  fi
  rm -rf "$tmp"
  return "$ok"
}

service_metrics_source() {
  local out=$1
  grep -ohE '"(message_event_service|dlq|onboarding|process)_[a-z0-9_]+"' src/metrics.c | tr -d '"' | sort -u |
    awk '{ print } /_(seconds|size)$/ { print $0 "_bucket\n" $0 "_sum\n" $0 "_count" }' >"$out"
  log "service metric names: string literals of src/metrics.c (no built binary found; $(wc -l <"$out") names)"
}

check_dashboards() {
  need_python
  local names
  names=$(mktemp /tmp/mes-obs-names.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -f '$names' '$names.svc' '$names.lg'" EXIT
  service_metrics_live "$names.svc" || service_metrics_source "$names.svc"
  # Every loadgen_* word inside a C string literal of loadtest/*.c (the exposition text is printed from literals).
  if compgen -G "loadtest/*.c" >/dev/null &&
     python3 -c 'import re, sys
names = {n for path in sys.argv[1:] for lit in re.findall(r"\"(?:[^\"\\\n]|\\.)*\"", open(path).read())
         for n in re.findall(r"\bloadgen_[a-z0-9_]+", lit)}
names |= {n + s for n in names if n.endswith("_seconds") for s in ("_bucket", "_sum", "_count")}
print("\n".join(sorted(names)))
sys.exit(0 if names else 1)' loadtest/*.c >"$names.lg"; then
    log "loadgen metric names: string literals of loadtest/*.c ($(wc -l <"$names.lg") names)"
  else
    tr ' ' '\n' <<<"$LOADGEN_DOCUMENTED" >"$names.lg"
    log "loadgen metric names: loadtest/ has no loadgen source yet, using the documented SPEC 13 names"
  fi
  {
    cat "$names.svc" "$names.lg"
    tr ' ' '\n' <<<"$NATS_EXPORTER_METRICS $PROMETHEUS_METRICS"
  } | grep -v '^$' >"$names"
  rm -f "$names.svc" "$names.lg"

  python3 - "$names" "$DASH_DIR" "$PROM_DIR/alerts.yml" <<'PY'
import glob, json, os, re, sys, yaml

known = set(open(sys.argv[1]).read().split())
dash_dir, alerts_file = sys.argv[2], sys.argv[3]
ROWS = ["Overview", "Performance", "Errors", "DLQ", "Resources"]
DS_UID = "prometheus"
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
            "unless", "inf", "nan", "Inf", "NaN"}
AGG = re.compile(r"\b(sum|min|max|avg|count|topk|bottomk|quantile|stddev|stdvar|group)\s*(by\s*\([^)]*\)\s*)?\(")
errors = []

def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)

def metric_names(expr):
    """Metric names of a PromQL expression: identifiers that are not functions, keywords, labels or numbers."""
    e = strip_strings(expr)
    e = re.sub(r"\{[^}]*\}", "{}", e)          # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)         # range and subquery durations
    e = re.sub(GROUPING, " ", e)               # grouping label lists
    out = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue                           # exponent or unit of a number
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue                           # function, aggregation or keyword
        out.append(m.group(0))
    return out

def grouping(expr):
    """Labels of the first `by (...)` clause, i.e. of the outermost aggregation in the prefix notation the
    dashboards use; `le` is consumed by histogram_quantile. None when the expression uses `without`."""
    e = strip_strings(expr)
    if re.search(r"\bwithout\s*\(", e):
        return None
    m = re.search(r"\bby\s*\(([^)]*)\)", e)
    labels = [l.strip() for l in m.group(1).split(",") if l.strip()] if m else []
    if "histogram_quantile" in e:
        labels = [l for l in labels if l != "le"]
    return labels

def check_names(where, expr):
    for n in metric_names(expr):
        if n not in known:
            errors.append(f"{where}: metric {n} is exported by nobody (service, loadgen, nats exporter, prometheus)")

files = sorted(glob.glob(os.path.join(dash_dir, "*.json")))
if not files:
    errors.append(f"no dashboards in {dash_dir}")
targets_checked = 0
for path in files:
    name = os.path.basename(path)
    try:
        dash = json.load(open(path))
    except ValueError as e:
        errors.append(f"{name}: not valid JSON: {e}")
        continue
    if not dash.get("uid"):
        errors.append(f"{name}: dashboard has no uid")
    for v in dash.get("templating", {}).get("list", []):
        qv = v.get("query")
        qv = qv.get("query", "") if isinstance(qv, dict) else (qv or "")
        m = re.match(r"\s*label_values\((.*),\s*\w+\)\s*$", qv)
        if m:
            check_names(f"{name} variable ${v.get('name')}", m.group(1))
        if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") != DS_UID:
            errors.append(f"{name} variable ${v.get('name')}: datasource uid is not {DS_UID!r}")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))     # collapsed rows keep their panels inside
    rows = [p.get("title") for p in panels if p.get("type") == "row"]
    if name == "message-event-service.json" and rows != ROWS:
        errors.append(f"{name}: rows are {rows}, want {ROWS}")
    if [r for r in ROWS if r in rows] != rows:
        errors.append(f"{name}: rows {rows} are not a subsequence of {ROWS}")
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"{name} panel {p.get('title')!r}"
        if (p.get("datasource") or {}).get("uid") != DS_UID:
            errors.append(f"{where}: datasource uid is not {DS_UID!r}")
        legends = []
        if not p.get("targets"):
            errors.append(f"{where}: no targets")
        for t in p.get("targets", []):
            targets_checked += 1
            w = f"{where} target {t.get('refId')}"
            expr, legend = t.get("expr", ""), t.get("legendFormat", "")
            if (t.get("datasource") or {}).get("uid") != DS_UID:
                errors.append(f"{w}: datasource uid is not {DS_UID!r}")
            if not expr.strip():
                errors.append(f"{w}: empty expr")
                continue
            check_names(w, expr)
            if not AGG.search(strip_strings(expr)):
                errors.append(f"{w}: does not aggregate (one line must mean one thing: use sum by (...))")
            if "db_operation_duration_seconds_bucket" in expr and 'status="success"' not in expr:
                errors.append(f"{w}: DB latency quantile without status=\"success\"")
            labels = grouping(expr)
            if labels is None:
                errors.append(f"{w}: uses `without`; group with `by (...)` so the legend can name the labels")
                continue
            if not legend.strip() or legend.strip() == "__auto":
                errors.append(f"{w}: empty legendFormat")
            named = re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend)
            missing = [l for l in labels if l not in named]
            extra = [l for l in named if l not in labels]
            if missing:
                errors.append(f"{w}: legendFormat {legend!r} does not name grouping label(s) {missing}")
            if extra:
                errors.append(f"{w}: legendFormat {legend!r} names {extra}, not grouped by (renders empty)")
            legends.append(legend)
        if len(set(legends)) != len(legends):
            errors.append(f"{where}: two targets share a legendFormat {legends}")

rules = 0
for g in (yaml.safe_load(open(alerts_file)) or {}).get("groups", []):
    for r in g.get("rules", []):
        rules += 1
        check_names(f"alerts.yml {r.get('alert') or r.get('record')}", r.get("expr", ""))

for e in errors:
    print("  " + e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"[check-observability] OK dashboards: {len(files)} dashboards, {targets_checked} targets, {rules} alert rules")
PY
}

# ---------------------------------------------------------------------------------------------------------------
check_k8s() {
  need_python
  python3 - "$K8S_DIR" <<'PY'
import glob, os, re, sys, yaml

root = sys.argv[1]
errors, docs = [], []
for path in sorted(glob.glob(os.path.join(root, "**", "*.y*ml"), recursive=True)):
    rel = os.path.relpath(path, root)
    try:
        for d in yaml.safe_load_all(open(path)):
            if d is not None:
                docs.append((rel, d))
    except yaml.YAMLError as e:
        errors.append(f"{rel}: not valid YAML: {e}")

SECRET_KEY = re.compile(r"pass|secret|token|dsn|credential|private|api[_-]?key", re.I)
SECRET_VALUE = re.compile(r"password\s*=|://[^/\s:@]+:[^/\s@]+@|sslkey|BEGIN [A-Z ]*PRIVATE KEY", re.I)

def duration_s(v):
    m = re.fullmatch(r"\s*(\d+)(ms|s|m|h)\s*", str(v))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)] if m else None

by_kind = {}
for rel, d in docs:
    kind = d.get("kind")
    if not kind or "apiVersion" not in d:
        errors.append(f"{rel}: document without apiVersion/kind")
        continue
    if kind != "Kustomization" and not (d.get("metadata") or {}).get("name"):
        errors.append(f"{rel}: {kind} without metadata.name")
    by_kind.setdefault(kind, []).append((rel, d))

for rel, k in by_kind.get("Kustomization", []):
    base = os.path.dirname(os.path.join(root, rel))
    for r in k.get("resources", []):
        if not os.path.exists(os.path.join(base, r)):
            errors.append(f"{rel}: resource {r} does not exist")
        if "secret" in r.lower():
            errors.append(f"{rel}: lists {r}: secret examples must not be applied with the kustomization")

configmaps = {}
for rel, cm in by_kind.get("ConfigMap", []):
    configmaps[cm["metadata"]["name"]] = cm
    for key, val in (cm.get("data") or {}).items():
        if SECRET_KEY.search(key):
            errors.append(f"{rel}: ConfigMap key {key} looks secret (POSTGRES_DSN/NATS_URL/passwords go in a Secret)")
        if SECRET_VALUE.search(str(val)):
            errors.append(f"{rel}: ConfigMap value of {key} contains a credential")

for rel, s in by_kind.get("Secret", []):
    if not rel.endswith(".example.yaml"):
        errors.append(f"{rel}: Secrets belong in *.example.yaml files with placeholders only")
    for key, val in {**(s.get("stringData") or {}), **(s.get("data") or {})}.items():
        for m in re.finditer(r"password\s*=\s*(\S+)|://[^/\s:@]+:([^/\s@]+)@", str(val)):
            if (m.group(1) or m.group(2)) != "CHANGE_ME":
                errors.append(f"{rel}: {key} holds a password other than the CHANGE_ME placeholder")

def http_path(probe):
    return ((probe or {}).get("httpGet") or {}).get("path")

pod_labels = []
for rel, dep in by_kind.get("Deployment", []):
    spec = dep["spec"]
    tpl = spec["template"]
    labels = tpl["metadata"].get("labels", {})
    pod_labels.append(labels)
    if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
        errors.append(f"{rel}: selector does not match the pod template labels")
    ann = tpl["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or not ann.get("prometheus.io/port"):
        errors.append(f"{rel}: pod template lacks prometheus.io/scrape and prometheus.io/port annotations")
    pspec = tpl["spec"]
    psec = pspec.get("securityContext") or {}
    shutdown = 20.0  # shutdown.timeout default (SPEC 11)
    for c in pspec["containers"]:
        w = f"{rel} container {c['name']}"
        for ref in c.get("envFrom", []):
            cm = configmaps.get((ref.get("configMapRef") or {}).get("name"))
            if cm and "SHUTDOWN_TIMEOUT" in (cm.get("data") or {}):
                shutdown = duration_s(cm["data"]["SHUTDOWN_TIMEOUT"]) or shutdown
        if http_path(c.get("livenessProbe")) != "/health":
            errors.append(f"{w}: livenessProbe must GET /health")
        if http_path(c.get("readinessProbe")) != "/ready":
            errors.append(f"{w}: readinessProbe must GET /ready")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not all(k in (res.get(part) or {}) for k in ("cpu", "memory")):
                errors.append(f"{w}: resources.{part} needs cpu and memory")
        csec = c.get("securityContext") or {}
        if not (csec.get("runAsNonRoot", psec.get("runAsNonRoot")) is True):
            errors.append(f"{w}: runAsNonRoot is not true")
        if csec.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{w}: readOnlyRootFilesystem is not true")
        if csec.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{w}: allowPrivilegeEscalation is not false")
    grace = pspec.get("terminationGracePeriodSeconds", 30)
    if not grace > shutdown:
        errors.append(f"{rel}: terminationGracePeriodSeconds {grace} must exceed shutdown.timeout {shutdown:g}s")

if not by_kind.get("Deployment"):
    errors.append("no Deployment found")
for kind in ("Namespace", "ConfigMap", "Service", "PodDisruptionBudget"):
    if not by_kind.get(kind):
        errors.append(f"no {kind} found")
for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector", "matchLabels"))):
    for rel, d in by_kind.get(kind, []):
        sel = d
        for p in path:
            sel = (sel or {}).get(p)
        if not sel or not any(all(l.get(k) == v for k, v in sel.items()) for l in pod_labels):
            errors.append(f"{rel}: {kind} selector matches no Deployment's pods")

for e in errors:
    print("  " + e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"[check-observability] OK k8s: {len(docs)} documents parse; probes, resources, security context, "
      "grace period, selectors and secret hygiene hold")
PY
}

# ---------------------------------------------------------------------------------------------------------------
case "${1:-}" in
  compose) check_compose ;;
  prometheus) check_prometheus ;;
  dashboards) check_dashboards ;;
  k8s) check_k8s ;;
  all) check_compose && check_prometheus && check_dashboards && check_k8s ;;
  *) echo "usage: $0 compose|prometheus|dashboards|k8s|all" >&2; exit 2 ;;
esac
