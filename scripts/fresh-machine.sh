#!/usr/bin/env bash
# fresh-machine.sh - proves the README's first command on a minimal Debian 12: builds (once, then cached) a
# `debootstrap --variant=minbase bookworm` root filesystem with git and ca-certificates, clones the commit under
# test into it, runs `bash scripts/demo.sh` there as root in a chroot and checks the demo's exit status and its
# summary (rows per table, DLQ reasons, exhausted events).
#
# Exit status: 0 passed, 1 failed, 77 skipped (the reason is printed: not root, no debootstrap/chroot, mounts not
# permitted, mirror unreachable with nothing cached, or already inside such a chroot).
#
# Cache (MES_FRESH_CACHE, default /var/cache/mes-fresh): rootfs-bookworm-minbase.tar.gz, the package files and
# package lists the chroot downloaded (bind-mounted as its /var/cache/apt/archives and /var/lib/apt/lists), and
# the log of the last run (last-demo.log). `rm -rf` the directory to start from nothing.
# MES_FRESH_TIMEOUT (seconds, default 1500) bounds the demo run. MES_FRESH_COMMAND="..." runs another command in
# the chroot instead (e.g. "MES_TEST_QUICK=1 bash scripts/test.sh" to walk the newcomer path); only its exit status
# is checked then.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MES_FRESH_CACHE:-/var/cache/mes-fresh}
TARBALL=$CACHE/rootfs-bookworm-minbase.tar.gz
TIMEOUT_S=${MES_FRESH_TIMEOUT:-1500}
WORK="" CHROOT="" MOUNTED=()

say() { printf '[fresh-machine] %s\n' "$*"; }
skip() { say "SKIP: $*"; exit 77; }
fail() { say "FAIL: $*" >&2; exit 1; }

[ -z "${MES_FRESH_NESTED:-}" ] || skip "already inside a fresh-machine chroot"
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot and mounts)"
for tool in debootstrap chroot mount umount git tar timeout flock; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (bash scripts/install-deps.sh installs it)"
done

# shellcheck source=lib.sh
. "$ROOT/scripts/lib.sh" # debian_mirror

cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  if [ -n "$CHROOT" ]; then
    # Whatever still runs inside the chroot (a demo killed by the timeout leaves its servers): stop it first.
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$CHROOT" ] && kill -9 "$pid" 2>/dev/null
    done
    sleep 0.2
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
      umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null ||
        say "could not unmount ${MOUNTED[i]}" >&2
    done
    # Never remove a tree that still has something mounted in it (it could be the host's /dev or the cache).
    if grep -qF " $CHROOT/" /proc/self/mounts; then
      say "mounts remain under $CHROOT; leaving $WORK in place" >&2
      rc=1
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$CACHE/apt-archives/partial" "$CACHE/apt-lists/partial"
exec 9>"$CACHE/lock"
flock -w 1800 9 || fail "another fresh-machine run holds $CACHE/lock"

