# lib.sh - shell helpers shared by scripts/demo.sh and loadtest/run-local.sh (source it; the caller defines log()).

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
