"""Fail closed, round 3: what a hostile review of issue 11 found.

Each test names the finding it covers; each failed on the main it was
written against.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import chroot_without_proc
from tree_harness import diff_listings, listing, make_chain
from xrename_harness import (
    CHILD_TIMEOUT_S, LIBRARY, PRIVILEGED, child_env, entries, need, run_child,
)


def acl_text(path) -> str:
    proc = subprocess.run(["getfacl", "-c", "-p", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def need_acl_tools():
    need(shutil.which("setfacl") is not None and shutil.which("getfacl") is not None, "acl tools missing")


# --------------------------------------------------------------------------
# A log write past RLIMIT_FSIZE never kills the program (SIGXFSZ)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["file", "stderr"])
def test_a_log_past_the_file_size_limit_is_skipped_and_never_kills_the_program(fs_pair, tmp_path, target):
    """`mv` (which, unlike Python, does not ignore SIGXFSZ) under a file size
    limit of 2 KiB, logging to a 5000-byte file (or to stderr redirected
    there): the move is done, mv exits 0, and the log is left as it was
    rather than written past the limit."""
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"small file\n")
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * 5000)
    env = child_env({"XRENAME_LOG": str(log) if target == "file" else "stderr"})
    with open(log, "ab") as err:
        proc = subprocess.run(["sh", "-c", 'ulimit -f 4 && exec mv "$0" "$1"', str(src), str(dst)],
                              stderr=err if target == "stderr" else subprocess.PIPE, env=env,
                              timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, f"mv died or failed: status {proc.returncode} (153 = SIGXFSZ)"
    assert dst.read_bytes() == b"small file\n" and not src.exists()
    assert log.stat().st_size == 5000, "the log was written past RLIMIT_FSIZE"


# --------------------------------------------------------------------------
# A program that holds a write lease on its own source is never made to wait
# for itself
# --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["few-descriptors", "from-another-thread", "300-descriptors", "fdinfo-refused",
                                  "descriptor-gone"])
def test_a_program_holding_a_write_lease_on_its_source_gets_exdev_without_waiting_for_itself(fs_pair, tmp_path, case):
    """The program holds F_SETLEASE(F_WRLCK) on the file it renames across
    devices. Opening it to copy starts a break of the program's own lease;
    waiting for it would last lease-break-time (45 s) and then break it.
    The kernel's rename ignores leases; a copy cannot: EXDEV at once,
    nothing changed, and the program keeps running.

    The program's leases are read from /proc/thread-self/fdinfo, the file
    of each descriptor that is a regular file (not of its inotify instance,
    whose fdinfo lists every watch, nor of its pipe), while it has few
    open, and never from /proc/locks (whose reading takes the kernel's lock
    table for writing: an RCU grace period, 5-12 ms for a move in a fresh
    process); also when another thread than the lease holder renames; with
    300 more open, where the fdinfo directory cannot be opened (EACCES
    injected: a sandbox), or where the leased descriptor is gone when its
    turn comes (ENOENT injected into the look at its link: closed, or
    renumbered with dup2 and its lease gone with it), from /proc/locks
    once. The lease is found each way (the strace of the move says which
    was read)."""
    p = fs_pair
    src, dst = p.src_dir / "leased", p.dst_dir / "leased"
    src.write_bytes(b"leased by the program itself\n")
    body = """
