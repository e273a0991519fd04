#!/usr/bin/env bash
# Builds libxrename.so and shows a cross-device os.rename failing without it
# and succeeding with it, on a private tmpfs that exists only for this demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=$root/target/release/libxrename.so

if [ -z "${XRENAME_DEMO_INSIDE:-}" ]; then
    cargo build --release --manifest-path "$root/Cargo.toml" --quiet
    if [ "$(id -u)" -eq 0 ]; then ns=(unshare -m --propagation private); else ns=(unshare -Urm); fi
    exec env XRENAME_DEMO_INSIDE=1 "${ns[@]}" bash "$0"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/xrename-demo.XXXXXX")
trap 'umount "$work/other" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/other"
mount -t tmpfs xrename-demo "$work/other"
echo "payload" > "$work/a"

move='import os, sys; os.rename(sys.argv[1], sys.argv[2]); print("moved:", open(sys.argv[2]).read().strip())'
echo "\$ python3 -c 'os.rename(...)'   # $work/a -> tmpfs, without xrename"
python3 -c "$move" "$work/a" "$work/other/a" 2>&1 | tail -1 || true
echo
echo "\$ LD_PRELOAD=$lib XRENAME_LOG=stderr python3 -c 'os.rename(...)'"
LD_PRELOAD=$lib XRENAME_LOG=stderr python3 -c "$move" "$work/a" "$work/other/a"
test ! -e "$work/a" && echo "source is gone; destination is complete"

echo
echo "\$ xrename --log - -- python3 -c 'os.rename(...)'   # traced: also reaches static, musl and Go programs"
echo "payload 2" > "$work/b"
"$root/target/release/xrename" --log - -- python3 -c "$move" "$work/b" "$work/other/b"
