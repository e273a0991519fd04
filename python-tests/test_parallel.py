"""Trees moved by several threads (issue 15): the files of each directory
are copied and the old source deleted by a small crew of threads
(engine::pool). The result must be what one thread makes, and the crew must
never outlive the call, run the program's signal handlers, or survive a
failure or a cancelled caller.

A C program (built once) reports the thread count of the process before and
after its rename(), where its SIGALRM handler ran, and what a cancelled
caller left behind."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from xrename_harness import LIBRARY, REPO_ROOT, child_env, need

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
