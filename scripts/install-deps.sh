#!/usr/bin/env bash
# install-deps.sh [demo|all] - installs the Debian 12 packages the project needs: "demo" what scripts/demo.sh
# needs (build, NATS, PostgreSQL, curl), "all" (the default) everything (tests, sanitizers, fuzzing, load-test
# tooling, the fresh-machine check, podman for the image check). Idempotent: a no-op that only asks dpkg when
# everything is already present (and rewrites nothing when the podman settings below are already in place).
# The postgresql package is installed without starting or creating the system cluster: tests and the demo run
# their own throwaway servers (tests/harness.c, scripts/demo.sh), never the system one.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libnats-dev libcjson-dev libmicrohttpd-dev libyaml-dev libpq-dev libssl-dev openssl
  nats-server postgresql postgresql-client
  curl ca-certificates procps iproute2 util-linux
)
case ${1:-all} in
  demo) ;;
  all) PKGS+=(prometheus docker-compose clang libclang-rt-14-dev valgrind gnuplot-nox python3 python3-yaml openssl
              debootstrap dnsmasq-base podman runc clang-format) ;;
  *) echo "install-deps: usage: install-deps.sh [demo|all] (got '$1')" >&2; exit 2 ;;
esac

# podman's settings for these machines (scripts/image-test.sh passes the same as flags): runc, because crun refuses
# the hybrid cgroup v1 hierarchy of this kernel; cgroupfs, because there is no systemd; and nofile/nproc limits at
# or below the host's hard limits (podman's default nofile, 1048576, exceeds them, so every container would fail
# with "error setting rlimits"). Only a file this script wrote is rewritten; someone else's is left alone.
podman_conf() {
  local conf=/etc/containers/containers.conf marker="# written by message-event-service scripts/install-deps.sh"
  local n u want as=()
  [ "${1:-}" = all ] && command -v podman >/dev/null 2>&1 || return 0
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: not root: $conf not checked" >&2; return 0; }
    as=(sudo)
  fi
  n=$(ulimit -Hn) u=$(ulimit -Hu)
  if [ "$n" = unlimited ] || [ "$n" -gt 16384 ]; then n=16384; fi
  if [ "$u" = unlimited ] || [ "$u" -gt 32768 ]; then u=32768; fi
  want=$(printf '%s\n' "$marker" "[containers]" "default_ulimits = [\"nofile=$n:$n\", \"nproc=$u:$u\"]" "" \
    "[engine]" 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"')
  [ "$(cat "$conf" 2>/dev/null)" = "$want" ] && return 0
  if [ -s "$conf" ] && ! grep -qxF "$marker" "$conf"; then
    echo "install-deps: $conf exists and was not written here; left as is (scripts/image-test.sh passes flags)" >&2
    return 0
  fi
  "${as[@]}" mkdir -p /etc/containers
  printf '%s\n' "$want" | "${as[@]}" tee "$conf" >/dev/null
  echo "install-deps: wrote $conf (runc, cgroupfs, nofile $n, nproc $u)"
}

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already present"
  podman_conf "${1:-all}"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo env DEBIAN_FRONTEND=noninteractive)
  else
    echo "install-deps: missing ${missing[*]}; run as root (or install sudo)" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/mes-install-deps.XXXXXX)
policy_created=0
cleanup() {
  if [ "$policy_created" = 1 ]; then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi
  rm -f "$log"
}
trap cleanup EXIT

# Keep package installs from starting services (postgresql, prometheus, nats-server) on this machine.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
  policy_created=1
fi
# ...and postgresql-common from creating the 15/main cluster (read by pg_createcluster at install time).
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" |
  "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/50-mes-no-main-cluster.conf >/dev/null

apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! { "${SUDO[@]}" apt-get "${apt_opts[@]}" update -q &&
       "${SUDO[@]}" apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "install-deps: apt-get failed while installing: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${missing[*]}"
podman_conf "${1:-all}"
