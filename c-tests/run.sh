#!/usr/bin/env bash
# C test suite for xrename.
#
# Usage: c-tests/run.sh [PROGRAM [TEST...]]
#   PROGRAM  run only c-tests/PROGRAM.c (e.g. "moves"); TEST... only those tests
#
# Builds every c-tests/*.c into target/c-tests/ (and c-tests/lib/*.c into
# target/c-tests/lib*.so), then re-executes itself inside a private mount
# namespace and runs each program with LD_PRELOAD=target/release/libxrename.so
# and its own fresh mounts (see c-tests/common.h for the XT_* variables).
#
# Ends with "C: N passed, N failed, N skipped"; exits non-zero if anything
# failed.  With CI=true, being unable to make the mounts and any skipped test
# count as failures.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# XT_LIB_PATH may point at another build of the library (e.g. a debug build).
LIB=${XT_LIB_PATH:-$ROOT/target/release/libxrename.so}
OUT=$ROOT/target/c-tests
CI=${CI:-false}

summary() { # passed failed skipped
    echo "C: $1 passed, $2 failed, $3 skipped"
    [[ $2 -eq 0 ]]
    exit $?
}

if [[ -z ${XT_IN_NAMESPACE:-} ]]; then
    # ---------------------------------------------------------------- phase 1
    if [[ ! -f $LIB ]]; then
        echo "FAIL setup: $LIB is missing (build it with 'cargo build --release' in $ROOT)"
        summary 0 1 0
    fi
    mkdir -p "$OUT"
    build_failed=0
    for src in "$HERE"/lib/*.c; do
        [[ -e $src ]] || continue
        name=$(basename "$src" .c)
        if ! cc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$OUT/lib$name.so" "$src"; then
            echo "FAIL build lib/$name.c"
            build_failed=$((build_failed + 1))
        fi
    done
    for src in "$HERE"/*.c; do
        name=$(basename "$src" .c)
        rm -f "$OUT/$name"
        if ! cc -O2 -Wall -Wextra -Werror -o "$OUT/$name" "$src"; then
            echo "FAIL build $name.c"
            build_failed=$((build_failed + 1))
        fi
    done

    if [[ $(id -u) -eq 0 ]]; then
        real_root=1
        ns=(unshare -m --propagation private)
    else
        real_root=0
        ns=(unshare -Urm --propagation private)
    fi
    if ! why=$("${ns[@]}" sh -c 'd=$(mktemp -d) && mount -t tmpfs xt-probe "$d" && umount "$d" && rmdir "$d"' 2>&1); then
        echo "cannot create a private mount namespace with mounts (${ns[*]}): $why"
        if [[ $CI == true ]]; then
            echo "FAIL setup: private mounts are required when CI=true"
            summary 0 $((build_failed + 1)) 0
        fi
        echo "SKIPPING THE WHOLE C SUITE: no private mounts available"
        summary 0 "$build_failed" 1
    fi
    XT_IN_NAMESPACE=1 XT_REAL_ROOT=$real_root XT_BUILD_FAILED=$build_failed \
        exec "${ns[@]}" bash "${BASH_SOURCE[0]}" "$@"
fi

# -------------------------------------------------------------------- phase 2
# Inside the private mount namespace: mounts made here are invisible outside
# and go away with the namespace; we still unmount them per program.
passed=0 failed=${XT_BUILD_FAILED:-0} skipped=0
W=""
MOUNTS=()

cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}"
    done
    MOUNTS=()
    if [[ -n $W && -d $W ]]; then
        rm -rf --one-file-system "$W"
    fi
    W=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

mnt() { # mount ARGS... TARGET  (TARGET is remembered for cleanup)
    mount "$@" || return 1
    MOUNTS+=("${!#}")
}

setup_mounts() {
    W=$(mktemp -d "${TMPDIR:-/tmp}/xrename-c-tests.XXXXXX") || return 1
    mkdir "$W/tmpfs" "$W/ext4" "$W/small" "$W/bind" "$W/ro" || return 1
    mnt -t tmpfs -o size=1g xt-tmpfs "$W/tmpfs" || return 1
    mnt -t tmpfs -o size=1m xt-small "$W/small" || return 1
    EXT4_KIND=ext4
    local why=""
    if [[ $XT_REAL_ROOT != 1 ]]; then
        why="not root"
    elif ! command -v mkfs.ext4 >/dev/null; then
        why="mkfs.ext4 not installed"
    elif ! truncate -s 512M "$W/ext4.img" || ! why=$(mkfs.ext4 -q -F -I 256 "$W/ext4.img" 2>&1); then
        why="mkfs.ext4 failed: $why"
    elif ! why=$(mount -o loop "$W/ext4.img" "$W/ext4" 2>&1); then
        why="loop mount failed: $why"
    else
        MOUNTS+=("$W/ext4")
        why=""
    fi
    if [[ -n $why ]]; then
        EXT4_KIND="dir on $(stat -f -c %T "$W")"
        if [[ -z ${EXT4_NOTED:-} ]]; then
            echo "note: no ext4 loop mount ($why); XT_EXT4 is a directory on the work dir's filesystem ($EXT4_KIND)"
            EXT4_NOTED=1
        fi
    fi
    mkdir "$W/ext4/bind_d" "$W/ext4/ro_d" || return 1
    mnt --bind "$W/ext4/bind_d" "$W/bind" || return 1
    mnt --bind "$W/ext4/ro_d" "$W/ro" || return 1
    mount -o bind,remount,ro "$W/ro" || return 1
}

only=${1:-}
[[ $# -gt 0 ]] && shift
for src in "$HERE"/*.c; do
    name=$(basename "$src" .c)
    [[ -n $only && $name != "$only" ]] && continue
    [[ -x $OUT/$name ]] || continue # failed to build, already counted
    echo "# $name"
    if ! setup_mounts; then
        cleanup
        if [[ $CI == true ]]; then
            echo "FAIL $name: could not set up its mounts"
            failed=$((failed + 1))
        else
            echo "skip $name: could not set up its mounts (see above)"
            skipped=$((skipped + 1))
        fi
        continue
    fi
    log=$W/output
    (
        cd "$W" || exit 1
        unset XRENAME_LOG XRENAME_DISABLE
        export XT_TMPFS=$W/tmpfs XT_EXT4=$W/ext4 XT_EXT4_KIND=$EXT4_KIND \
            XT_SMALL=$W/small XT_BIND_SRC=$W/ext4/bind_d XT_BIND_DST=$W/bind \
            XT_RO_SRC=$W/ext4/ro_d XT_RO=$W/ro XT_LIB=$LIB XT_LIBDIR=$OUT \
            XT_REAL_ROOT XT_WORK=$W
        timeout -k 5 170 env LD_PRELOAD="$LIB" "$OUT/$name" "$@"
    ) >"$log"
    rc=$?
    cat "$log"
    p=$(grep -c '^ok ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    s=$(grep -c '^skip ' "$log")
    if [[ $CI == true && $s -gt 0 ]]; then
        echo "FAIL $name: $s test(s) skipped, which is not allowed when CI=true"
        f=$((f + s))
        s=0
    fi
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        echo "FAIL $name: program exited with status $rc$([[ $rc -eq 124 ]] && echo ' (timed out)')"
        f=1
    fi
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
    cleanup
done

summary "$passed" "$failed" "$skipped"
