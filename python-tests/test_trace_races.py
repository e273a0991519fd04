"""`xrename --trace`: races between a traced process's death and the
supervisor's bookkeeping.

- A thread killed while a helper moves for it: its pid may be reused by a
  new process before the helper ends; the dead thread's answer must never
  reach that process (it would return from its own rename, told 0, before
  its own move is made).
- A process sandboxed with Landlock that dies while stopped at its fork
  event (its fork may never be reported to the supervisor): its child is
  sandboxed all the same, and its cross-device rename keeps the kernel's
  EXDEV.

Each is ordered by conditions read in /proc and by file leases (a helper
waits in open(2) on a source another process holds a write lease on until
that lease is released), never by sleeping.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_harness import XRENAME, describe, run, xrename_env
from test_trace import build_c
from xrename_harness import PRIVILEGED, entries, need

# argv: A_src A_dst B_src B_dst B_size. Run as the program of `xrename
# --trace`, as the first process of a new pid namespace with a small
# pid_max.
#
# 1. Takes a write lease on A_src and on B_src: a helper opening either
#    waits in open(2) until the lease is let go, and the lease break
#    signals this process (the signal carries the descriptor).
# 2. Forks A, which renames A_src -> A_dst across devices. A's lease break
#    means A's helper has started and waits on A_src: A is stopped at its
#    call's exit, waiting for the helper's answer. A is killed and reaped.
# 3. Forks trivial children until the pids wrap round to A's: that child
#    is B, and renames B_src -> B_dst. Its helper waits on B_src (B's lease
#    break): B is stopped at its call's exit.
# 4. A's lease is let go: A's helper ends. Once the supervisor has reaped
#    it and sleeps in wait4 again, B is either still waiting for its own
#    helper (as it must: "waited") or was resumed with A's answer
#    ("early"). B's own helper is let go only then (after B's report when
#    early), so an early answer is seen with B's move not even begun.
# B reports what its rename returned and, at that moment, whether B_src
# still exists and whether B_dst holds the whole file (B_size bytes of
# the pattern i % 251).
# Prints "A=<pid> B=<pid> answer=<early|waited> r=<ret> errno=<e>
# src=<0|1> dst_whole=<0|1>".
RECYCLE_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define POLLS 200000 /* x 100 us: a bound on each poll, not a clock */

static sigset_t leasesig;

static void die(int code, const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    fflush(stdout);
    _exit(code);
}

static int lease(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(10, "open for a lease");
    if (fcntl(fd, F_SETSIG, SIGRTMIN + 1)) die(10, "F_SETSIG");
    if (fcntl(fd, F_SETLEASE, F_WRLCK)) die(11, "F_SETLEASE");
    return fd;
}

/* Until a helper has started to break the lease on `fd`. */
static void wait_break(int fd) {
    siginfo_t si;
    for (;;) {
        if (sigwaitinfo(&leasesig, &si) < 0) {
            if (errno == EINTR) continue;
            die(12, "sigwaitinfo");
        }
        if (si.si_fd == fd) return;
    }
}

static int read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return (int)n;
}

/* The process state letter of /proc/PID/stat, 0 if gone. */
static char state_of(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_file(path, buf, sizeof buf) < 0) return 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

/* The one child of the supervisor that is not us: A's helper. */
static pid_t helper_of(pid_t sup) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", sup, sup);
    if (read_file(path, buf, sizeof buf) < 0) die(13, "read the supervisor's children");
    pid_t found = 0;
    int n = 0;
    for (char *t = strtok(buf, " \n"); t; t = strtok(0, " \n")) {
        pid_t c = atoi(t);
        if (c != getpid()) { found = c; n++; }
    }
    if (n != 1) { printf("error: the supervisor has %d children besides us: %s\n", n, buf); _exit(14); }
    return found;
}

/* Whether the supervisor sleeps in wait4 (61): it has handled every
   event so far. */
static int supervisor_idle(pid_t sup) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/syscall", sup);
    if (state_of(sup) != 'S' || read_file(path, buf, sizeof buf) < 0) return 0;
    return strncmp(buf, "61 ", 3) == 0;
}

static int whole(const char *path, long size) {
    static char buf[1 << 20];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    long got = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] != (got + i) % 251) { close(fd); return 0; }
        got += n;
    }
    close(fd);
    return n == 0 && got == size;
}

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    const char *as = argv[1], *ad = argv[2], *bs = argv[3], *bd = argv[4];
    long bsize = atol(argv[5]);
    setvbuf(stdout, 0, _IONBF, 0);
    sigemptyset(&leasesig);
    sigaddset(&leasesig, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &leasesig, 0);

    pid_t sup = getppid();
    char buf[4096];
    if (read_file("/proc/self/status", buf, sizeof buf) < 0) die(15, "status");
    char *tp = strstr(buf, "TracerPid:");
    if (!tp || atoi(tp + 10) != sup) { printf("error: not traced by our parent\n"); return 15; }
    if (read_file("/proc/sys/kernel/pid_max", buf, sizeof buf) < 0) die(15, "pid_max");
    long pid_max = atol(buf);

    int la = lease(as), lb = lease(bs);
    int report[2];
    if (pipe(report)) die(16, "pipe");

    /* After a wrap, pids start again at 300 (RESERVED_PIDS): A must be
       past it to be reused. */
    pid_t p;
    do {
        p = fork();
        if (p == 0) _exit(0);
        if (p < 0) die(17, "fork");
        waitpid(p, 0, 0);
    } while (p < 310);

    pid_t a = fork();
    if (a == 0) {
        syscall(SYS_rename, as, ad);
        _exit(0);
    }
    if (a < 0) die(17, "fork A");
    wait_break(la);
    pid_t ha = helper_of(sup);
    if (state_of(a) != 't') { printf("error: A is not stopped while its helper runs\n"); return 18; }
    kill(a, SIGKILL);
    waitpid(a, 0, 0);

    pid_t b = -1;
    for (long i = 0; i < 2 * pid_max + 1000 && b < 0; i++) {
        p = fork();
        if (p == 0) {
            if (getpid() != a) _exit(0);
            close(report[0]);
            long r = syscall(SYS_rename, bs, bd);
            int e = r == 0 ? 0 : errno;
            int src = access(bs, F_OK) == 0;
            int dst = whole(bd, bsize);
            dprintf(report[1], "r=%ld errno=%d src=%d dst_whole=%d\n", r, e, src, dst);
            _exit(0);
        }
        if (p < 0) die(17, "fork");
        if (p == a) b = p;
        else waitpid(p, 0, 0);
    }
    if (b < 0) { printf("error: pid %d was never reused\n", a); return 19; }
    close(report[1]);

    wait_break(lb);
    if (fcntl(la, F_SETLEASE, F_UNLCK)) die(11, "F_UNLCK A");
    int i;
    for (i = 0; i < POLLS && state_of(ha) != 0; i++) usleep(100);
    for (; i < POLLS && !supervisor_idle(sup); i++) usleep(100);
    if (i == POLLS) { printf("error: A's helper never ended\n"); return 20; }
    int early = state_of(b) != 't';
    char line[256] = "";
    if (early) {
        ssize_t n = read(report[0], line, sizeof line - 1);
        if (n > 0) line[n] = 0;
    }
    if (fcntl(lb, F_SETLEASE, F_UNLCK)) die(11, "F_UNLCK B");
    if (!early) {
        ssize_t n = read(report[0], line, sizeof line - 1);
        if (n > 0) line[n] = 0;
    }
    waitpid(b, 0, 0);
    printf("A=%d B=%d answer=%s %s", a, b, early ? "early" : "waited", line);
    return 0;
}
'''

# argv: SRC DST. Restricts itself with Landlock (a ruleset handling the
# making and removing of regular files, no rule: none may be made or
# removed anywhere) and starts a second thread that calls exit_group as
# soon as the main thread has a child (polling /proc/PID/task/TID/children).
# Prints "pid N", and once a line comes on stdin, forks: the process dies
# at once, while its main thread is stopped at its fork event (or before
# it reaches it). The child waits until its parent is gone, renames SRC ->
# DST (across devices) and prints 0 or the errno. Exit 99: Landlock
# unavailable.
LANDLOCK_ORPHAN_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static pid_t leader;
static volatile int watching;

static void *watch(void *arg) {
    (void)arg;
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", leader, leader);
    int fd = open(path, O_RDONLY);
    if (fd < 0) _exit(96);
    for (;;) {
        if (pread(fd, buf, sizeof buf, 0) > 0) _exit(0);
        watching = 1;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct landlock_ruleset_attr attr = {
        .handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_REMOVE_FILE,
    };
    int rs = syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_landlock_restrict_self, rs, 0)) {
        printf("landlock unavailable\n");
        return 99;
    }
    leader = getpid();
    pthread_t t;
    if (pthread_create(&t, 0, watch, 0)) return 97;
    while (!watching) sched_yield();
    printf("pid %d\n", leader);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 98;
    pid_t c = fork();
    if (c == 0) {
        while (getppid() == leader) sched_yield();
        long r = syscall(SYS_rename, argv[1], argv[2]);
        printf("%d\n", r == 0 ? 0 : errno);
        fflush(stdout);
        _exit(0);
    }
    for (;;) pause();
}
'''

PID_MAX = Path("/proc/sys/kernel/pid_max")
NS_PID_MAX = 1000  # inside the test's own pid namespace


def kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return m is not None and (int(m[1]), int(m[2])) >= (major, minor)


def pattern(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def test_races_a_dead_tracees_answer_never_reaches_the_process_that_takes_its_pid(fs_pair, tmp_path):
    """A is killed while its helper moves for it; B, a new process with
    A's pid, renames across devices while A's helper is still running.
    A's helper's answer must be dropped: B returns only with its own
    helper's answer, 0 with its source gone and its destination whole.
    (Before the fix B got A's 0 while its own move had not even begun.)
    The pids wrap inside a pid namespace of its own whose pid_max is 1000
    (pid_max is per pid namespace since Linux 6.14): the host's is never
    written."""
    need(PRIVILEGED, "needs root for a pid namespace, its pid_max and leases")
    need(shutil.which("unshare") is not None, "unshare missing")
    need(shutil.which("cc") is not None, "no C compiler")
    # Older kernels have one pid_max for all: writing it would change the host's.
    need(kernel_at_least(6, 14), f"pid_max per pid namespace needs Linux 6.14 (this is {platform.release()})")
    need(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
         "/proc/PID/task/TID/children missing (CONFIG_PROC_CHILDREN)")
    prog = build_c(tmp_path, "recycle", RECYCLE_PROG, ["cc", "-static"])
    p = fs_pair
    a_src, a_dst = p.src_dir / "a", p.dst_dir / "a"
    b_src, b_dst = p.src_dir / "b", p.dst_dir / "b"
    a_data, b_data = b"A's file\n" * 10_000, pattern(300_000)
    a_src.write_bytes(a_data)
    b_src.write_bytes(b_data)
    host_pid_max = PID_MAX.read_text()
    # sh stays pid 1 of the namespace (xrename is not its last command).
    script = f'echo {NS_PID_MAX} > /proc/sys/kernel/pid_max || exit 90; "$0" --trace -- "$@"; exit $?'
    try:
        proc = run(["unshare", "-m", "-p", "-f", "--mount-proc", "--propagation", "private",
                    "sh", "-c", script, XRENAME, prog, a_src, a_dst, b_src, b_dst, len(b_data)])
    finally:
        after = PID_MAX.read_text()
        if after != host_pid_max:
            PID_MAX.write_text(host_pid_max)
    assert after == host_pid_max, f"the host's pid_max changed ({host_pid_max.strip()} -> {after.strip()}): " \
                                  f"pid_max is not per pid namespace here; restored"
    need(proc.returncode != 90, f"cannot set pid_max in a pid namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, describe(proc)
    m = re.search(r"A=(\d+) B=(\d+) answer=(\w+) r=(-?\d+) errno=(\d+) src=(\d) dst_whole=(\d)", proc.stdout)
    assert m, describe(proc)
    a, b, answer, r, err, src_there, dst_whole = m.groups()
    assert a == b, f"test bug: B did not take A's pid: {proc.stdout}"
    assert answer == "waited" and (r, src_there, dst_whole) == ("0", "0", "1"), (
        f"B's rename returned {r} (errno {err}) with its source {'still there' if src_there == '1' else 'gone'} "
        f"and its destination {'whole' if dst_whole == '1' else 'not whole'}; B was answered {answer}: "
        f"the dead A's answer reached the process that took its pid\n{describe(proc)}")
    assert not b_src.exists() and b_dst.read_bytes() == b_data
    # A's helper went on after A's death: A's file is whole in one place.
    a_here = [q for q in (a_src, a_dst) if q.exists()]
    assert len(a_here) == 1 and a_here[0].read_bytes() == a_data, f"A's file: {a_here}"
    assert entries(p.src_dir) | entries(p.dst_dir) <= {"a", "b"}, (entries(p.src_dir), entries(p.dst_dir))


RUNS = 30


def proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def poll(condition, what: str) -> None:
    """Waits for a condition read in /proc (bounded, not a clock)."""
    for _ in range(20_000):
        if condition():
            return
        time.sleep(0.001)
    pytest.fail(f"never happened: {what}")


def run_orphan(prog, src, dst, held: bool) -> tuple[int, str, str]:
    """Runs LANDLOCK_ORPHAN_PROG under `xrename --trace`. `held`: the
    supervisor is stopped (SIGSTOP) from before the fork until the
    process is dead: its fork event is never seen, deterministically.
    Otherwise it runs freely (the race as it comes)."""
    sup = subprocess.Popen([str(XRENAME), "--trace", "--", str(prog), str(src), str(dst)], env=xrename_env(),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = sup.stdout.readline()
        if not first.startswith("pid "):
            out, err = sup.communicate(timeout=60)
            return sup.returncode, first + out, err
        pid = int(first.split()[1])
        if held:
            os.kill(sup.pid, signal.SIGSTOP)
            poll(lambda: proc_state(sup.pid) == "T", "the supervisor stopped")
        sup.stdin.write("go\n")
        sup.stdin.flush()
        if held:
            # Dead (a zombie: its tracer, stopped, cannot reap it) while
            # the supervisor has not seen its fork.
            poll(lambda: proc_state(pid) == "Z", "the sandboxed process died")
            os.kill(sup.pid, signal.SIGCONT)
        out, err = sup.communicate(timeout=60)
        return sup.returncode, first + out, err
    finally:
        if sup.poll() is None:
            os.kill(sup.pid, signal.SIGCONT)
            sup.kill()
            sup.wait()


def test_races_the_child_of_a_sandboxed_process_killed_at_its_fork_stays_sandboxed(fs_pair, tmp_path):
    """A process restricted by Landlock (no regular file may be made or
    removed) forks; a second thread ends the process (exit_group) as soon
    as the child exists, while the forking thread is stopped at its fork
    event, which the supervisor then never sees. The orphaned child renames
    across devices: the kernel says EXDEV, and under xrename it must too
    (the child is sandboxed), with nothing made at the destination. Before
    the fix the child was not sandboxed whenever the fork event was lost:
    the helper moved the file, outside the sandbox. RUNS runs, every other
    one with the supervisor held stopped until the process is dead (the
    event is lost every time), the others free (the race as it comes)."""
    need(shutil.which("cc") is not None, "no C compiler")
    prog = build_c(tmp_path, "llorphan", LANDLOCK_ORPHAN_PROG, ["cc", "-static"])
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    # Without xrename: the kernel's answer is EXDEV (and Landlock is here).
    plain = subprocess.run([str(prog), str(src), str(dst)], input="go\n", capture_output=True, text=True,
                           env=xrename_env(), timeout=60)
    need(plain.returncode != 99, "Landlock is not available on this kernel")
    assert plain.returncode == 0 and plain.stdout.split()[2:] == ["18"], describe(plain)
    problems = []
    for i in range(RUNS):
        for d in (p.src_dir, p.dst_dir):
            for n in os.listdir(d):
                os.unlink(d / n)
        src.write_bytes(b"stays")
        held = i % 2 == 0
        code, out, err = run_orphan(prog, src, dst, held)
        need(code != 99, "Landlock is not available on this kernel")
        dst_now, src_now = entries(p.dst_dir), entries(p.src_dir)
        if code != 0 or out.split()[2:] != ["18"] or dst_now or src_now != {"f"} or src.read_bytes() != b"stays":
            problems.append(f"run {i} ({'held' if held else 'free'}): exit {code}, output {out.split()}, "
                            f"left at the destination {sorted(dst_now)}, at the source {sorted(src_now)}; "
                            f"stderr {err.strip()!r}")
    assert not problems, f"{len(problems)} of {RUNS} runs moved for the sandboxed child:\n" + "\n".join(problems)
