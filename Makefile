# xrename: `make demo` builds and shows a cross-device move; `make test` runs
# every test suite (Rust, C, Python), installing what they need first.

LIB := target/release/libxrename.so

.PHONY: build demo deps test bench install wheel deb

build:
	cargo build --release

demo:
	bash scripts/demo.sh

deps:
	bash scripts/deps.sh

# Every suite runs even when an earlier one fails; the target fails if any did.
test: deps build
	@status=0; \
	echo "== Rust"; cargo test --release --workspace || status=1; \
	echo "== C"; bash c-tests/run.sh || status=1; \
	echo "== Python"; bash python-tests/run.sh || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: a suite failed"; fi; \
	exit $$status

# Benchmarks (not part of the tests): ratios against mv, mv+sync, shutil.move.
bench:
	python3 bench/bench.py $(BENCH_ARGS)

# Installs bin/xrename and lib/xrename/libxrename.so under PREFIX.
PREFIX ?= /usr/local
install: build
	install -D -m 755 target/release/xrename $(DESTDIR)$(PREFIX)/bin/xrename
	install -D -m 644 target/release/libxrename.so $(DESTDIR)$(PREFIX)/lib/xrename/libxrename.so

# The Python wheel (maturin): target/wheels/xrename-*.whl, with the command
# and the library; `pip install` it anywhere with a new enough glibc.
wheel:
	bash scripts/wheel.sh

# The Debian package (dpkg-deb): target/deb/xrename_*.deb.
deb:
	bash scripts/deb.sh
