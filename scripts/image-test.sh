#!/usr/bin/env bash
# image-test.sh - builds deploy/Dockerfile with podman and runs the image (host network) against a throwaway
# nats-server and PostgreSQL on free loopback ports: /ready answers 200, events published by the image's own
# mes-loadgen are committed (its --verify, then rows counted with psql), the service runs as uid 10001, the image's
# HEALTHCHECK command succeeds inside the container, SIGTERM ends it with status 0 within shutdown.timeout, and the
# image size is printed. Timings of every phase are printed.
#
# Exit status: 0 passed, 1 failed, 77 skipped (the reason is printed: not root, podman missing, podman cannot run
# a container here, or no base image and no way to make one).
#
# Base image: FROM debian:12-slim. When it is not in podman's storage, the script imports it from a minimal
# Debian 12 root filesystem cached as $MES_FRESH_CACHE/rootfs-bookworm-slim.tar.gz (default /var/cache/mes-fresh,
# the cache of scripts/fresh-machine.sh), made once with `debootstrap --variant=minbase bookworm` and trimmed like
# the official slim image (no docs, man pages or locales; apt keeps no .deb files). With MES_IMAGE_PULL=1 it first
# tries `podman pull docker.io/library/debian:12-slim` (off by default: these machines reach no image registry).
# Layers stay in podman's storage between runs, so a warm run rebuilds only what changed (the compile layer when
# src/ changed); the previous image of the same tag is removed after a rebuild.
#
# podman settings (bash scripts/install-deps.sh writes them to /etc/containers/containers.conf; this script passes
# them as flags as well): --runtime runc (crun refuses this kernel's hybrid cgroups), --cgroup-manager cgroupfs (no
# systemd), and nofile/nproc limits at or below the host's hard limits (podman's default nofile, 1048576, is above
# them and every container would fail to start).
#
# Knobs: MES_IMAGE_TAG (default localhost/message-event-service:test), MES_IMAGE_KEEP=1 (keep the image and
# the temp dir), MES_IMAGE_BUILD_TIMEOUT (seconds, default 1500).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MES_FRESH_CACHE:-/var/cache/mes-fresh}
BASE_TARBALL=$CACHE/rootfs-bookworm-slim.tar.gz
BASE=docker.io/library/debian:12-slim
TAG=${MES_IMAGE_TAG:-localhost/message-event-service:test}
BUILD_TIMEOUT=${MES_IMAGE_BUILD_TIMEOUT:-1500}
COMPANY=imgtest
CTR=mes-image-test-$$
T0=$SECONDS

log() { printf '[image-test %3ss] %s\n' "$((SECONDS - T0))" "$*"; }
skip() { log "SKIP: $*"; exit 77; }
fail() { log "FAIL: $*" >&2; exit 1; }
# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh"

[ -z "${MES_FRESH_NESTED:-}" ] || skip "inside a fresh-machine chroot (podman's storage and cgroups are the host's)"
[ "$(id -u)" -eq 0 ] || skip "needs root (rootful podman: rootless needs subordinate uid ranges this script does not set up)"
for tool in podman runc nats-server curl psql ss flock timeout; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (bash scripts/install-deps.sh installs it)"
done
find_pg_bin || skip "PostgreSQL server binaries are missing"

# Limits for every container: podman's defaults exceed this machine's hard limits.
hard_n=$(ulimit -Hn) hard_u=$(ulimit -Hu)
NOFILE=16384 NPROC=32768
[ "$hard_n" = unlimited ] || [ "$hard_n" -ge "$NOFILE" ] || NOFILE=$hard_n
[ "$hard_u" = unlimited ] || [ "$hard_u" -ge "$NPROC" ] || NPROC=$hard_u
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
RUNOPTS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

WORK="" NATS_PID="" PG_PID="" PG_DATA="" CTR_STARTED=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$CTR_STARTED" = 1 ]; then
    "${PODMAN[@]}" rm -f -t 2 "$CTR" >/dev/null 2>&1 || log "could not remove container $CTR"
  fi
  if alive "$NATS_PID"; then
    kill -TERM "$NATS_PID"
    for _ in $(seq 1 50); do alive "$NATS_PID" || break; sleep 0.1; done
    alive "$NATS_PID" && kill -9 "$NATS_PID"
  fi
  if alive "$PG_PID"; then
    (cd "$WORK" && as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1)
    alive "$PG_PID" && kill -9 "$PG_PID"
  fi
  wait 2>/dev/null
  if [ -n "$WORK" ]; then
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
      log "logs of this run: $WORK"
    elif [ "${MES_IMAGE_KEEP:-0}" = 1 ]; then
      log "kept $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK=$(mktemp -d /tmp/mes-image-test.XXXXXX)