import fcntl, signal
breaks = []
signal.signal(signal.SIGIO, lambda *a: breaks.append(1))  # a lease holder handles its break signal
import ctypes, threading
others = [os.open("/dev/null", os.O_RDONLY) for _ in range(ARGS["open_fds"])]
libc = ctypes.CDLL(None, use_errno=True)
watches = libc.inotify_init1(os.O_CLOEXEC)
assert libc.inotify_add_watch(watches, ARGS["src"].encode(), 0x2) >= 0  # IN_MODIFY
pipe = os.pipe()
fd = os.open(ARGS["src"], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
if ARGS["thread"]:
    t = threading.Thread(target=lambda: RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"])))
    t.start()
    t.join()
else:
    RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
RESULTS.append({"ok": True, "breaks": len(breaks), "lease": fcntl.fcntl(fd, fcntl.F_GETLEASE),
                "leased": fd, "not_files": [watches, *pipe]})
"""
    trace = tmp_path / "strace.txt"
    open_fds = 300 if case == "300-descriptors" else 0
    # (-P: only the calls on that path are traced, and refused.)
    refuse = ("-e", "inject=open,openat:error=EACCES", "-P", "/proc/thread-self/fdinfo") if case == "fdinfo-refused" else ()
    args = {"src": str(src), "dst": str(dst), "open_fds": open_fds, "thread": case == "from-another-thread"}
    if case == "descriptor-gone":
        # Which readlinkat of the program looks at the leased descriptor's
        # link (a first run; the program is single-threaded and does the
        # same calls again).
        first = run_child(body, args, strace_to=trace)
        leased = first.results[1]["leased"]
        looks = [line for line in trace.read_text().splitlines() if "readlinkat(" in line]
        nth = next(i for i, line in enumerate(looks, 1) if f'"../fd/{leased}"' in line)
        refuse = ("-e", f"inject=readlinkat:error=ENOENT:when={nth}")
    run = run_child(body, args, strace_to=trace, strace_args=refuse)
    moved, after = run.results
    # Waiting for itself, the move would end after lease-break-time with
    # the lease broken, and succeed: EXDEV is what shows it did not wait.
    assert not moved["ok"] and moved["errname"] == "EXDEV", moved
    # And the file was never opened: no break started, the lease intact.
    import fcntl
    assert after["breaks"] == 0, "the move started a break of the program's own lease (SIGIO)"
    assert after["lease"] == fcntl.F_WRLCK, f"the program's lease is now {after['lease']}, not F_WRLCK"
    assert src.read_bytes() == b"leased by the program itself\n" and not dst.exists()
    assert entries(p.dst_dir) == set()
    calls = trace.read_text()
    if case == "fdinfo-refused":
        # The lease was found, so from /proc/locks: the fdinfo directory was refused.
        assert "fdinfo" in calls and "(INJECTED)" in calls, calls
    else:
        assert "/fdinfo" in calls
        from_locks = case in ("300-descriptors", "descriptor-gone")
        assert ("/proc/locks" in calls) == from_locks, "the leases were read from the wrong place"
    if case == "descriptor-gone":
        assert re.search(r'readlinkat\(\d+, "\.\./fd/\d+", .*ENOENT.*\(INJECTED\)', calls), calls
    if case in ("few-descriptors", "from-another-thread"):
        # Read by number, relative to the fdinfo directory.
        fdinfo_read = lambda n: re.search(rf'openat\(\d+, "{n}", O_RDONLY', calls) is not None
        assert fdinfo_read(after["leased"]), calls
        assert not any(fdinfo_read(n) for n in after["not_files"]), "fdinfo of a descriptor that is no file was read"


# --------------------------------------------------------------------------
# ACLs are never dropped: nodes without /proc, and xattr calls a policy refuses
# --------------------------------------------------------------------------

def test_a_fifo_with_an_acl_moved_in_a_chroot_without_proc_keeps_its_acl(mounts, tmp_path):
    """A FIFO with an ACL that denies its owning group (`group::---`, a
    named user with rw-) is moved by Python in a chroot that has no /proc.
    Its attributes are read and written by directory and name
    (listxattrat/getxattrat/setxattrat), never through /proc: the ACL
    arrives whole (dropping it would give the group the mask's rw-), or
    the move is refused."""
    need_acl_tools()
    root = chroot_without_proc(mounts, tmp_path)
    fifo = root / "a" / "fifo"
    os.mkfifo(fifo, 0o660)
    proc = subprocess.run(["setfacl", "-m", "g::---,u:65534:rw", str(fifo)], capture_output=True, text=True)
    need(proc.returncode == 0, f"setfacl: {proc.stderr.strip()}")
    before = acl_text(fifo)
    assert "user:65534:rw-" in before and "group::---" in before
    code = "import os\ntry:\n    os.rename('/a/fifo', '/b/fifo'); print('ok')\nexcept OSError as e:\n    print(e.errno)"
    run = subprocess.run(["chroot", str(root), "python3", "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=CHILD_TIMEOUT_S)
    assert run.returncode == 0, run.stderr
    if run.stdout.strip() == "ok":
        dst = root / "b" / "fifo"
        assert stat.S_ISFIFO(os.lstat(dst).st_mode) and not os.path.lexists(fifo)
        assert acl_text(dst) == before, f"the FIFO's ACL changed:\n{before}\n->\n{acl_text(dst)}"
    else:
        assert run.stdout.strip() == "18", run.stdout  # EXDEV, nothing changed
        assert acl_text(fifo) == before and not os.path.lexists(root / "b" / "fifo")


@pytest.mark.parametrize("deep", [6, 60])
def test_a_deep_tree_moves_under_a_descriptor_limit_of_20(fs_pair, deep):
    """RLIMIT_NOFILE 20 in the moving process and a tree 6 or 60 levels
    deep with files at every level: the walk reopens closed levels one at
    a time (never all of them at once), so the move succeeds."""
    p = fs_pair
    tree = p.src_dir / "tree"
    make_chain(tree, deep, 5 if deep > 10 else 40, prefix="l")
    before = listing(tree)
    body = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
"""
    run = run_child(body, {"src": str(tree), "dst": str(p.dst_dir / "tree")})
    assert run.result["ok"], run.result
    assert not os.path.lexists(tree) and entries(p.src_dir) == set()
    assert not diff_listings(before, listing(p.dst_dir / "tree"), ignore=("atime_ns",))
    assert entries(p.dst_dir) == {"tree"}


# --------------------------------------------------------------------------
# Data calls: only rename's meanings reach the program (issue 11, section 5)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call,error", [("pwrite64", "EPERM"), ("pwrite64", "EINVAL"), ("pwrite64", "EACCES"),
                                        ("pread64", "EIO"), ("pread64", "EPERM")])
def test_a_data_call_refused_on_the_read_write_path_gives_exdev_with_nothing_changed(fs_pair, tmp_path, call, error):
    """copy_file_range and sendfile refused by a policy (EPERM: the copy
    falls back to read/write), then the write refused (a policy's EPERM or
    EACCES, a filesystem's EINVAL: nothing rename(2) could mean) or the
    read failing (reading is nothing rename does, even EIO): the program
    gets EXDEV, the source is as it was, nothing is at the destination.
    (The write's EPERM and the read's EIO reached the program before.)"""
    need(shutil.which("strace") is not None, "strace missing")
    import fault_harness as fh
    from test_data_round2 import Mover
    src, dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    data = os.urandom(300_000)
    src.write_bytes(data)
    child = fh.build_child()
    refuse = ("copy_file_range:error=EPERM", "sendfile:error=EPERM")
    # Calibration: which of the mover's calls is the copy's first read or write.
    fh.age(fs_pair.src_dir)
    calib = Mover(child, src, dst, tmp_path / "calibrate.trace", refuse).finish()
    assert calib.kind == "ok", calib.describe()
    calls = fh.parse_trace(calib.trace)
    first, end = fh.move_window(calls)
    target = next(c for c in calls[first:end] if c.name == call)
    dst.unlink()
    src.write_bytes(data)
    fh.age(fs_pair.src_dir)
    injects = refuse + (f"{call}:error={error}:when={target.ordinal}",)
    out = Mover(child, src, dst, tmp_path / "move.trace", injects).finish()
    assert out.kind == "error" and out.errname == "EXDEV", out.describe()
    assert f"{call}(" in out.trace and f"= -1 {error}" in out.trace, "the injection did not land"
    assert src.read_bytes() == data
    assert entries(fs_pair.dst_dir) == set() and entries(fs_pair.src_dir) == {"f"}


def test_a_tree_file_swapped_for_a_symlink_after_the_listing_never_gives_eloop(fs_pair, tmp_path):
    """A file of the tree replaced by a symlink after the directory was
    listed as holding a regular file: the open (never following a symlink)
    fails with ELOOP, which is no errno of rename's for this. The tree
    changed: the move starts over (and moves the symlink as a symlink) or
    gives EXDEV; never ELOOP. (ELOOP reached the program before.) The mover
    is stopped (strace SIGSTOP) at its open of the first file it copies,
    and the last one it would copy becomes a symlink."""
    need(shutil.which("strace") is not None, "strace missing")
    import fault_harness as fh
    from test_data_round2 import Mover, stop_spec
    src, dst = fs_pair.src_dir / "t", fs_pair.dst_dir / "t"

    def reset():
        for p in (src, dst):
            shutil.rmtree(p, ignore_errors=True)
        src.mkdir()
        for i in range(10):
            (src / f"f{i}").write_text(f"file {i}")
        fh.age(fs_pair.src_dir)
    reset()
    child = fh.build_child()
    one = {"XRENAME_THREADS": "1"}  # the same first and last file in every run
    calib = Mover(child, src, dst, tmp_path / "calibrate.trace", env_extra=one).finish()
    assert calib.kind == "ok", calib.describe()
    calls = fh.parse_trace(calib.trace)
    first, end = fh.move_window(calls)
    opens = [c for c in calls[first:end] if c.name == "openat" and "O_NOATIME" in c.text and '"f' in c.text]
    assert opens, "calibration: the move opened no file of the tree"
    last = opens[-1].text.split('"')[1]
    target = "f4" if last != "f4" else "f3"
    reset()
    m = Mover(child, src, dst, tmp_path / "stop.trace", (stop_spec(opens[0]),), env_extra=one)
    try:
        assert m.wait_stopped(), m.finish().describe()
        os.unlink(src / last)
        os.symlink(target, src / last)
        m.cont()
        out = m.finish()
    finally:
        m.kill()
    assert out.kind == "ok" or (out.kind == "error" and out.errname == "EXDEV"), out.describe()
    if out.kind == "ok":
        assert os.readlink(dst / last) == target and (dst / target).read_text() == f"file {target[1]}"
        assert not src.exists()
    else:
        assert os.readlink(src / last) == target and not dst.exists()


NON_PIE_SOURCE = r'''
#include <stdio.h>
#include <sys/stat.h>
int (*volatile ren)(const char *, const char *) = rename;
int (*volatile st)(int, struct stat *) = fstat;
int main(int argc, char **argv) {
    if (ren(argv[1], argv[2]) != 0) { perror("rename"); return 1; }
    return st == 0;
}
'''


def test_a_program_built_without_pie_that_takes_the_address_of_rename_is_no_virtualiser(fs_pair, tmp_path):
    """A program linked without PIE that takes the address of `rename` and
    `fstat` makes its own PLT stubs their canonical addresses, which
    `dlsym(RTLD_DEFAULT)` then returns: that is no other library defining
    them. The move must happen (the preload stepped aside with EXDEV,
    naming the program itself as a virtualiser, before)."""
    need(shutil.which("cc") is not None, "cc missing")
    c = tmp_path / "nopie.c"
    c.write_text(NON_PIE_SOURCE)
    exe = tmp_path / "nopie"
    subprocess.run(["cc", "-O0", "-fno-pic", "-no-pie", "-o", str(exe), str(c)], check=True)
    src, dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    src.write_text("data")
    proc = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True,
                          env=child_env({"XRENAME_LOG": "stderr"}), timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert dst.read_text() == "data" and not src.exists()
