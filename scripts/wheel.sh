#!/usr/bin/env bash
# make wheel: builds target/wheels/xrename-*.whl with the command and the
# library. The platform tag is honest: manylinux_2_X where 2.X is the
# newest GLIBC_ symbol version the command or the library needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v maturin >/dev/null 2>&1; then
    python3 -m pip install --quiet "maturin>=1.5,<2"
fi
cargo build --release
cp target/release/libxrename.so python/xrename/libxrename.so
newest=$(for f in target/release/xrename target/release/libxrename.so; do
             objdump -T "$f" | grep -o 'GLIBC_2\.[0-9]*' ; done | sort -uV | tail -1)
minor=${newest#GLIBC_2.}
rm -f target/wheels/xrename-*.whl
maturin build --release --strip --compatibility "manylinux_2_${minor}" --out target/wheels "$@"
ls target/wheels/xrename-*.whl
