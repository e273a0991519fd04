#!/usr/bin/env python3
"""xrename benchmarks (`make bench`). Not part of the tests.

Contenders run in alternation (A B C A B C ...) within one run; each result
is the median with min-max over the rounds, and the ratio to a baseline.
Noise on shared machines is large: read the ratios, not the absolute times.
Everything happens in a private mount namespace on filesystems made here: a
tmpfs, and ext4 in a loop-mounted image (a directory on the disk when loop
devices are not available).
"""
import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "target", "release", "libxrename.so")
XRENAME = os.path.join(ROOT, "target", "release", "xrename")
BIN = os.path.join(ROOT, "target", "bench")


def reexec_in_namespace():
    if os.environ.get("XRENAME_BENCH_NS"):
        return
    ns = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    env = dict(os.environ, XRENAME_BENCH_NS="1")
    os.execvpe(ns[0], ns + [sys.executable] + sys.argv, env)


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(BIN, exist_ok=True)
    for name in ("fastpath", "rename1", "peakrss"):
        subprocess.run(["cc", "-O2", "-o", os.path.join(BIN, name), os.path.join(ROOT, "bench", name + ".c")], check=True)


# Inode tables and journal written by mkfs, not by a kernel thread in the
# background while the first rounds are measured (ext4lazyinit).
NO_LAZY_INIT = "lazy_itable_init=0,lazy_journal_init=0"


def ext4_in_ram(work, size):
    """An ext4 whose loop image lives in RAM (a tmpfs of its own): the same
    filesystem code, without the disk's write-back time. Shows what a
    durable move costs in software, apart from what the disk costs."""
    ram = os.path.join(work, "ramimg")
    os.mkdir(ram)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + (256 << 20)}", "benchimg", ram], check=True)
    img = os.path.join(ram, "ext4.img")
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", NO_LAZY_INIT, img], check=True)
    mnt = os.path.join(work, "ext4ram")
    os.mkdir(mnt)
    subprocess.run(["mount", "-o", "loop", img, mnt], check=True, stderr=subprocess.DEVNULL)
    return mnt


