# lib.sh - shell helpers shared by scripts/demo.sh, loadtest/run-local.sh and tests/integration/dns_sd_discovery.sh
# (source it; the caller defines log()).
# Sourcing it only defines functions: nothing here may depend on a package the install step has not installed yet
# (it is sourced before scripts/install-deps.sh runs, under set -euo pipefail).

# report_failures NAME: under set -e, a failing command would end the script without a word; this trap names the
# command and the line on stderr first.
report_failures() {
  # shellcheck disable=SC2154 # rc is assigned inside the trap
  trap 'rc=$?; printf "[%s] ERROR: \"%s\" failed with status %d (%s line %d)\n" "'"$1"'" "$BASH_COMMAND" "$rc" \
    "${BASH_SOURCE[0]##*/}" "$LINENO" >&2' ERR
}

# A port below the kernel's ephemeral range with nothing bound to it (ephemeral ports can be taken at any time by
# outgoing connections, e.g. while a server is down between a stop and a restart).
USED_PORTS=" "
free_port() {
  local lo p
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 1 200); do
    p=$((lo - 12000 + RANDOM % 11000))
    if [[ $USED_PORTS != *" $p "* ]] && ! ss -Htan "( sport = :$p )" 2>/dev/null | grep -q .; then
      USED_PORTS+="$p "
      echo "$p"
      return 0
    fi
  done
  return 1
}

# wait_for DEADLINE_S DESCRIPTION CMD...: polls CMD every 100 ms until it succeeds or the deadline passes.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || { log "timed out waiting for ${what}"; return 1; }
    sleep 0.1
  done
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# find_pg_bin: sets PG_BIN to the newest PostgreSQL server's bin directory; says why on stderr and returns 1 when
# there is none (call it after the install step, never at source time).
PG_BIN=""
find_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && PG_BIN=$d # the glob sorts 15 before 16: the last one wins
  done
  [ -n "$PG_BIN" ] && return 0
  echo "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin;" \
    "bash scripts/install-deps.sh installs them" >&2
  return 1
}

