#!/usr/bin/env bash
# make deb: builds target/deb/xrename_<version>_<arch>.deb with dpkg-deb:
#   /usr/bin/xrename
#   /usr/lib/<multiarch>/xrename/libxrename.so   (stripped by the release profile)
#   /usr/share/man/man1/xrename*.1.gz, /usr/share/man/man7/libxrename.7.gz
#   bash, zsh and fish completions, /usr/share/doc/xrename/{README.md.gz,copyright}
# Man pages and completions are written by the command just built, from the
# definitions its --help prints. Depends: the libc6 whose newest GLIBC_
# symbol version either binary needs, and libgcc-s1 (unwinding).
set -euo pipefail
cd "$(dirname "$0")/.."
# Reproducible: file times and the changelog date from the last commit.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
cargo build --release
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
glibc=$(for f in target/release/xrename target/release/libxrename.so; do
            objdump -T "$f" | grep -o 'GLIBC_2\.[0-9]*'; done | sort -uV | tail -1)
glibc=${glibc#GLIBC_}
stage=target/deb/stage
rm -rf target/deb
install -D -m 755 target/release/xrename "$stage/usr/bin/xrename"
install -D -m 644 target/release/libxrename.so "$stage/usr/lib/$multiarch/xrename/libxrename.so"
man=$(mktemp -d)
target/release/xrename man "$man"
install -d "$stage/usr/share/man/man1" "$stage/usr/share/man/man7"
for page in "$man"/*.1; do gzip -9n < "$page" > "$stage/usr/share/man/man1/$(basename "$page").gz"; done
gzip -9n < "$man/libxrename.7" > "$stage/usr/share/man/man7/libxrename.7.gz"
rm -rf "$man"
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
    "$stage/usr/share/fish/vendor_completions.d"
target/release/xrename completions bash > "$stage/usr/share/bash-completion/completions/xrename"
target/release/xrename completions zsh > "$stage/usr/share/zsh/vendor-completions/_xrename"
target/release/xrename completions fish > "$stage/usr/share/fish/vendor_completions.d/xrename.fish"
install -d "$stage/usr/share/doc/xrename"
gzip -9n < README.md > "$stage/usr/share/doc/xrename/README.md.gz"
cat > "$stage/usr/share/doc/xrename/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xrename

Files: *
Copyright: the xrename developers
License: Expat or Apache-2.0

License: Expat
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf 'xrename (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- xrename developers <xrename-dev@users.noreply.github.com>  %s\n' \
    "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo source)" "$changelog_date" |
    gzip -9n > "$stage/usr/share/doc/xrename/changelog.gz"
size=$(du -sk "$stage/usr" | cut -f1)
install -d "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: xrename
Version: $version
Architecture: $arch
Maintainer: xrename developers <xrename-dev@users.noreply.github.com>
Depends: libc6 (>= $glibc), libgcc-s1
Section: utils
Priority: optional
Installed-Size: $size
Description: make rename(2) work across filesystems
 xrename turns the EXDEV ("Invalid cross-device link") that rename(2) gives
 across filesystems, bind mounts and overlayfs layers into a durable, atomic
 move: the xrename command runs programs with every such rename handled
 (traced, or with the preloaded library, whose path "xrename lib" prints).
CONTROL
(cd "$stage" && find usr -type f -exec md5sum {} + > DEBIAN/md5sums)
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="target/deb/xrename_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