def mounts(work, ext4_size):
    tmpfs = os.path.join(work, "tmpfs")
    os.mkdir(tmpfs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "bench", tmpfs], check=True)
    ext4 = os.path.join(work, "ext4")
    os.mkdir(ext4)
    img = os.path.join(work, "ext4.img")
    kind = "ext4 (loop image)"
    try:
        with open(img, "wb") as f:
            f.truncate(ext4_size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", NO_LAZY_INIT, img], check=True)
        subprocess.run(["mount", "-o", "loop", img, ext4], check=True, stderr=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, OSError):
        kind = "disk directory (no loop device)"
    return tmpfs, ext4, kind


def run(argv, env=None):
    """Runs argv; returns (seconds, peak RSS in KiB of the command)."""
    rss_file = os.path.join(BIN, "rss")
    t0 = time.perf_counter()
    p = subprocess.run([os.path.join(BIN, "peakrss"), rss_file] + argv, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {argv}")
    with open(rss_file) as f:
        return dt, int(f.read())


def preload(extra=None):
    return dict(os.environ, LD_PRELOAD=LIB, **(extra or {}))


# Another build of the library to compare with (XRENAME_BENCH_BASELINE=path
# to its libxrename.so), e.g. the previous commit's: shows what a change costs.
BASELINE = os.environ.get("XRENAME_BENCH_BASELINE")


def movers(src, dst, tree=False):
    """The contenders for one cross-device move of src to dst (a tree: also
    xrename with one thread, to show what the crew of threads gives)."""
    sync_dir = os.path.dirname(dst)
    base = {"xrename@baseline": lambda: run([os.path.join(BIN, "rename1"), src, dst],
                                            dict(os.environ, LD_PRELOAD=BASELINE))} if BASELINE else {}
    return base | {
        "xrename": lambda: run([os.path.join(BIN, "rename1"), src, dst], preload()),
        "xrename-nofsync": lambda: run([os.path.join(BIN, "rename1"), src, dst], preload({"XRENAME_FSYNC": "0"})),
    } | ({
        "xrename 1 thread": lambda: run([os.path.join(BIN, "rename1"), src, dst], preload({"XRENAME_THREADS": "1"})),
    } if tree else {}) | {
        "xrename --trace": lambda: run([XRENAME, "--trace", "--", os.path.join(BIN, "rename1"), src, dst]),
        "mv+sync": lambda: (lambda a, b: (a[0] + b[0], max(a[1], b[1])))(run(["mv", src, dst]), run(["sync", "-f", sync_dir])),
        "mv": lambda: run(["mv", src, dst]),
        "shutil.move": lambda: run([sys.executable, "-c", "import shutil,sys; shutil.move(sys.argv[1], sys.argv[2])", src, dst]),
    }


def alternate(rounds, names, prepare, contenders, cleanup):
    times = {n: [] for n in names}
    rss = {n: 0 for n in names}
    for _ in range(rounds):
        for n in names:
            prepare()
            # Start every contender with nothing dirty: otherwise whoever syncs
            # pays for the writes the previous contenders left unsynced.
            os.sync()
            dt, peak = contenders()[n]()
            times[n].append(dt)
            rss[n] = max(rss[n], peak)
            cleanup()
    return times, rss


def report(title, times, base, rss=None, unit=1.0, fmt="{:.3f} s"):
    print(f"\n## {title}")
    mv = "mv" in times and base != "mv"
    print(f"| contender | median | min-max | ratio to {base} |" + (" ratio to mv |" if mv else "")
          + (" peak RSS |" if rss else ""))
    print("|---|---|---|---|" + ("---|" if mv else "") + ("---|" if rss else ""))
    bmed = statistics.median(times[base])
    for n, ts in times.items():
        med = statistics.median(ts)
        row = f"| {n} | {fmt.format(med * unit)} | {fmt.format(min(ts) * unit)} - {fmt.format(max(ts) * unit)} | {med / bmed:.2f} |"
        if mv:
            row += f" {med / statistics.median(times['mv']):.2f} |"
        if rss:
            row += f" {rss[n] / 1024:.1f} MiB |"
        print(row)
    sys.stdout.flush()


def bench_fastpath(tmpfs, calls, rounds):
    d = os.path.join(tmpfs, "fast")
    os.mkdir(d)
    for fn in ("rename", "renameat", "renameat2"):
        times = {"bare": [], "xrename": []}
        for _ in range(rounds):
            for n, env in (("bare", None), ("xrename", preload())):
                out = subprocess.run([os.path.join(BIN, "fastpath"), d, str(calls), fn], env=env, check=True,
                                     capture_output=True, text=True).stdout
                times[n].append(float(out) / 1e9)
        report(f"fast path: {calls:,} same-filesystem {fn}() calls on tmpfs, time per call", times, "bare",
               unit=1e9, fmt="{:.0f} ns")


def bench_trace(tmpfs, rounds):
    """What the supervisor costs a program: per rename (every rename stops,
    not only the cross-device ones), per call that is not a rename (the
    seccomp filter alone), and per fork+exec (each new process is
    followed)."""
    d = os.path.join(tmpfs, "trace")
    os.mkdir(d)
    fast = os.path.join(BIN, "fastpath")
    for label, n, fn in (("same-filesystem rename() calls", 20_000, "rename"),
                         ("getppid() calls (not renames)", 1_000_000, "getppid"),
                         ("open+fstat+read+close rounds (not renames)", 250_000, "mix")):
        times = {"bare": [], "traced": []}
        for _ in range(rounds):
            for name, prefix in (("bare", []), ("traced", [XRENAME, "--trace", "--"])):
                out = subprocess.run(prefix + [fast, d, str(n), fn], check=True, capture_output=True, text=True).stdout
                times[name].append(float(out.split()[-1]) / 1e9)
        report(f"--trace: {n:,} {label} on tmpfs, time per call", times, "bare", unit=1e9, fmt="{:.0f} ns")
    times = {"bare": [], "traced": []}
    loop = ["sh", "-c", "i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done"]
    for _ in range(rounds):
        for name, prefix in (("bare", []), ("traced", [XRENAME, "--trace", "--"])):
            t0 = time.perf_counter()
            subprocess.run(prefix + loop, check=True)
            times[name].append(time.perf_counter() - t0)
    report("--trace: 500 fork+exec of /bin/true from sh", times, "bare")


def write_file(path, size, sparse_data=None):
    with open(path, "wb") as f:
        if sparse_data is None:
            block = random.Random(1).randbytes(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        else:
            f.truncate(size)
            f.write(random.Random(2).randbytes(sparse_data))


def bench_file(a, b, size, rounds, label, sparse_data=None):
    src, dst = os.path.join(a, "big"), os.path.join(b, "big")
    names = list(movers(src, dst))
    if sparse_data is not None:
        names.remove("shutil.move")  # writes every zero: >100x slower, not worth the minutes
    times, rss = alternate(rounds, names, lambda: write_file(src, size, sparse_data), lambda: movers(src, dst),
                           lambda: os.path.exists(dst) and os.unlink(dst))
    report(label, times, "mv+sync", rss)
    print(f"xrename peak RSS over an idle preloaded rename1: +{(rss['xrename'] - idle_rss()) / 1024:.1f} MiB")


def idle_rss():
    """Peak RSS of rename1 preloaded doing a same-filesystem rename (no EXDEV)."""
    d = tempfile.mkdtemp(dir=BIN)
    open(os.path.join(d, "a"), "w").close()
    rss = run([os.path.join(BIN, "rename1"), os.path.join(d, "a"), os.path.join(d, "b")], preload())[1]
    shutil.rmtree(d)
    return rss


def make_tree(root, dirs, files_per_dir, size_of):
    rnd = random.Random(3)
    os.mkdir(root)
    for i in range(dirs):
        d = os.path.join(root, f"d{i:04}")
        os.mkdir(d)
        for j in range(files_per_dir):
            with open(os.path.join(d, f"f{j:05}"), "wb") as f:
                f.write(rnd.randbytes(size_of(rnd)))


def bench_tree(a, b, dirs, per_dir, size_of, rounds, label):
    src, dst = os.path.join(a, "tree"), os.path.join(b, "tree")
    names = [n for n in movers(src, dst, tree=True) if n != "shutil.move"] + ["shutil.move"]
    times, rss = alternate(rounds, names, lambda: make_tree(src, dirs, per_dir, size_of),
                           lambda: movers(src, dst, tree=True),
                           lambda: shutil.rmtree(dst))
    report(label, times, "mv+sync", rss)
    print(f"xrename peak RSS over an idle preloaded rename1: +{(rss['xrename'] - idle_rss()) / 1024:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    ap.add_argument("--only", choices=["fastpath", "trace", "file", "sparse", "tree"], action="append")
    args = ap.parse_args()
    reexec_in_namespace()
    build()
    q = args.quick
    only = set(args.only or ["fastpath", "trace", "file", "sparse", "tree"])
    work = tempfile.mkdtemp(prefix="xrename-bench.", dir="/var/tmp")
    try:
        tmpfs, ext4, kind = mounts(work, (3 << 30) if not q else (1 << 30))
        print(f"# xrename benchmarks\nmachine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; "
              f"filesystems: tmpfs and {kind}")
        if "fastpath" in only:
            bench_fastpath(tmpfs, 100_000 if q else 1_000_000, 3 if q else 5)
        if "trace" in only:
            bench_trace(tmpfs, 3)
        size = (64 << 20) if q else (1 << 30)
        rounds = 2 if q else 3
        if "file" in only:
            bench_file(tmpfs, ext4, size, rounds, f"one {size >> 20} MiB file, tmpfs -> ext4")
            bench_file(ext4, tmpfs, size, rounds, f"one {size >> 20} MiB file, ext4 -> tmpfs")
            try:
                ram = ext4_in_ram(work, 2 * size + (256 << 20))
            except (subprocess.CalledProcessError, OSError) as e:
                print(f"\n(ext4 with its image in RAM not available: {e})")
            else:
                bench_file(tmpfs, ram, size, rounds, f"one {size >> 20} MiB file, tmpfs -> ext4 whose image is in RAM")
        if "sparse" in only:
            bench_file(tmpfs, ext4, size, rounds, f"sparse file, {size >> 20} MiB apparent, 1 MiB data, tmpfs -> ext4",
                       sparse_data=1 << 20)
        if "tree" in only:
            # Five rounds: a 10,000-file move takes under a second, and its
            # times vary by 20 % from one run to the next on a shared machine.
            bench_tree(tmpfs, ext4, 100, 10 if q else 100, lambda r: 4096, rounds if q else 5,
                       f"tree: {100 * (10 if q else 100):,} files of 4 KiB in 100 directories, tmpfs -> ext4")
            bench_tree(tmpfs, ext4, 100 if q else 1000, 100, lambda r: r.randrange(1025), rounds,
                       f"tree: {(100 if q else 1000) * 100:,} files of 0-1 KiB, tmpfs -> ext4")
    finally:
        for m in ("tmpfs", "ext4", "ext4ram", "ramimg"):
            subprocess.run(["umount", os.path.join(work, m)], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