as_postgres() { # PostgreSQL refuses to run as root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start HOME PORT MAX_CONNECTIONS: a throwaway cluster in HOME/data on 127.0.0.1:PORT, durability off (it serves
# demos and load tests, not data). HOME must be enterable by the postgres user. Sets PG_DATA, PG_PID and DSN; on
# failure prints the relevant log and returns 1.
pg_start() {
  local home=$1 port=$2 maxconn=$3
  PG_DATA=$home/data
  mkdir -p "$home"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$home"
  (cd "$home" && as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres --no-sync -E UTF8 --locale=C \
    >"$home/initdb.log" 2>&1) || { tail -n 20 "$home/initdb.log"; return 1; }
  (cd "$home" && as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$home/pg.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $PG_DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=$maxconn" \
    >/dev/null) || { tail -n 20 "$home/pg.log"; return 1; }
  PG_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
  DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
}

# stop_pid PID [SECONDS]: SIGTERM, waits up to SECONDS (default 10) for it to exit, then SIGKILL. Only ever a PID
# this script started.
stop_pid() {
  local pid=${1:-} n=$((${2:-10} * 10))
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 "$n"); do alive "$pid" || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  return 0
}

# nats_start DIR: nats-server with JetStream (store in DIR/store) and monitoring on 127.0.0.1, free ports. Sets
# NATS_PID, NATS_PORT, NATS_MON; on failure prints the log and returns 1.
nats_start() {
  local dir=$1
  NATS_PORT=$(free_port) && NATS_MON=$(free_port) || return 1
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -sd "$dir/store" >"$dir/nats.log" 2>&1 &
  NATS_PID=$!
  wait_for 20 "nats-server" curl -fs -o /dev/null "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" ||
    { tail -n 20 "$dir/nats.log"; return 1; }
}

# --- A local stand-in for the compose network -----------------------------------------------------------------
# docker-compose.loadtest.yaml gives every container its own address; Docker's DNS answers a service name with one
# A record per running replica, and Prometheus finds the replicas through deploy/prometheus/prometheus.yml's
# dns_sd jobs. Without Docker: each "container" binds its own loopback address (127.A.B.N, one /24 per run) on its
# compose port; dnsmasq on 127.A.B.53:53 answers the service names from a hosts file this script writes; Prometheus
# runs in its own mount namespace (unshare -m) where /etc/resolv.conf is bind-mounted to a file naming that
# dnsmasq. The machine's own /etc/resolv.conf is never written to: the bind mount exists only in that namespace.

# localnet_check DIR: returns 1 with the reason on stderr when this machine cannot do that (dnsmasq or unshare
# missing, no mount namespaces, /etc/resolv.conf cannot be bind-mounted over).
localnet_check() {
  local tool out
  for tool in dnsmasq unshare mount python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not installed (bash scripts/install-deps.sh)" >&2; return 1; }
  done
  [ -e /etc/resolv.conf ] || { echo "/etc/resolv.conf does not exist: there is nothing to bind-mount over" >&2; return 1; }
  echo "nameserver 127.0.0.1" >"$1/resolv.check"
  if ! out=$(unshare --mount --propagation private -- sh -c 'mount --bind "$0" /etc/resolv.conf' "$1/resolv.check" 2>&1); then
    echo "cannot bind-mount /etc/resolv.conf in a private mount namespace (unshare -m; needs CAP_SYS_ADMIN): $out" >&2
    return 1
  fi
  rm -f "$1/resolv.check"
}

# localnet_pick: sets NET to "127.A.B", a /24 on which no socket of this machine is bound.
NET=""
localnet_pick() {
  local a b
  for _ in $(seq 1 100); do
    a=$((16 + RANDOM % 230)) b=$((RANDOM % 256))
    if ! ss -Hantu 2>/dev/null | grep -qE "[[:space:]]127\.$a\.$b\.[0-9]+:"; then
      NET=127.$a.$b
      return 0
    fi
  done
  echo "no free 127.x.y.0/24 found" >&2
  return 1
}

# dns_start DIR: dnsmasq on $NET.53:53, answering only the names of DIR/hosts (no upstream, not the machine's
# /etc/hosts), and DIR/resolv.conf naming it. Any other name is NXDOMAIN (--local=/#/), as Docker's DNS answers a
# service with no running container; without it dnsmasq answers REFUSED, which Prometheus's dns_sd takes for a
# failed lookup and keeps the last targets, where NXDOMAIN empties the job. DIR must be readable by "nobody" (dnsmasq drops root after binding
# and re-reads the hosts file as that user). Sets DNS_PID and DNS_DIR; on failure prints the log and returns 1.
declare -A DNS_RECORDS=()
DNS_PID="" DNS_DIR=""
dns_start() {
  DNS_DIR=$1
  : >"$DNS_DIR/hosts"
  chmod 644 "$DNS_DIR/hosts"
  echo "nameserver $NET.53" >"$DNS_DIR/resolv.conf"
  dnsmasq --keep-in-foreground --conf-file=/dev/null --listen-address="$NET.53" --bind-interfaces --port=53 \
    --no-resolv --no-hosts --addn-hosts="$DNS_DIR/hosts" --local=/#/ --local-ttl=0 --pid-file="$DNS_DIR/dnsmasq.pid" \
    --log-facility="$DNS_DIR/dnsmasq.log" >"$DNS_DIR/dnsmasq.out" 2>&1 &
  DNS_PID=$!
  dns_listening() { alive "$DNS_PID" && ss -Hlun "( sport = :53 )" 2>/dev/null | grep -qF "$NET.53:53"; }
  wait_for 10 "dnsmasq on $NET.53:53" dns_listening ||
    { cat "$DNS_DIR/dnsmasq.out" "$DNS_DIR/dnsmasq.log" 2>/dev/null | tail -n 20; return 1; }
}

# dns_query NAME...: one line per NAME: the A records dnsmasq answers for it, sorted, space separated (empty: none),
# asked straight from $NET.53 (the machine's resolver is not involved).
dns_query() {
  python3 - "$NET.53" "$@" <<'PY'
import random, socket, struct, sys
server = sys.argv[1]
for name in sys.argv[2:]:
    q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(q, (server, 53))
    r = s.recv(4096)
    ancount, i = struct.unpack(">H", r[6:8])[0], len(q)   # the answer section follows the echoed question
    addrs = []
    for _ in range(ancount):
        i += 2 if r[i] & 0xC0 == 0xC0 else r.index(b"\0", i) - i + 1
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(r[i:i + 4]))
        i += rdlen
    print(" ".join(sorted(addrs, key=socket.inet_aton)))
PY
}

