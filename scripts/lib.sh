# lib.sh - shell helpers shared by scripts/demo.sh and loadtest/run-local.sh (source it; the caller defines log()).
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