chmod 755 "$WORK" # PostgreSQL runs as user postgres and must enter it
mkdir -p "$CACHE"
# One run at a time builds the base image and the tag (the fresh-machine check has its own lock in the same cache).
exec 9>"$CACHE/image.lock"
flock -w 1800 9 || fail "another image-test run holds $CACHE/image.lock"

"${PODMAN[@]}" info >"$WORK/podman-info.txt" 2>&1 ||
  { tail -n 5 "$WORK/podman-info.txt"; skip "podman cannot run here ('podman info' failed, above)"; }

# --- the base image -------------------------------------------------------------------------------------------
make_base_tarball() {
  local mirror tmp
  mirror=$(debian_mirror)
  command -v debootstrap >/dev/null 2>&1 || return 1
  log "building a minimal Debian 12 root filesystem for $BASE from $mirror (once; cached as $BASE_TARBALL)"
  tmp=$(mktemp -d /var/tmp/mes-image-rootfs.XXXXXX)
  if ! debootstrap --variant=minbase bookworm "$tmp" "$mirror" >"$CACHE/debootstrap-slim.log" 2>&1; then
    tail -n 20 "$CACHE/debootstrap-slim.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  # What the official slim image does (debuerreotype's slimify and docker-* apt settings): no docs, man pages or
  # locales, now or for packages installed later; apt keeps neither .deb files nor translations.
  cat >"$tmp/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$tmp/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$tmp/etc/apt/apt.conf.d/docker-no-languages"
  find "$tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null
  find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null
  rm -rf "$tmp"/usr/share/{man,groff,info,lintian,linda}/* 2>/dev/null
  find "$tmp/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb \
    "$tmp"/var/log/*.log "$tmp"/var/log/apt/* "$tmp"/etc/machine-id
  # The same Debian sources and apt network settings as this machine (a frozen mirror needs Check-Valid-Until).
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    rm -f "$tmp/etc/apt/sources.list"
    for f in /etc/apt/sources.list.d/*.sources; do
      grep -q '/debian' "$f" && cp "$f" "$tmp/etc/apt/sources.list.d/"
    done
  fi
  apt-config dump 2>/dev/null | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|Retries) ' \
    >"$tmp/etc/apt/apt.conf.d/00host-network" || true
  tar --numeric-owner -C "$tmp" -czf "$BASE_TARBALL.part" . && mv "$BASE_TARBALL.part" "$BASE_TARBALL" ||
    { rm -rf "$tmp" "$BASE_TARBALL.part"; return 1; }
  rm -rf "$tmp"
}

t=$SECONDS
if "${PODMAN[@]}" image exists "$BASE"; then
  log "base image $BASE is present"
else
  if [ "${MES_IMAGE_PULL:-0}" = 1 ] && timeout 60 "${PODMAN[@]}" pull -q "$BASE" >"$WORK/pull.log" 2>&1; then
    log "pulled $BASE"
  else
    if [ ! -s "$BASE_TARBALL" ]; then
      command -v debootstrap >/dev/null 2>&1 || skip "no $BASE and debootstrap is not installed to make one"
      make_base_tarball || skip "no $BASE, and debootstrap could not make one (log: $CACHE/debootstrap-slim.log)"
    fi
    "${PODMAN[@]}" import --change 'CMD ["bash"]' "$BASE_TARBALL" "$BASE" >"$WORK/import.log" 2>&1 ||
      { cat "$WORK/import.log"; fail "podman import of $BASE_TARBALL failed"; }
    log "imported $BASE from $BASE_TARBALL ($((SECONDS - t))s)"
  fi
fi
# Can podman run a container at all here? If not, that is this machine, not the Dockerfile: skip.
if ! "${PODMAN[@]}" run --rm --network host "${RUNOPTS[@]}" "$BASE" true >"$WORK/probe.log" 2>&1; then
  tail -n 5 "$WORK/probe.log"
  skip "podman cannot run a container here (above)"
fi

# --- the image ------------------------------------------------------------------------------------------------
old_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
t=$SECONDS
log "building $TAG from deploy/Dockerfile (layers cached between runs)"
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
if ! timeout "$BUILD_TIMEOUT" "${PODMAN[@]}" build --format docker --layers --pull=never --network host \
     "${RUNOPTS[@]}" -f "$ROOT/deploy/Dockerfile" -t "$TAG" "$ROOT" >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log"
  fail "podman build failed (log above)"
fi
BUILD_S=$((SECONDS - t))
new_id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$TAG")
cached=$(grep -c -- '^--> Using cache' "$WORK/build.log")
steps=$(grep -E 'STEP [0-9]+/[0-9]+: ' "$WORK/build.log" | grep -vcE 'STEP [0-9]+/[0-9]+: FROM ')
log "built $TAG (${new_id:0:12}) in ${BUILD_S}s; $cached of $steps steps from the layer cache"
# Old images are removed after a rebuild so that storage does not grow with every commit: the previous image of
# the tag and the previous final image of each earlier stage (an untagged image that only the layer cache
# uses; podman rmi also removes its parents that nothing else needs). Layers the new build shares stay.
STAGES_FILE=$CACHE/image-stages.$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9_.-' _)
new_stages=$(awk '/^--> [0-9a-f]+$/ {last = $2} /^\[[0-9]+\/[0-9]+\] STEP 1\// && last != "" {print last}' \
  "$WORK/build.log")
removed=0
for id in $([ -n "$old_id" ] && [ "$old_id" != "$new_id" ] && echo "$old_id") $(cat "$STAGES_FILE" 2>/dev/null); do
  grep -qx "$id" <<<"$new_stages" && continue
  "${PODMAN[@]}" rmi "$id" >/dev/null 2>&1 && removed=$((removed + 1))
done
echo "$new_stages" >"$STAGES_FILE"
[ "$removed" -eq 0 ] || log "removed $removed image(s) of the previous build"
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG")
log "image size: $(awk -v b="$size" 'BEGIN { printf "%.1f MiB (%d bytes)", b / 1048576, b }')"
user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$TAG")
[ "$user" = "10001:10001" ] || fail "the image's USER is '$user', not 10001:10001"
health=$("${PODMAN[@]}" image inspect --format '{{if .HealthCheck}}{{json .HealthCheck.Test}}{{end}}' "$TAG")
[ -n "$health" ] || fail "the image has no HEALTHCHECK"
stop_to=$(awk '/^shutdown:/ {f = 1; next} f && /^[^ ]/ {f = 0} f && $1 == "timeout:" {print $2; exit}' \
  "$ROOT/config/default.yaml")
case $stop_to in
  *ms) STOP_S=1 ;; *m) STOP_S=$((${stop_to%m} * 60)) ;; *s) STOP_S=${stop_to%s} ;; *) STOP_S=20 ;;
esac

# --- NATS and PostgreSQL --------------------------------------------------------------------------------------
t=$SECONDS
NATS_PORT=$(free_port) && PG_PORT=$(free_port) && HTTP_PORT=$(free_port) || fail "no free port found"
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
pg_start "$WORK/pg" "$PG_PORT" 60 || fail "PostgreSQL did not start"
wait_for 20 "nats-server" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT" 2>/dev/null ||
  { tail -n 20 "$WORK/nats.log"; fail "nats-server did not start"; }
NATS_URL=nats://127.0.0.1:$NATS_PORT
log "nats-server pid $NATS_PID on :$NATS_PORT, PostgreSQL pid $PG_PID on :$PG_PORT ($((SECONDS - t))s)"

# --- the container --------------------------------------------------------------------------------------------
t=$SECONDS
CTR_STARTED=1
"${PODMAN[@]}" run -d --name "$CTR" --network host "${RUNOPTS[@]}" \
  -e COMPANY_ID=$COMPANY -e NATS_URL="$NATS_URL" -e POSTGRES_DSN="$DSN" \
  -e SERVER_PORT="$HTTP_PORT" -e SERVER_ADDRESS=127.0.0.1 "$TAG" >"$WORK/run.log" 2>&1 ||
  { cat "$WORK/run.log"; fail "podman run failed"; }
running() { [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$CTR" 2>/dev/null)" = true ]; }
ready() {
  running || { "${PODMAN[@]}" logs "$CTR" 2>&1 | tail -n 20; fail "the container exited before it was ready"; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$HTTP_PORT/ready")" = 200 ]
}
wait_for 90 "/ready" ready || { "${PODMAN[@]}" logs "$CTR" 2>&1 | tail -n 20; fail "/ready did not answer 200"; }
log "PASS /ready answers 200 ($((SECONDS - t))s after podman run)"

pid=$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' "$CTR")
uid=$(awk '/^Uid:/ {print $2 ":" $3 ":" $4 ":" $5}' "/proc/$pid/status" 2>/dev/null)
comm=$(cat "/proc/$pid/comm" 2>/dev/null)
[ "$uid" = "10001:10001:10001:10001" ] || fail "the container's process $pid ($comm) runs with uids $uid, not 10001"
[ "$comm" = message-event-s ] || fail "the container's main process is '$comm', not message-event-service"
log "PASS the service (host pid $pid) runs as uid 10001 (real, effective, saved, fs)"

# The image's HEALTHCHECK, as podman runs it (podman healthcheck run executes it in the container).
if "${PODMAN[@]}" healthcheck run "$CTR" >"$WORK/health.log" 2>&1; then
  log "PASS the HEALTHCHECK $health succeeds inside the container (podman healthcheck run)"
else
  cat "$WORK/health.log"
  fail "the HEALTHCHECK $health failed inside the container"
fi

# Events: the image's own mes-loadgen publishes a mix with poison and proves every one is stored or in the DLQ.
t=$SECONDS
if ! "${PODMAN[@]}" run --rm --network host "${RUNOPTS[@]}" --entrypoint mes-loadgen "$TAG" \
     --url "$NATS_URL" --company_ids $COMPANY --count 500 --invalid-ratio 0.02 --history-count 5 \
     --verify "$DSN" --verify-timeout 60s >"$WORK/loadgen.log" 2>&1; then
  tail -n 30 "$WORK/loadgen.log"
  fail "mes-loadgen --verify failed (above)"
fi
counts=$(psql "$DSN" -XAtq -F ' ' -c "SELECT 'chats', count(*) FROM daisi_$COMPANY.chats
  UNION ALL SELECT 'messages', count(*) FROM daisi_$COMPANY.messages
  UNION ALL SELECT 'contacts', count(*) FROM daisi_$COMPANY.contacts" 2>&1) || fail "cannot count rows: $counts"
for tbl in chats messages contacts; do
  grep -qE "^$tbl [1-9]" <<<"$counts" || fail "no rows in daisi_$COMPANY.$tbl: $(tr '\n' ' ' <<<"$counts")"
done
log "PASS 500 events committed and verified by mes-loadgen --verify (rows: $(tr '\n' ' ' <<<"$counts")) ($((SECONDS - t))s)"
grep -E 'verify' "$WORK/loadgen.log" | tail -n 3 | sed 's/^/    /'

# SIGTERM: podman stop sends the image's stop signal (SIGTERM), and SIGKILL only after STOP_S + 5 s.
sig=$("${PODMAN[@]}" inspect --format '{{.Config.StopSignal}}' "$CTR")
t=$SECONDS
start_ns=$(date +%s%N)
"${PODMAN[@]}" stop -t $((STOP_S + 5)) "$CTR" >/dev/null 2>&1
stop_ms=$((($(date +%s%N) - start_ns) / 1000000))
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$CTR")
"${PODMAN[@]}" logs "$CTR" >"$WORK/service.log" 2>&1
[ "$code" = 0 ] || { tail -n 20 "$WORK/service.log"; fail "the service exited with status $code after SIGTERM ($sig)"; }
[ "$stop_ms" -le $((STOP_S * 1000)) ] || fail "the service took ${stop_ms} ms to stop, more than shutdown.timeout ($STOP_S s)"
grep -q 'shutdown complete' "$WORK/service.log" || fail "no 'shutdown complete' in the service's log"
log "PASS stop signal ${sig:-SIGTERM}: exit status 0 after ${stop_ms} ms (shutdown.timeout ${STOP_S}s)"

log "PASS image $TAG: $(awk -v b="$size" 'BEGIN { printf "%.1f MiB", b / 1048576 }'), build ${BUILD_S}s" \
  "($cached/$steps steps cached), whole check $((SECONDS - T0))s"