# dns_set "NAME [ADDR...]"...: each NAME answers with exactly these A records (none: NAME no longer resolves, as a
# compose service scaled to 0). Rewrites the hosts file, makes dnsmasq re-read it (SIGHUP) and waits until it
# answers so.
dns_set() {
  local entry n addr names=() lines=() want
  for entry in "$@"; do
    read -r n addr <<<"$entry"
    DNS_RECORDS[$n]=$addr
    names+=("$n")
    # shellcheck disable=SC2086 # one address per word
    lines+=("$(printf '%s\n' $addr | sort -t. -k1,1n -k2,2n -k3,3n -k4,4n | xargs)")
  done
  want=$(printf '%s\n' "${lines[@]}" | paste -sd'|') # one field per name, empty ones kept
  for n in "${!DNS_RECORDS[@]}"; do
    for addr in ${DNS_RECORDS[$n]}; do echo "$addr $n"; done
  done >"$DNS_DIR/hosts.new"
  chmod 644 "$DNS_DIR/hosts.new"
  mv "$DNS_DIR/hosts.new" "$DNS_DIR/hosts"
  kill -HUP "$DNS_PID" || return 1
  dns_answers() { [ "$(dns_query "${names[@]}" 2>/dev/null | paste -sd'|')" = "$want" ]; }
  wait_for 10 "dnsmasq to answer ${names[*]} as set" dns_answers
}

# prom_start_ns CONFIG ADDR DIR [ARGS...]: Prometheus with CONFIG (used as is) listening on ADDR:9090, data and log
# in DIR, in a private mount namespace whose /etc/resolv.conf is $DNS_DIR/resolv.conf. `unshare` and `sh` exec, so
# PROM_PID is Prometheus's own PID. Waits until it is ready; on failure prints its log and returns 1.
PROM_PID=""
prom_start_ns() {
  local config=$1 addr=$2 dir=$3
  shift 3
  unshare --mount --propagation private -- sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' \
    "$DNS_DIR/resolv.conf" prometheus --config.file="$config" --storage.tsdb.path="$dir/prom-data" \
    --web.listen-address="$addr:9090" --log.level=warn "$@" >"$dir/prometheus.log" 2>&1 &
  PROM_PID=$!
  wait_for 30 "Prometheus" curl -fs -o /dev/null "http://$addr:9090/-/ready" || { tail -n 20 "$dir/prometheus.log"; return 1; }
}

# app_start NAME COMPANY ADDR: one replica of message-event-service ("container" NAME) on ADDR:8080, as compose runs
# it, against NATS_PORT and DSN; log in $WORK/NAME.log. Appends to SVC_PIDS, SVC_NAMES, SVC_ADDRS.
SVC_PIDS=() SVC_NAMES=() SVC_ADDRS=()
app_start() {
  env COMPANY_ID="$2" NATS_URL="nats://127.0.0.1:$NATS_PORT" POSTGRES_DSN="$DSN" SERVER_ADDRESS="$3" \
    SERVER_PORT=8080 LOG_LEVEL=info "$SVC_BIN" >"$WORK/$1.log" 2>&1 &
  SVC_PIDS+=($!)
  SVC_NAMES+=("$1")
  SVC_ADDRS+=("$3")
}

# apps_ready: every replica started by app_start answers /ready; exits the script when one of them died.
apps_ready() {
  local i
  for i in "${!SVC_PIDS[@]}"; do
    [ -n "${SVC_PIDS[$i]}" ] || continue # stopped on purpose
    alive "${SVC_PIDS[$i]}" || { log "${SVC_NAMES[$i]} exited:"; tail -n 20 "$WORK/${SVC_NAMES[$i]}.log"; exit 1; }
    curl -fs -o /dev/null --max-time 2 "http://${SVC_ADDRS[$i]}:8080/ready" || return 1
  done
}

# apps_stop: SIGTERM to every replica (they drain into NATS/PostgreSQL; shutdown.timeout is 20s), then waits.
apps_stop() {
  local i pid
  for pid in "${SVC_PIDS[@]}"; do alive "$pid" && kill -TERM "$pid"; done
  for i in "${!SVC_PIDS[@]}"; do
    pid=${SVC_PIDS[$i]}
    for _ in $(seq 1 250); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "${SVC_NAMES[$i]} (pid $pid) ignored SIGTERM; killing it"; kill -9 "$pid"; }
  done
  return 0
}

# debian_mirror: the machine's configured Debian mirror, the first non-security Debian URI of its apt sources
# (scripts/fresh-machine.sh and scripts/image-test.sh build root filesystems from it with debootstrap).
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' |
    grep -E '/debian/?$' | head -n 1)
  [ -n "$uri" ] || uri=$(grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
    awk '{print $2}' | grep -E '/debian/?$' | head -n 1)
  echo "${uri:-http://deb.debian.org/debian}"
}
