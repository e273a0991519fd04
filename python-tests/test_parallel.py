"""Trees moved by several threads (issue 15): the files of each directory
are copied and the old source deleted by a small crew of threads
(engine::pool). The result must be what one thread makes, and the crew must
never outlive the call, run the program's signal handlers, or survive a
failure or a cancelled caller.

A C program (built once) reports the thread count of the process before and
after its rename(), where its SIGALRM handler ran, and what a cancelled
caller left behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oracle_harness import python_for
from test_trace import searchable_for_all
from tree_harness import leftovers
from xrename_harness import LIBRARY, PRIVILEGED, REPO_ROOT, child_env, need

PROGRAM = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static int tasks(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    if (d)
        closedir(d);
    return n;
}

/* The threads of the process once every joined thread has left the kernel:
   pthread_join returns when a thread's tid is cleared, a moment before its
   task is released, so a joined thread can still be listed. A thread that
   was not joined (left behind) never leaves; one that was leaves within
   microseconds. Bounded: at most 100,000 looks. */
static int settled_tasks(void) {
    int n = tasks();
    for (int i = 0; n > 1 && i < 100000; i++) {
        sched_yield();
        n = tasks();
    }
    return n;
}

static volatile sig_atomic_t handled, elsewhere;
static void on_alarm(int sig) {
    (void)sig;
    handled++;
    if (syscall(SYS_gettid) != getpid())
        elsewhere++;
}

static const char *src, *dst;
static volatile int started;
static void *mover(void *arg) {
    (void)arg;
    started = 1;
    int r = rename(src, dst);
    int e = r == 0 ? 0 : errno;
    pthread_testcancel(); /* the cancel, pending during the move, acts here */
    return (void *)(long)e;
}

/* parallel MODE SRC DST, MODE one of:
   plain:   "<errno> <tasks before> <tasks after>"
   signals: the same, a SIGALRM every 100 us meanwhile, then
            "<handled> <handled on another thread>"
   cancel:  rename on a thread the main thread cancels at once:
            "<joined as cancelled> <tasks after>" */
int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    src = argv[2];
    dst = argv[3];
    if (!strcmp(argv[1], "cancel")) {
        pthread_t t;
        pthread_create(&t, NULL, mover, NULL);
        while (!started)
            ;
        pthread_cancel(t);
        void *ret;
        pthread_join(t, &ret);
        printf("%d %d\n", ret == PTHREAD_CANCELED, settled_tasks());
        return 0;
    }
    int signals = !strcmp(argv[1], "signals");
    if (signals) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGALRM, &sa, NULL);
        struct itimerval it = {{0, 100}, {0, 100}};
        setitimer(ITIMER_REAL, &it, NULL);
    }
    int before = tasks();
    int r = rename(src, dst);
    int e = r == 0 ? 0 : errno;
    int after = settled_tasks();
    if (signals) {
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        printf("%d %d %d %d %d\n", e, before, after, (int)handled, (int)elsewhere);
    } else {
        printf("%d %d %d\n", e, before, after);
    }
    return 0;
}
'''


def program() -> Path:
    digest = hashlib.sha256(PROGRAM.encode()).hexdigest()[:16]
    out = REPO_ROOT / "target" / "fault-child" / f"parallel-{digest}"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        c = out.with_suffix(".c")
        c.write_text(PROGRAM)
        tmp = out.parent / f".parallel-{digest}.{os.getpid()}"
        r = subprocess.run([shutil.which("cc") or "gcc", "-O2", "-Wall", "-pthread", "-o", str(tmp), str(c)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        os.replace(tmp, out)
    return out


def run(mode: str, src: Path, dst: Path, threads: int | None = None, strace_to: Path | None = None) -> list[int]:
    env = child_env({"XRENAME_THREADS": str(threads)} if threads else None)
    argv = [str(program()), mode, str(src), str(dst)]
    if strace_to is not None:
        argv = ["strace", "-f", "-qq", "-e", "trace=clone,clone3", "-o", str(strace_to),
                "-E", f"LD_PRELOAD={env.pop('LD_PRELOAD')}", "--", *argv]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return [int(x) for x in p.stdout.split()]


DIRS, PER_DIR = 3, 300
MODES = [0o600, 0o644, 0o755, 0o444, 0o640]


def make_tree(root: Path, seed: int = 15) -> None:
    rng = random.Random(seed)
    for d in range(DIRS):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(PER_DIR):
            f = sub / f"f{i:03}"
            f.write_bytes(rng.randbytes(rng.choice([0, 1, 100, 4096, 70000])))
            os.chmod(f, MODES[i % len(MODES)] | (0o4000 if i % 97 == 0 and os.geteuid() == 0 else 0))
            if i % 50 == 0:
                os.setxattr(f, "user.n", str(i).encode())
            if i % 61 == 0 and os.geteuid() == 0:
                os.chown(f, 1000 + i, 2000 + d)
        # Hard links within a directory and across directories.
        os.link(sub / "f001", sub / "link-same-dir")
        if d > 0:
            os.link(root / "d0" / "f002", sub / "link-other-dir")
        os.symlink("f003", sub / "sym")
        os.mkfifo(sub / "fifo")
        (sub / "empty-dir").mkdir()
    # Times set, children first: two trees made alike compare equal.
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, ns=(1_000_000_000, 2_000_000_000 + len(p.parts)), follow_symlinks=False)


def snapshot(root: Path) -> dict:
    """Everything that must survive the move, by relative path; inodes as
    groups of names (which names share an inode)."""
    out, inodes = {}, {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        size = None if p.is_dir() and not p.is_symlink() else st.st_size  # a directory's differs by filesystem
        entry = (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns)
        if p.is_symlink():
            entry += (os.readlink(p),)
        elif p.is_file():
            entry += (hashlib.sha256(p.read_bytes()).hexdigest(), dict(
                (n, os.getxattr(p, n, follow_symlinks=False)) for n in os.listxattr(p, follow_symlinks=False)))
        out[rel] = entry
        if not p.is_dir():
            inodes.setdefault(st.st_ino, []).append(rel)
    out["<links>"] = sorted(sorted(names) for names in inodes.values() if len(names) > 1)
    return out


def threads_made(trace: Path) -> int:
    return sum("CLONE_THREAD" in line for line in trace.read_text().splitlines())


def test_a_tree_moved_by_several_threads_is_what_one_thread_makes(tmpfs, ext4, tmp_path):
    need(shutil.which("strace") is not None, "strace missing")
    need(len(os.sched_getaffinity(0)) >= 2, "one CPU: no worker threads")
    make_tree(tmpfs / "a")
    make_tree(tmpfs / "b")
    want = snapshot(tmpfs / "a")
    assert snapshot(tmpfs / "b") == want
    one, many = tmp_path / "one.trace", tmp_path / "many.trace"
    assert run("plain", tmpfs / "a", ext4 / "a", threads=1, strace_to=one) == [0, 1, 1]
    assert run("plain", tmpfs / "b", ext4 / "b", strace_to=many) == [0, 1, 1]
    assert threads_made(one) == 0, "XRENAME_THREADS=1 must make no thread"
    assert threads_made(many) >= 1, "a 900-file tree on 2+ CPUs must be copied by a crew"
    assert not (tmpfs / "a").exists() and not (tmpfs / "b").exists()
    assert snapshot(ext4 / "a") == want
    assert snapshot(ext4 / "b") == want


def make_wide_tree(root: Path) -> None:
    """Many directories whose files the crew copies while the walk goes on
    (a directory is left to the crew and completed later): hard links to
    names in earlier and in later directories and one level down, special
    files and symlinks (made by name, by whoever completes the directory),
    read-only directories, files at every level."""
    rng = random.Random(7)
    dirs = [root / f"w{d:02}" for d in range(24)]
    for d, sub in enumerate(dirs):
        (sub / "deeper").mkdir(parents=True)
        for i in range(40):
            (sub / f"f{i:02}").write_bytes(rng.randbytes(rng.choice([0, 10, 5000])))
        (sub / "deeper" / "g").write_bytes(rng.randbytes(100))
        os.symlink(f"f{d % 40:02}", sub / "sym")
        os.mkfifo(sub / "fifo")
    for d, sub in enumerate(dirs):
        os.link(dirs[(d + 5) % len(dirs)] / "f03", sub / "to-later-or-earlier")
        os.link(sub / "deeper" / "g", sub / "to-deeper")
    (root / "top").write_bytes(b"top")
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(p, ns=(1_000_000_000, 3_000_000_000 + len(p.parts)), follow_symlinks=False)
    for sub in dirs[::3]:
        os.chmod(sub / "deeper", 0o555)
        os.chmod(sub, 0o555)


def test_directories_copied_at_once_are_what_one_thread_makes(tmpfs, ext4):
    """The walk leaves a directory whose files are still being copied and
    completes it later (its hard links, special files, metadata): the
    result is what one thread makes, name for name and link for link."""
    need(len(os.sched_getaffinity(0)) >= 2, "one CPU: no worker threads")
    make_wide_tree(tmpfs / "a")
    make_wide_tree(tmpfs / "b")
    want = snapshot(tmpfs / "a")
    assert snapshot(tmpfs / "b") == want
    assert run("plain", tmpfs / "a", ext4 / "a", threads=1) == [0, 1, 1]
    assert run("plain", tmpfs / "b", ext4 / "b", threads=8) == [0, 1, 1]
    assert not (tmpfs / "a").exists() and not (tmpfs / "b").exists()
    assert snapshot(ext4 / "a") == want
    assert snapshot(ext4 / "b") == want


def as_nobody(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("threads", [1, None])
def test_a_hard_link_is_copied_before_the_subdirectory_holding_its_other_name(tmpfs, ext4, threads):
    """A file with two names, one in a directory and one in its
    subdirectory, whose mode lets only others in (0007, another owner's):
    the name in the directory is copied first, before the subdirectory gets
    that mode, so the name inside links to it. Taken after the
    subdirectory, its link had to reach a name through the subdirectory's
    final mode: EACCES and a temp left behind (session 8, before this fix)."""
    need(PRIVILEGED and shutil.which("setpriv") is not None, "needs root (chown to other users) and setpriv")
    src = tmpfs / "src"
    (src / "P" / "sub").mkdir(parents=True)
    (src / "P" / "x").write_text("hello")
    os.link(src / "P" / "x", src / "P" / "sub" / "y")
    for d in (tmpfs, ext4):
        os.chown(d, 65534, 65534)
    for p in [src, *src.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    os.chown(src / "P" / "sub", 1000, 1000)
    os.chmod(src / "P" / "sub", 0o007)
    env = child_env({"XRENAME_THREADS": str(threads)} if threads else None)
    with searchable_for_all(tmpfs, ext4):
        p = as_nobody([python_for(65534), "-c", "import os,sys; os.rename(sys.argv[1], sys.argv[2])",
                       str(src), str(ext4 / "dst")], env)
    assert p.returncode == 0, p.stderr
    assert not src.exists()
    dst = ext4 / "dst" / "P"
    assert (dst / "x").read_text() == "hello"
    sub = os.stat(dst / "sub")
    assert (sub.st_mode & 0o7777, sub.st_uid) == (0o007, 65534)  # as mv by that user: its own
    assert os.stat(dst / "sub" / "y").st_ino == os.stat(dst / "x").st_ino
    # (The old source may stay at a hidden name: its copy's 0007 directory,
    # now the mover's own, shuts the mover out of comparing with it.)
    assert not leftovers(ext4)


def test_a_failed_tree_move_removes_copied_directories_that_shut_their_owner_out(tmpfs, ext4):
    """Directories of mode 0007 (another owner's: others may do anything)
    are copied as the mover's own, with that mode, before a file the mover
    cannot read fails the move. Removing the copy must open them up first:
    the temp was left at the destination before (session 8's review)."""
    need(PRIVILEGED and shutil.which("setpriv") is not None, "needs root (chown to other users) and setpriv")
    src = tmpfs / "src"
    for d in ("a1", "b", "a2"):  # b between the others, whatever the listing order
        (src / d).mkdir(parents=True)
        (src / d / "x").write_text(d)
    (src / "b" / "z").write_text("secret")
    for d in (tmpfs, ext4):
        os.chown(d, 65534, 65534)
    for p in [src, *src.rglob("*")]:
        os.chown(p, 65534, 65534, follow_symlinks=False)
    for d in ("a1", "a2"):
        os.chown(src / d, 1000, 1000)
        os.chmod(src / d, 0o007)
    os.chown(src / "b" / "z", 1000, 1000)
    os.chmod(src / "b" / "z", 0o600)
    with searchable_for_all(tmpfs, ext4):
        p = as_nobody([python_for(65534), "-c", "import os,sys\ntry: os.rename(sys.argv[1], sys.argv[2])\n"
                       "except OSError as e: print(e.errno)", str(src), str(ext4 / "dst")],
                      child_env({"XRENAME_THREADS": "1"}))
    assert p.stdout.strip() == str(errno.EACCES), (p.stdout, p.stderr)
    assert sorted(os.listdir(src)) == ["a1", "a2", "b"] and (src / "b" / "z").read_text() == "secret"
    assert not (ext4 / "dst").exists()
    assert not leftovers(ext4)


def test_no_thread_outlives_a_failed_parallel_copy_and_nothing_changes(tmpfs, small_tmpfs):
    """A destination that fills up in the middle of the crew's copy: the
    program gets ENOSPC, the source is as it was, no temp is left, and the
    process has the one thread it had."""
    make_tree(tmpfs / "t")  # about 8 MB: more than the 1 MiB tmpfs holds
    before = snapshot(tmpfs / "t")
    errno_, tasks_before, tasks_after = run("plain", tmpfs / "t", small_tmpfs / "t")
    assert errno_ == 28  # ENOSPC
    assert (tasks_before, tasks_after) == (1, 1)
    assert snapshot(tmpfs / "t") == before
    assert os.listdir(small_tmpfs) == []


def test_no_thread_outlives_a_move_refused_for_a_writer(tmpfs, ext4):
    """A file of the tree held open for writing: found by the probe after
    the install, the copy is withdrawn (EXDEV); the crews of the copy and of
    nothing else are gone."""
    make_tree(tmpfs / "t")
    before = snapshot(tmpfs / "t")
    with open(tmpfs / "t" / "d2" / "f299", "r+b"):
        errno_, tasks_before, tasks_after = run("plain", tmpfs / "t", ext4 / "t")
    assert errno_ == 18  # EXDEV
    assert (tasks_before, tasks_after) == (1, 1)
    assert snapshot(tmpfs / "t") == before
    assert sorted(os.listdir(ext4)) == ["lost+found"] or os.listdir(ext4) == []


def test_the_programs_signal_handlers_never_run_on_the_crew(tmpfs, ext4):
    """SIGALRM every 100 us during a tree move: every handler runs on the
    program's own thread (the crew blocks signals), and the move is whole."""
    need(len(os.sched_getaffinity(0)) >= 2, "one CPU: no worker threads")
    make_tree(tmpfs / "t")
    want = snapshot(tmpfs / "t")
    errno_, before, after, handled, elsewhere = run("signals", tmpfs / "t", ext4 / "t")
    assert errno_ == 0 and (before, after) == (1, 1)
    assert handled > 0, "the timer never fired: the test proves nothing"
    assert elsewhere == 0, f"{elsewhere} of {handled} SIGALRM handlers ran on another thread"
    assert snapshot(ext4 / "t") == want


@pytest.mark.parametrize("round_", range(3))
def test_cancelling_the_caller_leaves_no_thread_and_no_half_move(tmpfs, ext4, round_):
    """pthread_cancel of the thread calling rename, as it starts: the move
    runs to its end with cancellation disabled (or never starts), the crew
    is joined, and the tree is whole at exactly one of its two names."""
    make_tree(tmpfs / "t", seed=round_)
    want = snapshot(tmpfs / "t")
    cancelled, tasks = run("cancel", tmpfs / "t", ext4 / "t")
    assert cancelled == 1, "the caller was not cancelled: the test proves nothing"
    assert tasks == 1, f"{tasks} threads after the cancelled caller was joined"
    at_src, at_dst = (tmpfs / "t").exists(), (ext4 / "t").exists()
    assert at_src != at_dst, (at_src, at_dst)
    assert snapshot(tmpfs / "t" if at_src else ext4 / "t") == want
    assert [n for n in os.listdir(ext4) if n.startswith(".xrename")] == []
    assert [n for n in os.listdir(tmpfs) if n.startswith(".xrename")] == []


LEASE_PROGRAM = r'''
import errno, os, sys, threading, time
src, dst, keep = sys.argv[1:4]
stop = False
kids = []
def forker():
    # Forks that never exec, from another thread, all through the move: a
    # descriptor of the move's open in the program's table when one forks
    # would be inherited (and keep its open file, and a lease on it, alive).
    while not stop:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
t = threading.Thread(target=forker)
t.start()
while not kids:
    time.sleep(0)
try:
    os.rename(src, dst)
    result = "ok"
finally:
    stop = True
    t.join()
blocked = 0
for n in os.listdir(keep):
    try:
        os.close(os.open(os.path.join(keep, n), os.O_WRONLY | os.O_NONBLOCK))
    except BlockingIOError:
        blocked += 1
# Leases on the moved files (whoever holds them: a lease the probe's child
# left would carry its pid), not on anything else running on the machine:
# "N: LEASE ACTIVE TYPE PID MAJ:MIN:INO ..."
def where(st):
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
moved = {where(os.stat(os.path.join(keep, n))) for n in os.listdir(keep)}
leases = sum(1 for line in open("/proc/locks") if line.split()[1:2] == ["LEASE"] and line.split()[5] in moved)
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
print(result, len(kids), blocked, leases)
'''


def two_small_dirs(src: Path) -> None:
    """`src` with d0 and d1, three small files each (f0-f2, holding "d0" + i)."""
    for d in ("d0", "d1"):
        (src / d).mkdir(parents=True)
        for i in range(3):
            (src / d / f"f{i}").write_text(f"{d}{i}")


def test_a_file_renamed_within_the_tree_before_the_probe_reaches_it_fails_the_move(tmpfs, ext4, tmp_path):
    """The writer probe hands a batch of names (up to 1,024, listed before)
    to its child, which opens them. A log rotated meanwhile by a writer
    holding it (renamed within the taken tree, through a working directory
    there) is gone from the name the probe has: its writes would go on at a
    name the probe may never look at, while the program is told the move
    happened (the deletion keeps the renamed file, split from its copy).
    The move must fail (EXDEV), everything back at the source, the writer's
    file whole. The mover is stopped (strace SIGSTOP) once the probe's walk
    has listed the last directory, before its child is made (found in a
    first run of the same move), then the file is renamed."""
    need(shutil.which("strace") is not None, "strace missing")
    import fault_harness as fh
    from test_data_round2 import Mover, stop_spec
    src = tmpfs / "t"
    two_small_dirs(src)
    child = fh.build_child()
    fh.age(tmpfs)
    calib = Mover(child, src, ext4 / "t", tmp_path / "calibrate.trace")
    out = calib.finish()
    assert out.kind == "ok", out.describe()
    calls = fh.parse_trace(calib.trace())
    me = fh.main_tid(calls)
    root = next(i for i, c in enumerate(calls) if c.tid == me and c.name == "openat"
                and ".xrename-src-" in c.text and "O_DIRECTORY" in c.text)
    # The probe's child opens the files (another process); the walk's last
    # listing before it (d1's, read whole when entered) is where to stop.
    child_opens = next(i for i, c in enumerate(calls) if i > root and c.tid != me and c.name == "openat")
    listed = [c for c in calls[root:child_opens] if c.tid == me and c.name == "getdents64"][-1]
    # Back as it was, for the move that is stopped.
    shutil.rmtree(ext4 / "t")
    two_small_dirs(src)
    fh.age(tmpfs)
    m = Mover(child, src, ext4 / "t", tmp_path / "stop.trace", (stop_spec(listed),))
    writer = None
    try:
        assert m.wait_stopped(), m.finish().describe()
        taken = [n for n in os.listdir(tmpfs) if n.startswith(".xrename-src-")]
        assert len(taken) == 1, os.listdir(tmpfs)
        d1 = tmpfs / taken[0] / "d1"
        writer = open(d1 / "f1", "a")
        os.rename(d1 / "f1", d1 / "f1.1")
        m.cont()
        out = m.finish()
    finally:
        m.kill()
    try:
        writer.write("after the rotation")
        writer.flush()
        assert out.kind == "error" and out.errno == 18, out.describe()  # EXDEV
        assert os.fstat(writer.fileno()).st_nlink == 1, "the rotated file was deleted under its writer"
        assert (src / "d1" / "f1.1").read_text() == "d11after the rotation"
        assert sorted(os.listdir(src / "d1")) == ["f0", "f1.1", "f2"]
        assert sorted(os.listdir(ext4)) in ([], ["lost+found"])
    finally:
        writer.close()


def test_a_fork_during_the_writer_probe_inherits_no_descriptor_and_no_lease(tmpfs, ext4):
    """The writer probe takes read leases on every file of the taken tree.
    Another thread of the program forks (without exec) all through the
    move: a child may inherit the probe's descriptors, but never a lease (a
    lease that outlives the probe makes every open for writing of the file
    wait 45 s, lease-break-time): each lease is dropped as soon as it was
    granted."""
    src, keep = tmpfs / "t", tmpfs / "keep"
    keep.mkdir()
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(300):
            (src / f"d{d}" / f"f{i}").write_text("x")
            os.link(src / f"d{d}" / f"f{i}", keep / f"d{d}f{i}")
    p = subprocess.run([sys.executable, "-c", LEASE_PROGRAM, str(src), str(ext4 / "t"), str(keep)],
                       capture_output=True, text=True, env=child_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    result, forks, blocked, leases = p.stdout.split()
    assert result == "ok" and int(forks) > 0, p.stdout
    assert int(blocked) == 0, f"{blocked} of 1200 files stayed leased after the move"
    assert int(leases) == 0, f"{leases} leases left in /proc/locks"


@pytest.mark.parametrize("error", ["EIO", "ENOSPC"])
def test_an_error_of_early_writeback_fails_the_move(tmpfs, ext4, tmp_path, error):
    """A big file's copy waits for the data written back a window (64 MiB)
    ago: that wait reports the file's writeback error and marks it seen for
    the descriptor, so the final fsync would return 0 over lost data. The
    error of the wait must fail the move: the program gets it, the source
    stays, no temp is left. (Injected with strace: from the 10th
    sync_file_range on, which is the first wait of a 96 MiB copy; the
    earlier ones only start writeback, and their errors are advice.)"""
    need(shutil.which("strace") is not None, "strace missing")
    import fault_harness as fh
    src = tmpfs / "big"
    with open(src, "wb") as f:
        block = random.Random(3).randbytes(1 << 20)
        for _ in range(96):
            f.write(block)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    env = child_env()
    trace = tmp_path / "trace"
    p = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=sync_file_range,fsync",
                        "-e", f"inject=sync_file_range:error={error}:when=10+",
                        "-E", f"LD_PRELOAD={env.pop('LD_PRELOAD')}", "--", str(fh.build_child()), str(src),
                        str(ext4 / "big")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    errno_, preloaded = p.stdout.split()
    assert preloaded == "1"
    text = trace.read_text()
    assert "(INJECTED)" in text and "SYNC_FILE_RANGE_WAIT_AFTER" in text, "no wait was injected: proves nothing"
    assert int(errno_) == {"EIO": 5, "ENOSPC": 28}[error], p.stdout
    assert hashlib.sha256(src.read_bytes()).hexdigest() == want
    assert sorted(os.listdir(ext4)) in ([], ["lost+found"])


def test_a_copy_withdrawn_from_an_overlay_with_layers_on_two_filesystems_leaves_nothing(mounts, tmpfs, ext4, tmp_path):
    """An overlay whose lower layer is on a tmpfs and upper on ext4
    (xino=off) gives its directories its own device and its files the upper
    filesystem's. The identities of the files of a batch that were not
    looked at come from the listing; their device must be the files' own,
    or the withdrawal of the copy (an open writer found after the install)
    takes them for someone else's and leaves them at the destination."""
    lower, upper, work, merged = tmpfs / "lower", ext4 / "upper", ext4 / "work", tmp_path / "merged"
    for d in (lower, upper, work, merged):
        d.mkdir()
    mounts.mount(["-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work},xino=off", "xr-ovl"],
                 merged, "overlayfs with xino=off")
    src = tmpfs / "t"
    (src / "d").mkdir(parents=True)
    for i in range(100):
        (src / "d" / f"f{i}").write_bytes(b"x" * i)
    before = snapshot(src)
    with open(src / "d" / "f50", "ab"):
        errno_, _, after = run("plain", src, merged / "t")
    assert errno_ == 18 and after == 1  # EXDEV: a writer
    assert snapshot(src) == before
    assert not (merged / "t").exists(), sorted(str(p) for p in (merged / "t").rglob("*"))[:10]
    assert [n for n in os.listdir(merged) if n.startswith(".xrename")] == []


LOCK_PROGRAM = r'''
import fcntl, os, sys
path, src, dst = sys.argv[1:4]
fd = os.open(path, os.O_RDONLY)
fcntl.lockf(fd, fcntl.LOCK_SH)
try:
    os.rename(src, dst)
    print(0)
except OSError as e:
    print(e.errno)
# Still held? Another process cannot take a write lock while it is.
r, w = os.pipe()
if os.fork() == 0:
    other = os.open(path if os.path.exists(path) else os.path.join(dst, os.path.relpath(path, src)), os.O_RDWR)
    try:
        fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(w, b"free")
    except OSError:
        os.write(w, b"held")
    os._exit(0)
os.wait()
print(os.read(r, 4).decode())
'''


@pytest.mark.parametrize("what", ["file", "tree"])
def test_a_record_lock_of_the_program_on_the_source_is_never_dropped(tmpfs, ext4, what):
    """Closing any descriptor of a file drops every POSIX record lock the
    process holds on it; the kernel's rename never does. A file the program
    holds such a lock on is never opened by the move (as a file it holds a
    lease on): EXDEV, the lock still held, nothing changed."""
    make_tree(tmpfs / "t")
    src = tmpfs / "t" if what == "tree" else tmpfs / "t" / "d0" / "f005"
    locked = tmpfs / "t" / "d0" / "f005"
    before = snapshot(tmpfs / "t")
    p = subprocess.run([sys.executable, "-c", LOCK_PROGRAM, str(locked), str(src), str(ext4 / "moved")],
                       capture_output=True, text=True, env=child_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    errno_, state = p.stdout.split()
    assert errno_ == "18", p.stdout  # EXDEV
    assert state == "held", "the program's record lock was dropped"
    assert snapshot(tmpfs / "t") == before
    assert sorted(os.listdir(ext4)) in ([], ["lost+found"])


def test_an_error_of_the_background_flush_fails_the_tree_move(tmpfs, ext4, tmp_path):
    """While a big tree is copied, a thread of the crew writes back the
    destination filesystem over and over (syncfs), so that the one barrier
    before the install has little left. An error it meets must fail the
    move, even if the final barrier (another descriptor, another call) does
    not see it again: injected EIO from the second syncfs of any thread on
    (the caller makes only one, the final barrier: not injected)."""
    need(shutil.which("strace") is not None, "strace missing")
    need(len(os.sched_getaffinity(0)) >= 2, "one CPU: no worker threads, no background flush")
    import fault_harness as fh
    make_tree(tmpfs / "t")
    before = snapshot(tmpfs / "t")
    trace = tmp_path / "trace"
    env = child_env()
    p = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=syncfs",
                        "-e", "inject=syncfs:error=EIO:when=2+",
                        "-E", f"LD_PRELOAD={env.pop('LD_PRELOAD')}", "--", str(fh.build_child()), str(tmpfs / "t"),
                        str(ext4 / "t")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "(INJECTED)" in trace.read_text(), "the background flush never ran twice: the test proves nothing"
    assert p.stdout.split()[0] == "5", p.stdout  # EIO
    assert snapshot(tmpfs / "t") == before
    assert sorted(os.listdir(ext4)) in ([], ["lost+found"])


def test_a_directory_renamed_during_the_writer_probe_fails_the_move(tmpfs, ext4, tmp_path, mounts):
    """The writer probe walks the taken tree; a directory listed in it but
    gone from its name when the probe reaches it was renamed (perhaps to a
    place already walked, perhaps back again before the deletion): its
    files would go unprobed, and one held open for writing be deleted under
    its writer. The move must fail (EXDEV) and the file must survive. The
    mover is stopped (strace SIGSTOP) on the call just before the probe
    opens the directory, which is then renamed. (The probe walks by name
    only where the copy could not keep every file's descriptor: here a
    descriptor limit of 128 keeps none.)"""
    need(shutil.which("strace") is not None, "strace missing")
    import fault_harness as fh
    from test_data_round2 import Mover, stop_spec
    src = tmpfs / "t"
    two_small_dirs(src)
    writer = open(src / "d1" / "f1", "ab")
    try:
        child = fh.build_child()
        fh.age(tmpfs)
        calib = Mover(child, src, ext4 / "t", tmp_path / "calibrate.trace", nofile=128)
        out = calib.finish()
        assert out.kind == "error" and out.errno == 18, out.describe()  # the writer: EXDEV
        calls = fh.parse_trace(calib.trace())
        me = fh.main_tid(calls)
        mine = [c for c in calls if c.tid == me]
        root = next(i for i, c in enumerate(mine) if c.name == "openat" and ".xrename-src-" in c.text
                    and "O_DIRECTORY" in c.text)
        d1 = next(i for i, c in enumerate(mine) if i > root and c.name == "openat" and '"d1"' in c.text)
        before = mine[d1 - 1]
        m = Mover(child, src, ext4 / "t", tmp_path / "stop.trace", (stop_spec(before),), nofile=128)
        try:
            assert m.wait_stopped(), m.finish().describe()
            taken = [n for n in os.listdir(tmpfs) if n.startswith(".xrename-src-")]
            assert len(taken) == 1, os.listdir(tmpfs)
            os.rename(tmpfs / taken[0] / "d1", tmpfs / taken[0] / "moved")
            m.cont()
            out = m.finish()
        finally:
            m.kill()
        assert out.kind == "error" and out.errno == 18, out.describe()
        os.fstat(writer.fileno())  # still open
        assert os.fstat(writer.fileno()).st_nlink == 1, "the file held open for writing was deleted"
        assert (src / "moved" / "f1").read_text() == "d11"
        assert sorted(os.listdir(ext4)) in ([], ["lost+found"])
    finally:
        writer.close()


def withdrawn_while(tmpfs: Path, ext4: Path, tmp_path: Path, act) -> "fh.Outcome":
    """Moves a small tree whose d1/f1 is held open for writing (so the move
    ends in EXDEV and the installed copy is withdrawn), with the mover
    stopped (strace SIGSTOP) right after the install, at the rename that
    takes the source from its name, while `act(installed copy)` runs."""
    import fault_harness as fh
    from test_data_round2 import Mover, stop_spec
    src = tmpfs / "t"
    two_small_dirs(src)
    with open(src / "d1" / "f1", "ab"):
        child = fh.build_child()
        fh.age(tmpfs)
        calib = Mover(child, src, ext4 / "t", tmp_path / "calibrate.trace")
        out = calib.finish()
        assert out.kind == "error" and out.errno == 18, out.describe()
        calls = fh.parse_trace(calib.trace())
        mine = [c for c in calls if c.tid == fh.main_tid(calls)]
        take = next(c for c in mine if c.name == "renameat2" and ".xrename-src-" in c.text)
        m = Mover(child, src, ext4 / "t", tmp_path / "stop.trace", (stop_spec(take),))
        try:
            assert m.wait_stopped(), m.finish().describe()
            assert (ext4 / "t" / "d0").is_dir(), "not stopped after the install"
            act(ext4 / "t")
            m.cont()
            return m.finish()
        finally:
            m.kill()


def relative_listing(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def test_a_withdrawal_keeps_directories_others_made_in_the_installed_copy(tmpfs, ext4, tmp_path, mounts):
    """Directories someone made in the installed tree between its install
    and its withdrawal are theirs, empty or not: only directories xrename
    made are removed."""
    def act(t: Path) -> None:
        (t / "mine" / "sub").mkdir(parents=True)
        (t / "d0" / "mine2").mkdir()
    out = withdrawn_while(tmpfs, ext4, tmp_path, act)
    assert out.kind == "error" and out.errno == 18, out.describe()
    assert relative_listing(ext4 / "t") == ["d0", "d0/mine2", "mine", "mine/sub"]


def test_a_withdrawal_never_enters_a_bind_mount_in_the_installed_copy(tmpfs, ext4, tmp_path, mounts):
    """A bind mount of another directory of the same filesystem placed in
    the installed tree: the withdrawal must not enter it (a different device
    is not the only sign of a mount)."""
    user = ext4 / "userdata"
    (user / "a").mkdir(parents=True)
    (user / "b" / "c").mkdir(parents=True)
    (user / "file").write_text("mine")
    bound: list[Path] = []

    def act(t: Path) -> None:
        (t / "mnt").mkdir()
        subprocess.run(["mount", "--bind", str(user), str(t / "mnt")], check=True)
        bound.append(t / "mnt")
    try:
        out = withdrawn_while(tmpfs, ext4, tmp_path, act)
    finally:
        for p in bound:
            subprocess.run(["umount", str(p)], capture_output=True)
    assert out.kind == "error" and out.errno == 18, out.describe()
    assert relative_listing(user) == ["a", "b", "b/c", "file"]


DEEP_UNDER_A_SMALL_LIMIT = r'''
import json, os, resource, sys
src, dst = sys.argv[1], sys.argv[2]
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
try:
    os.rename(src, dst)
    print(json.dumps({"ok": True}))
except OSError as e:
    print(json.dumps({"ok": False, "errno": e.errno}))
'''


def test_a_deep_tree_is_deleted_whole_under_a_small_descriptor_limit(tmpfs, ext4, tmp_path):
    """300 levels of 8 files each, moved by a program limited to 64
    descriptors (the crew still gets a worker). The deletion hands each
    directory's files to the crew and must take them back before going
    deeper: jobs waiting on the crew hold their directory open, and one
    level after another kept open that way ran the walk out of descriptors
    (session 10's hostile review: the move said 0 and left hundreds of
    entries of the source at `.xrename-src-*`)."""
    src, dst = tmpfs / "deep", ext4 / "deep"
    p = src
    for _ in range(300):
        p.mkdir()
        for j in range(8):
            (p / f"h{j}").write_text("z")
        p = p / "c"
    log = tmp_path / "log"
    env = child_env({"XRENAME_LOG": str(log)})
    proc = subprocess.run([sys.executable, "-c", DEEP_UNDER_A_SMALL_LIMIT, str(src), str(dst)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"ok": True}, proc
    assert os.listdir(tmpfs) == [], f"left in the source directory: {os.listdir(tmpfs)}; log: {log.read_text()}"
    assert "leftover" not in log.read_text()
    assert sum(1 for _ in dst.rglob("h*")) == 2400