# --- the root filesystem (cached) ----------------------------------------------------------------------------
MIRROR=$(debian_mirror)
if [ ! -s "$TARBALL" ]; then
  if ! curl -fsS --max-time 20 -o /dev/null "${MIRROR%/}/dists/bookworm/Release" 2>/dev/null &&
     ! (exec 3<>"/dev/tcp/$(sed -E 's#^[a-z]+://([^/:]+).*#\1#' <<<"$MIRROR")/80") 2>/dev/null; then
    skip "the Debian mirror $MIRROR cannot be reached and no root filesystem is cached in $CACHE"
  fi
  say "building a minimal Debian 12 root filesystem from $MIRROR (once; cached as $TARBALL)"
  tmp=$(mktemp -d /var/tmp/mes-fresh-rootfs.XXXXXX)
  chmod 0755 "$tmp" # it becomes the chroot's /: mktemp's 0700 would keep every user but root out of the system
  if ! debootstrap --variant=minbase --include=git,ca-certificates bookworm "$tmp" "$MIRROR" \
       >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE/debootstrap.log" >&2
    rm -rf "$tmp"
    fail "debootstrap failed (log: $CACHE/debootstrap.log)"
  fi
  rm -f "$tmp"/var/cache/apt/archives/*.deb
  tar -C "$tmp" -czf "$TARBALL.part" . && mv "$TARBALL.part" "$TARBALL" || { rm -rf "$tmp"; fail "cannot write $TARBALL"; }
  rm -rf "$tmp"
fi

# --- a fresh copy of it, with the host's network settings and the commit under test -----------------------------
WORK=$(mktemp -d /var/tmp/mes-fresh.XXXXXX)
CHROOT=$WORK/root
mkdir -p "$CHROOT"
tar -C "$CHROOT" -xzf "$TARBALL" || fail "cannot unpack $TARBALL"
# A real system's / is 0755; a tarball made from a mktemp directory (an older cache) says 0700, and then the
# postgres user cannot run initdb (the demo fails with "runuser: failed to execute ...: Permission denied").
chmod 0755 "$CHROOT"
cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
# The same Debian sources and network settings as this machine (a frozen mirror needs Check-Valid-Until false).
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
  rm -f "$CHROOT/etc/apt/sources.list"
  for f in /etc/apt/sources.list.d/*.sources; do
    grep -q '/debian' "$f" && cp "$f" "$CHROOT/etc/apt/sources.list.d/"
  done
fi
apt-config dump 2>/dev/null | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|Retries) ' \
  >"$CHROOT/etc/apt/apt.conf.d/00host-network" || true

commit=$(git -C "$ROOT" rev-parse HEAD) || fail "$ROOT is not a git checkout"
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] ||
  say "note: the work tree has uncommitted changes; the chroot gets commit ${commit:0:12} without them"
git clone -q --no-hardlinks "$ROOT" "$CHROOT/root/message-event-service" &&
  git -C "$CHROOT/root/message-event-service" checkout -q --detach "$commit" || fail "cannot clone $ROOT at $commit"

mnt() { # mnt TARGET MOUNT-ARGS...
  mount "${@:2}" "$CHROOT$1" || fail "mount ${*:2} $CHROOT$1 failed"
  MOUNTED+=("$CHROOT$1")
}
if ! mount -t proc proc "$CHROOT/proc" 2>/dev/null; then
  skip "mounting /proc in a chroot is not permitted here"
fi
MOUNTED+=("$CHROOT/proc")
mnt /sys -t sysfs sysfs
mnt /dev --bind /dev
mnt /dev/pts -t devpts devpts
mnt /dev/shm -t tmpfs -o mode=1777,nosuid,nodev tmpfs
mnt /var/cache/apt/archives --bind "$CACHE/apt-archives"
mnt /var/lib/apt/lists --bind "$CACHE/apt-lists"

# --- the README's first command -----------------------------------------------------------------------------
first=$(awk '/^```/ {f = !f; next} f && NF {print; exit}' "$ROOT/README.md")
[ "$first" = "bash scripts/demo.sh" ] || fail "README's first command is '$first', not what this check runs"
if [ -n "${MES_FRESH_COMMAND:-}" ]; then first=$MES_FRESH_COMMAND; fi
say "running '$first' as root in a minimal Debian 12 chroot (commit ${commit:0:12}, limit ${TIMEOUT_S}s)"
start=$SECONDS
LOG=$WORK/demo.log
timeout --kill-after=10 "$TIMEOUT_S" chroot "$CHROOT" /usr/bin/env -i HOME=/root TERM=dumb MES_FRESH_NESTED=1 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash -c "cd /root/message-event-service && $first" </dev/null >"$LOG" 2>&1
rc=$?
cp "$LOG" "$CACHE/last-demo.log"
say "the demo exited with status $rc after $((SECONDS - start))s (log: $CACHE/last-demo.log)"

if [ -n "${MES_FRESH_COMMAND:-}" ]; then
  tail -n 30 "$LOG"
  [ "$rc" -eq 0 ] || fail "'$first' exited with status $rc"
  say "PASS: '$first' works on a minimal Debian 12"
  exit 0
fi

# --- what a newcomer must see --------------------------------------------------------------------------------
problems=()
[ "$rc" -eq 0 ] || problems+=("exit status $rc, not 0")
section() { # section HEADER: the indented lines after the line that contains HEADER
  awk -v h="$1" 'index($0, h) {f = 1; next} f && /^    / {print; next} f {exit}' "$LOG"
}
rows=$(section "rows per table in schema daisi_demo:")
for t in chats messages contacts agents onboarding_log exhausted_events; do
  grep -qE "^ +$t +[1-9][0-9]*$" <<<"$rows" || problems+=("no rows counted for table $t")
done
grep -qE '^  DLQ records \(dlq_stream, v1\.dlq\.demo\): [1-9]' "$LOG" || problems+=("no DLQ record count")
grep -qE '\[(unmarshal|validation)\] .+' <<<"$(section "why events went to the DLQ")" ||
  problems+=("no DLQ reasons listed")
grep -qE '^ +[0-9]+ ' <<<"$(section "exhausted events")" || problems+=("no exhausted events listed")
if [ ${#problems[@]} -gt 0 ]; then
  tail -n 40 "$LOG" >&2
  fail "$(IFS=';'; echo "${problems[*]}")"
fi
sed -n '/\[demo\] summary/,$p' "$LOG" | head -n 40
say "PASS: the README's first command works on a minimal Debian 12 ($((SECONDS - start))s)"
