# shellcheck shell=bash
# bench/lib.sh - what the benchmark scripts share (sourced by run.sh, compare.sh and soak.sh): the realistic mix and
# the build of an older commit for a before/after in one session.

# The realistic mix: the load generator's default weights, written out because bench-drain always passes --subjects.
MIX=v1.chats.upsert:8,v1.chats.update:10,v1.messages.upsert:40,v1.messages.update:24,v1.contacts.upsert:6
MIX=$MIX,v1.contacts.update:4,v1.connection.update:2,v1.history.chats:2,v1.history.messages:3,v1.history.contacts:1

# bench_build_old ROOT REV BUILD: the service of commit REV of the clone at ROOT, built in a temporary git worktree
# (RelWithDebInfo, no tests) and kept as BUILD/old/<sha>/message-event-service, so a second run for the same commit
# does not build again. Sets OLD_SHA and OLD_BIN. Returns 1, having said why on stderr, when REV is not a commit of
# this clone (a copy without history) or does not build here.
bench_build_old() {
    local root=$1 rev=$2 build=$3 tree
    OLD_BIN=
    if ! OLD_SHA=$(git -C "$root" rev-parse --verify -q "$rev^{commit}"); then
        echo "bench: $rev is not a commit of $root (a copy without its git history?)" >&2
        return 1
    fi
    local keep=$build/old/$OLD_SHA
    if [ -x "$keep/message-event-service" ]; then
        OLD_BIN=$keep/message-event-service
        return 0
    fi
    echo "building the service of $rev (${OLD_SHA:0:10}) in a temporary worktree ..." >&2
    tree=$(mktemp -d /tmp/mes-old-XXXXXX)
    if git -C "$root" worktree add -q --detach "$tree" "$OLD_SHA" &&
        cmake -S "$tree" -B "$tree/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMES_TESTS=OFF >/dev/null &&
        cmake --build "$tree/build" -j2 --target message-event-service >/dev/null && mkdir -p "$keep" &&
        cp "$tree/build/message-event-service" "$keep/"; then
        OLD_BIN=$keep/message-event-service
    else
        echo "bench: building $rev (${OLD_SHA:0:10}) failed (run the cmake commands in bench/lib.sh to see why)" >&2
    fi
    git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"
    git -C "$root" worktree prune >/dev/null 2>&1 || true
    [ -n "$OLD_BIN" ]
}
