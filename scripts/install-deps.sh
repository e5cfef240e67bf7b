#!/usr/bin/env bash
# install-deps.sh [demo|all] - installs the Debian 12 packages the project needs: "demo" what scripts/demo.sh
# needs (build, NATS, PostgreSQL, curl), "all" (the default) everything (tests, sanitizers, fuzzing, load-test
# tooling, the fresh-machine check). Idempotent: a no-op that only asks dpkg when everything is already present.
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
  all) PKGS+=(prometheus docker-compose clang libclang-rt-14-dev valgrind gnuplot-nox python3 python3-yaml
              debootstrap) ;;
  *) echo "install-deps: usage: install-deps.sh [demo|all] (got '$1')" >&2; exit 2 ;;
esac

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already present"
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
