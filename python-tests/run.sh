#!/usr/bin/env bash
# Run the xrename Python test suite inside a private mount namespace so the
# tmpfs / loop-ext4 / bind mounts the fixtures create never leak to the host.
#
#   bash python-tests/run.sh            # whole suite
#   bash python-tests/run.sh -q -k log  # any pytest arguments pass through
#
# As root: `unshare -m --propagation private` (all cases run, loop ext4 etc.).
# Not root: `unshare -Urm` (user + mount namespace; root-only cases skip,
# unless CI=true, where every missing privilege is a failure).
#
# The library must already be built: `cargo build --release` in the repo root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

if [ "$(id -u)" -eq 0 ]; then
    exec unshare -m --propagation private -- "$python" -m pytest -c "$here/pytest.ini" --rootdir "$here" "$here" "$@"
else
    exec unshare -Urm -- "$python" -m pytest -c "$here/pytest.ini" --rootdir "$here" "$here" "$@"
fi
