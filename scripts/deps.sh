#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine: the tools the
# C and Python suites call (strace, setfacl, setfattr, mkfs.ext4, unshare,
# setpriv, cc, bindfs, fuse2fs, fakeroot, fakechroot, eatmydata, faketime; go and
# musl-gcc to build the programs the supervisor tests run; man, objdump and
# dpkg-deb for the packaging tests; git, perl, node and java, the real programs
# test_real_programs.py runs), pytest, and maturin (to build the wheel). Does
# nothing for what is already there.
set -euo pipefail

need=()
for pair in strace:strace setfacl:acl setfattr:attr mkfs.ext4:e2fsprogs unshare:util-linux \
            setpriv:util-linux cc:gcc make:make chattr:e2fsprogs python3:python3 setcap:libcap2-bin \
            bindfs:bindfs fuse2fs:fuse2fs fakeroot:fakeroot fakechroot:fakechroot eatmydata:eatmydata faketime:faketime \
            go:golang-go musl-gcc:musl-tools man:man-db objdump:binutils dpkg-deb:dpkg \
            dpkg-architecture:dpkg-dev mkfs.xfs:xfsprogs xfs_io:xfsprogs mkfs.btrfs:btrfs-progs \
            git:git perl:perl node:nodejs java:default-jre-headless; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# Static glibc (cc -static) for the supervisor's test programs.
[ -e "/usr/lib/$(uname -m)-linux-gnu/libc.a" ] || need+=(libc6-dev)
if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing packages ${need[*]}; install them as root" >&2
        exit 1
    fi
    echo "deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! python3 -c 'import pytest' 2>/dev/null; then
    echo "deps: installing pytest"
    # A distribution's own python may refuse pip (PEP 668): then its package.
    python3 -m pip install -q pytest 2>/dev/null ||
        python3 -m pip install -q --break-system-packages pytest 2>/dev/null ||
        { [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pytest >/dev/null; } ||
        true
    python3 -c 'import pytest'
fi
if ! command -v maturin >/dev/null 2>&1; then
    echo "deps: installing maturin"
    python3 -m pip install -q "maturin>=1.5,<2" 2>/dev/null ||
        python3 -m pip install -q --break-system-packages "maturin>=1.5,<2"
    command -v maturin >/dev/null
fi
