"""`xrename --trace -- CMD`: the supervisor reaches programs LD_PRELOAD
cannot (statically linked C, musl, Go, raw syscalls, `int 0x80`).

Every program here is built by the test itself (cc -static, musl-gcc, go
build) and renames across a real cross-device pair; without xrename it
gets EXDEV, traced it moves, with the engine's guarantees and with exactly
the program's own rights.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli_harness import XRENAME, describe, run, xrename_env
from xrename_harness import IN_CI, PRIVILEGED, entries, need

# rename(argv[1], argv[2]), or with argv[3]: "raw2" a raw renameat2(NOREPLACE)
# syscall, "xchg" a raw renameat2(RENAME_EXCHANGE). Prints "ok" or the errno
# number, and exits with it.
C_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long r;
    if (argc > 3 && strcmp(argv[3], "raw2") == 0)
        r = syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], 1);
    else if (argc > 3 && strcmp(argv[3], "xchg") == 0)
        r = syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], 2);
    else
        r = rename(argv[1], argv[2]);
    if (r == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
'''

# The i386 rename (number 38) through `int 0x80` from a 64-bit process,
# with its paths in memory below 4 GiB.
INT80_PROG = r'''
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    char *m = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    strcpy(m, argv[1]);
    strcpy(m + 4096, argv[2]);
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(38), "b"(m), "c"(m + 4096) : "memory");
    if (r == 0) { printf("ok\n"); return 0; }
    printf("%ld\n", -r);
    return (int)-r;
}
'''

# Renames from a forked child, a vforked child, two threads, and a raw
# clone(CLONE_UNTRACED) child: argv[1] is a source directory with files
# f1..f5, argv[2] the destination directory. Exit 0 only if all moved.
FAMILY_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
static char *S, *D;
static int mv(int i) {
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/f%d", S, i);
    snprintf(b, sizeof b, "%s/f%d", D, i);
    return rename(a, b) == 0 ? 0 : errno;
}
static void *thr(void *arg) { return (void *)(long)mv((int)(long)arg); }
static int untraced(void *arg) { (void)arg; _exit(mv(5)); }
int main(int argc, char **argv) {
    S = argv[1]; D = argv[2];
    int bad = 0, st;
    pid_t p = fork();
    if (p == 0) _exit(mv(1));
    waitpid(p, &st, 0); if (WEXITSTATUS(st)) { printf("fork: %d\n", WEXITSTATUS(st)); bad = 1; }
    p = vfork();
    if (p == 0) _exit(mv(2));
    waitpid(p, &st, 0); if (WEXITSTATUS(st)) { printf("vfork: %d\n", WEXITSTATUS(st)); bad = 1; }
    pthread_t t1, t2; void *r1, *r2;
    pthread_create(&t1, 0, thr, (void *)3L); pthread_create(&t2, 0, thr, (void *)4L);
    pthread_join(t1, &r1); pthread_join(t2, &r2);
    if (r1 || r2) { printf("threads: %ld %ld\n", (long)r1, (long)r2); bad = 1; }
    static char stack[65536];
    p = clone(untraced, stack + sizeof stack, CLONE_UNTRACED | SIGCHLD, 0);
    waitpid(p, &st, 0); if (WEXITSTATUS(st)) { printf("untraced clone: %d\n", WEXITSTATUS(st)); bad = 1; }
    printf(bad ? "failed\n" : "ok\n");
    return bad;
}
'''

# Restricts itself with Landlock (a ruleset that handles only EXECUTE),
# then renames argv[1] to argv[2].
LANDLOCK_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <linux/landlock.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct landlock_ruleset_attr attr = {.handled_access_fs = LANDLOCK_ACCESS_FS_EXECUTE};
    int fd = syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (fd < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_landlock_restrict_self, fd, 0)) {
        printf("landlock unavailable\n");
        return 99;
    }
    if (rename(argv[1], argv[2]) == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
'''

# Renames argv[3] files f0..f{N-1} from argv[1] to argv[2] while a timer
# sends SIGUSR1 every 20 us (argv[4] "restart": with SA_RESTART). Prints the
# number moved and the number of calls that failed, with EINTR counted apart.
STORM_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static volatile long hits;
static void on_usr1(int s) { (void)s; hits++; }
int main(int argc, char **argv) {
    int n = atoi(argv[3]);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = strcmp(argv[4], "restart") == 0 ? SA_RESTART : 0;
    sigaction(SIGUSR1, &sa, 0);
    timer_t t;
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGUSR1;
    timer_create(CLOCK_MONOTONIC, &ev, &t);
    struct itimerspec its = {{0, 100000}, {0, 100000}};
    timer_settime(t, 0, &its, 0);
    int moved = 0, eintr = 0, other = 0;
    for (int i = 0; i < n; i++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/f%d", argv[1], i);
        snprintf(b, sizeof b, "%s/f%d", argv[2], i);
        if (rename(a, b) == 0) moved++;
        else if (errno == EINTR) eintr++;
        else { other++; fprintf(stderr, "f%d: %s\n", i, strerror(errno)); }
    }
    printf("%d %d %d %ld\n", moved, eintr, other, hits);
    return 0;
}
'''

# Installs a seccomp filter of its own with prctl (allowing everything),
# then renames argv[1] to argv[2].
PRCTL_FILTER_PROG = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
int main(int argc, char **argv) {
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {1, &allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        printf("no filter\n");
        return 99;
    }
    if (rename(argv[1], argv[2]) == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
'''

GO_PROG = r'''
package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

func main() {
	err := os.Rename(os.Args[1], os.Args[2])
	var errno syscall.Errno
	if errors.As(err, &errno) {
		fmt.Println(int(errno))
		os.Exit(int(errno))
	} else if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
'''


def build_c(d: Path, name: str, source: str, compiler: list[str]) -> Path:
    src = d / f"{name}.c"
    src.write_text(source)
    out = d / name
    proc = subprocess.run([*compiler, "-O2", "-o", str(out), str(src), "-lpthread"], capture_output=True, text=True)
    assert proc.returncode == 0, f"building {name}: {proc.stderr}"
    return out


@pytest.fixture(scope="module")
def progs(tmp_path_factory) -> dict[str, Path]:
    """The test programs, built once."""
    d = tmp_path_factory.mktemp("trace-progs")
    need(shutil.which("cc") is not None, "no C compiler")
    out = {
        "static": build_c(d, "static", C_PROG, ["cc", "-static"]),
        "glibc-raw-syscall": build_c(d, "dynamic", C_PROG, ["cc"]),
        "int80": build_c(d, "int80", INT80_PROG, ["cc"]),
        "family": build_c(d, "family", FAMILY_PROG, ["cc", "-static"]),
        "landlock": build_c(d, "landlock", LANDLOCK_PROG, ["cc", "-static"]),
        "storm": build_c(d, "storm", STORM_PROG, ["cc", "-static"]),
        "prctl-filter": build_c(d, "prctl_filter", PRCTL_FILTER_PROG, ["cc", "-static"]),
    }
    if shutil.which("musl-gcc"):
        out["musl"] = build_c(d, "musl", C_PROG, ["musl-gcc", "-static"])
    if shutil.which("go"):
        (d / "go").mkdir()
        (d / "go" / "main.go").write_text(GO_PROG)
        env = dict(os.environ, GOCACHE=str(d / "gocache"), GOPATH=str(d / "gopath"), GO111MODULE="off",
                   CGO_ENABLED="0", GOFLAGS="")
        proc = subprocess.run(["go", "build", "-o", str(d / "gorename"), "main.go"], cwd=d / "go",
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"go build: {proc.stderr}"
        out["go"] = d / "gorename"
    return out


def need_prog(progs, name):
    if name not in progs:
        need(False, f"{name}: its toolchain is not installed (musl-tools, golang-go)")
    return progs[name]


def traced(*argv, env=None):
    return run([XRENAME, "--trace", "--", *argv], env=env)


PROGRAMS = ["static", "musl", "go", "glibc-raw-syscall", "int80"]


@pytest.mark.parametrize("kind", PROGRAMS)
def test_a_program_the_preload_cannot_reach_moves_a_file_when_traced(pair, progs, kind):
    """tmpfs -> ext4, ext4 -> tmpfs, and a bind mount of one filesystem."""
    p = pair
    prog = need_prog(progs, kind)
    extra = ["raw2"] if kind == "glibc-raw-syscall" else []
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"moved by the supervisor\n" * 100)
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_500_000_000_123_456_789, 1_400_000_000_987_654_321))
    before = os.lstat(src)
    plain = run([prog, src, dst, *extra])
    assert plain.returncode == 18, f"without xrename the program must get EXDEV: {describe(plain)}"
    proc = traced(prog, src, dst, *extra)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", describe(proc)
    assert not os.path.lexists(src)
    after = os.lstat(dst)
    assert dst.read_bytes() == b"moved by the supervisor\n" * 100
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)
    assert entries(p.src_dir) == set() and entries(p.dst_dir) == {"f"}


@pytest.mark.parametrize("kind", ["static", "go"])
def test_a_tree_moves_when_traced(pair, progs, kind):
    p = pair
    prog = need_prog(progs, kind)
    tree = p.src_dir / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep").write_bytes(b"deep")
    (tree / "top").write_bytes(b"top")
    os.symlink("a/b/deep", tree / "link")
    proc = traced(prog, tree, p.dst_dir / "tree")
    assert proc.returncode == 0, describe(proc)
    out = p.dst_dir / "tree"
    assert (out / "a" / "b" / "deep").read_bytes() == b"deep" and (out / "top").read_bytes() == b"top"
    assert os.readlink(out / "link") == "a/b/deep"
    assert not os.path.lexists(tree)


def test_noreplace_onto_an_existing_file_is_eexist_and_exchange_stays_exdev(fs_pair, progs):
    p = fs_pair
    prog = progs["static"]
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    proc = traced(prog, src, dst, "raw2")
    assert proc.returncode == 17, f"RENAME_NOREPLACE onto a file: EEXIST expected: {describe(proc)}"
    proc = traced(prog, src, dst, "xchg")
    assert proc.returncode == 18, f"RENAME_EXCHANGE across devices: EXDEV expected: {describe(proc)}"
    assert src.read_bytes() == b"new" and dst.read_bytes() == b"old"
    assert entries(p.src_dir) == {"f"} and entries(p.dst_dir) == {"f"}


@contextmanager
def searchable_for_all(*paths: Path):
    """Adds search permission for others on every ancestor of `paths` that
    lacks it (pytest's base directory is 0700), for the test's duration."""
    changed = {}
    for p in paths:
        for d in [p, *p.parents]:
            mode = stat.S_IMODE(os.stat(d).st_mode)
            if not mode & stat.S_IXOTH and d not in changed:
                changed[d] = mode
                os.chmod(d, mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for d, mode in changed.items():
            os.chmod(d, mode)


def test_the_move_runs_with_the_programs_rights_not_the_supervisors(fs_pair, progs):
    """A root supervisor; the program runs as uid 65534 and renames a
    root-owned 0600 file out of a root-owned 0755 directory. EXDEV comes
    before the kernel's permission checks, so a supervisor moving with its
    own rights would move it; the program's rights give EACCES, as the
    kernel's same-filesystem rename would, and nothing moves."""
    need(PRIVILEGED, "needs root to change uid")
    need(shutil.which("setpriv") is not None, "setpriv missing")
    p = fs_pair
    os.chmod(p.src_dir, 0o755)
    os.chmod(p.dst_dir, 0o777)
    src, dst = p.src_dir / "secret", p.dst_dir / "secret"
    src.write_bytes(b"root's")
    os.chmod(src, 0o600)
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    with searchable_for_all(p.src_dir, p.dst_dir, progs["static"]):
        proc = traced(*as_nobody, progs["static"], src, dst)
        assert proc.returncode == 13, f"EACCES expected: {describe(proc)}"
        assert src.read_bytes() == b"root's" and not os.path.lexists(dst)
        assert entries(p.dst_dir) == set()
        # The same program, on a file it may move: moved, as that user.
        mine = p.src_dir / "mine"
        mine.write_bytes(b"nobody's")
        os.chown(mine, 65534, 65534)
        os.chmod(p.src_dir, 0o777)
        proc = traced(*as_nobody, progs["static"], mine, p.dst_dir / "mine")
        assert proc.returncode == 0, describe(proc)
    st = os.lstat(p.dst_dir / "mine")
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_forks_vforks_threads_and_an_untraced_clone_are_all_served(fs_pair, progs):
    """fork, vfork, two threads and a raw clone(CLONE_UNTRACED) child each
    rename one file across devices: every one is moved, none gets ENOSYS
    (the flag is cleared: a child the tracer cannot see would get ENOSYS
    from the inherited filter)."""
    p = fs_pair
    for i in range(1, 6):
        (p.src_dir / f"f{i}").write_bytes(b"%d" % i)
    proc = traced(progs["family"], p.src_dir, p.dst_dir)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), describe(proc)
    assert entries(p.src_dir) == set()
    assert entries(p.dst_dir) == {f"f{i}" for i in range(1, 6)}


def test_a_program_that_sandboxed_itself_keeps_the_kernels_exdev(fs_pair, progs):
    """After landlock_restrict_self the program is sandboxed: the move is
    not made for it (nothing is created or removed outside what its sandbox
    allows); it gets the kernel's EXDEV, nothing changed."""
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    proc = traced(progs["landlock"], src, dst)
    need(proc.returncode != 99, "Landlock is not available on this kernel")
    assert proc.returncode == 18, describe(proc)
    assert src.read_bytes() == b"stays" and not os.path.lexists(dst)


def test_a_program_with_its_own_seccomp_filter_keeps_the_kernels_exdev(fs_pair, progs):
    """A filter installed with prctl(PR_SET_SECCOMP) (not a traced call):
    the thread has more filters than the program started with, so it is
    sandboxed: EXDEV stands, nothing changed."""
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    proc = traced(progs["prctl-filter"], src, dst)
    assert proc.returncode == 18, describe(proc)
    assert src.read_bytes() == b"stays" and not os.path.lexists(dst)


def test_exit_status_mirrors_the_program_and_a_missing_command_is_127(tmp_path, progs):
    proc = traced("sh", "-c", "exit 7")
    assert proc.returncode == 7, describe(proc)
    proc = traced("sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + 15, describe(proc)
    proc = traced(str(tmp_path / "no-such-program"))
    assert proc.returncode == 127, describe(proc)


def test_a_program_already_traced_gives_a_clear_error_and_125(fs_pair, progs):
    """Under strace, the program xrename starts is already traced: ptrace
    refuses, and --trace says so (exit 125) rather than running it with its
    renames unhandled."""
    need(shutil.which("strace") is not None, "strace missing")
    p = fs_pair
    src = p.src_dir / "f"
    src.write_bytes(b"x")
    proc = run(["strace", "-f", "-qq", "-o", "/dev/null", XRENAME, "--trace", "--", progs["static"], src,
                p.dst_dir / "f"], env=xrename_env())
    assert proc.returncode == 125, describe(proc)
    assert "cannot trace" in proc.stderr, describe(proc)
    assert src.exists() and not (p.dst_dir / "f").exists()


def test_unprivileged_supervisor_in_a_user_namespace(fs_pair, progs):
    """The same as an unprivileged user would run it: inside `unshare -Ur`
    (no CAP_SYS_ADMIN over the filter: no_new_privs is set for it)."""
    need(shutil.which("unshare") is not None, "unshare missing")
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"userns")
    os.chmod(p.src_dir, 0o777)
    os.chmod(p.dst_dir, 0o777)
    proc = run(["unshare", "-Ur", XRENAME, "--trace", "--", progs["static"], src, dst])
    if proc.returncode != 0 and "unshare" in proc.stderr and not IN_CI:
        need(False, f"no user namespaces here: {proc.stderr.strip()}")
    assert proc.returncode == 0, describe(proc)
    assert dst.read_bytes() == b"userns" and not src.exists()


def test_a_supervisor_running_as_an_ordinary_user(fs_pair, progs):
    """xrename itself as uid 65534 (no capabilities at all): it may trace
    its own descendants, the filter needs no_new_privs, and the move is
    made with that user's rights."""
    need(PRIVILEGED, "needs root to become another user")
    need(shutil.which("setpriv") is not None, "setpriv missing")
    p = fs_pair
    os.chmod(p.src_dir, 0o777)
    os.chmod(p.dst_dir, 0o777)
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"an ordinary user's file")
    os.chown(src, 65534, 65534)
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    with searchable_for_all(p.src_dir, p.dst_dir, progs["static"], XRENAME):
        proc = run([*as_nobody, XRENAME, "--trace", "--", progs["static"], src, dst])
    assert proc.returncode == 0, describe(proc)
    assert dst.read_bytes() == b"an ordinary user's file" and not src.exists()
    assert os.lstat(dst).st_uid == 65534


@pytest.mark.parametrize("restart", ["restart", "no-restart"])
def test_a_signal_storm_during_300_traced_moves_loses_none_and_shows_no_eintr(fs_pair, progs, restart):
    """SIGUSR1 every 100 us, with and without SA_RESTART, while a static
    program makes 300 cross-device renames under the supervisor: all 300
    moved, and not one call returned EINTR (the move is made at the call's
    exit, which a signal does not interrupt). (Every 20 us, as before
    session 10, the program made no progress on a machine where a signal's
    ptrace stop takes longer than that: README, Known limits.)"""
    p = fs_pair
    for i in range(300):
        (p.src_dir / f"f{i}").write_bytes(b"%d" % i)
    proc = traced(progs["storm"], p.src_dir, p.dst_dir, "300", restart)
    assert proc.returncode == 0, describe(proc)
    moved, eintr, other, hits = map(int, proc.stdout.split())
    assert (moved, eintr, other) == (300, 0, 0), describe(proc)
    assert hits > 0, "the timer never fired: the test proves nothing"
    assert entries(p.src_dir) == set() and len(entries(p.dst_dir)) == 300


def test_killing_the_supervisor_kills_the_traced_programs(tmp_path):
    """If the supervisor dies, the programs it traces die with it
    (PTRACE_O_EXITKILL): none runs on with renames no one handles."""
    pidfile = tmp_path / "pid"
    sup = subprocess.Popen([str(XRENAME), "--trace", "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"],
                           env=xrename_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3000):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            sup.poll()
            assert sup.returncode is None, "the supervisor ended early"
            import time
            time.sleep(0.01)
        pid = int(pidfile.read_text())
        os.kill(sup.pid, 9)
        sup.wait(timeout=30)
        # The traced sleep is killed with it; it is not our child, so wait
        # for it through /proc.
        import time
        for _ in range(3000):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split()[2]
            except FileNotFoundError:
                break
            if state == "Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the traced program outlived its supervisor")
    finally:
        if sup.poll() is None:
            sup.kill()


def test_job_control_stop_and_continue_behave_as_without_xrename(tmp_path, progs):
    """SIGSTOP then SIGCONT to the traced program: it stops (a group-stop the
    supervisor leaves in place, PTRACE_LISTEN) and goes on when continued,
    and ends normally."""
    import time
    pidfile = tmp_path / "pid"
    sup = subprocess.Popen([str(XRENAME), "--trace", "--", "sh", "-c",
                            f"echo $$ > {pidfile}; read line; echo got $line"],
                           env=xrename_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.01)
        pid = int(pidfile.read_text())
        os.kill(pid, 19)  # SIGSTOP
        for _ in range(3000):
            if Path(f"/proc/{pid}/stat").read_text().split()[2] in ("T", "t"):
                break
            time.sleep(0.01)
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert state in ("T", "t"), f"the program did not stop: state {state}"
        os.kill(pid, 18)  # SIGCONT
        out, _ = sup.communicate("hello\n", timeout=60)
        assert sup.returncode == 0 and out.strip() == "got hello", out
    finally:
        if sup.poll() is None:
            sup.kill()


def test_log_and_summary_work_with_trace_and_name_the_way_in(fs_pair, progs, tmp_path):
    """--log writes the preload's JSON line for each EXDEV the supervisor
    handled, with the traced process's pid and comm and `"via":"trace"`;
    --summary counts the moves; --observe leaves the EXDEV and logs it."""
    import json
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"12345")
    log = tmp_path / "trace.log"
    proc = run([XRENAME, "--trace", "--log", log, "--summary", "--", progs["static"], src, dst])
    assert proc.returncode == 0, describe(proc)
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["via"] == "trace" and line["result"] == "ok" and line["program"] == "static", line
    assert line["src"] == str(src) and line["dst"] == str(dst) and line["bytes"] == 5, line
    assert isinstance(line["pid"], int) and line["pid"] != 0
    assert "1 EXDEV met in 1 process(es): 1 moved, 0 failed" in proc.stderr, describe(proc)
    # Observe: nothing moves, the line says so.
    shutil.move(dst, src)
    log.unlink()
    proc = run([XRENAME, "--trace", "--observe", "--log", log, "--", progs["static"], src, dst])
    assert proc.returncode == 18, describe(proc)
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["result"] == "EXDEV" and line["step"] == "observe" and line["via"] == "trace", line
    assert src.exists() and not dst.exists()


# --------------------------------------------------------------------------
# The default: `xrename -- CMD` traces
# --------------------------------------------------------------------------

def test_the_default_mode_serves_a_static_program_started_by_a_dynamic_one(fs_pair, progs):
    """The case met in practice (git running git-lfs): a dynamic program
    (sh) runs one the preload cannot reach (a static binary). `xrename --
    CMD`, without options, traces the whole tree: the static program's
    rename is moved, and the summary counts it."""
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"via the default")
    proc = run([XRENAME, "--summary", "--", "sh", "-c", f'"{progs["static"]}" "$0" "$1"', src, dst])
    assert proc.returncode == 0, describe(proc)
    assert dst.read_bytes() == b"via the default" and not src.exists()
    assert "1 moved" in proc.stderr, describe(proc)


def test_the_default_falls_back_to_the_preload_with_a_warning_where_it_cannot_trace(fs_pair, tmp_path):
    """Under strace the program is already traced: `xrename -- CMD` says it
    cannot trace, and runs it with the preload (a dynamic program's rename
    is still moved); `--trace` instead fails with 125."""
    need(shutil.which("strace") is not None, "strace missing")
    import sys
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"by the preload")
    code = "import os,sys; os.rename(sys.argv[1], sys.argv[2])"
    proc = run(["strace", "-f", "-qq", "-o", "/dev/null", XRENAME, "--", sys.executable, "-c", code, src, dst])
    assert proc.returncode == 0, describe(proc)
    assert "cannot trace" in proc.stderr and "LD_PRELOAD only" in proc.stderr, describe(proc)
    assert dst.read_bytes() == b"by the preload" and not src.exists()


def test_a_preloaded_library_stands_aside_under_the_supervisor(fs_pair, progs, tmp_path):
    """LD_PRELOAD=libxrename.so set by the user, and `xrename --trace
    --observe`: the supervisor leaves the EXDEV (observe), and the library,
    which sees it next, must not move the file (no call handled twice)."""
    import sys
    from xrename_harness import LIBRARY
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    code = "import os,sys\ntry:\n    os.rename(sys.argv[1], sys.argv[2]); print('ok')\nexcept OSError as e:\n    print(e.errno)"
    env = xrename_env({"LD_PRELOAD": str(LIBRARY)})
    proc = run([XRENAME, "--trace", "--observe", "--", sys.executable, "-c", code, src, dst], env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "18", describe(proc)
    assert src.exists() and not dst.exists()


def test_a_nested_xrename_just_runs_its_command(fs_pair, progs):
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"nested")
    proc = run([XRENAME, "--", XRENAME, "--trace", "--", progs["static"], src, dst])
    assert proc.returncode == 0, describe(proc)
    assert dst.read_bytes() == b"nested"


def test_in_a_chroot_an_absolute_symlink_resolves_as_the_program_sees_it(mounts, tmp_path, progs):
    """The program runs in a chroot (no /proc there) and renames through
    an absolute symlink inside it (/link -> /a): the helper resolves the
    path from the program's root, as the kernel did for the program, and
    moves /a/f to /b/f of the chroot, not of the host."""
    from conftest import chroot_without_proc
    root = chroot_without_proc(mounts, tmp_path)
    shutil.copy2(progs["static"], root / "prog")
    os.symlink("/a", root / "link")
    (root / "a" / "f").write_bytes(b"inside the chroot")
    proc = traced("chroot", root, "/prog", "/link/f", "/b/f")
    assert proc.returncode == 0, describe(proc)
    assert (root / "b" / "f").read_bytes() == b"inside the chroot" and not (root / "a" / "f").exists()


def test_in_a_private_mount_namespace_the_move_uses_the_programs_mounts(tmp_path, progs):
    """The program unshares its mount namespace and mounts a tmpfs only it
    sees, then renames into it across devices: the helper enters that
    namespace (setns on a pidfd), so the file lands in the program's tmpfs,
    which the supervisor's namespace does not even have."""
    need(PRIVILEGED, "mounting needs root")
    need(shutil.which("unshare") is not None, "unshare missing")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"into a private mount")
    mp = tmp_path / "private"
    mp.mkdir()
    script = (f'mount -t tmpfs xrename-private "{mp}" && "{progs["static"]}" "{src}/f" "{mp}/f" && '
              f'cat "{mp}/f"')
    proc = traced("unshare", "-m", "--propagation", "private", "sh", "-c", script)
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.strip().endswith("into a private mount"), describe(proc)
    assert not (src / "f").exists() and not (mp / "f").exists(), "the file landed outside the program's namespace"


# Waits for a line on stdin, then renames argv[1] to argv[2]; prints "ok"
# or the errno number.
WAITING_PROG = r"""
#include <errno.h>
#include <stdio.h>
int main(int argc, char **argv) {
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 98;
    if (rename(argv[1], argv[2]) == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
"""


@pytest.mark.parametrize("inject,want", [
    ("fsync:error=EIO:when=1", 5),    # the copy cannot be made durable: EIO, nothing changed
    ("linkat:error=ENOSPC:when=1", 28),  # the install: ENOSPC, nothing changed
    ("unlinkat:error=EROFS:when=1", 30),  # the source cannot be removed: the install is undone
    ("fsync:signal=SIGKILL:when=1", 18),  # the helper dies mid-move: the kernel's EXDEV
])
def test_a_fault_in_the_helper_leaves_everything_as_it_was(fs_pair, tmp_path, inject, want):
    """strace attaches to the supervisor (not to the program, which it
    traces itself) and injects a fault into the helper that moves: the
    program gets the injected errno (EXDEV when the helper is killed), the
    source is intact and nothing is left at the destination."""
    need(shutil.which("strace") is not None, "strace missing")
    prog = build_c(tmp_path, "waiting", WAITING_PROG, ["cc", "-static"])
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"x" * 100_000)
    code, out = run_traced_waiting(prog, src, dst, ["-o", "/dev/null", "-e", f"inject={inject}"])
    assert code == want and out.strip() == str(want), (code, out)
    assert src.read_bytes() == b"x" * 100_000, "the source changed"
    assert not os.path.lexists(dst) and entries(p.dst_dir) == set(), f"left at the destination: {entries(p.dst_dir)}"
    assert entries(p.src_dir) == {"f"}


# A child in a new user namespace, mapped "0 MAPSTART 2000" by its parent,
# becomes namespace uid/gid 999 (host MAPSTART+999) and renames argv[2] to
# argv[3]; prints "ok" or the errno number.
USERNS_PROG = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void wr(const char *p, const char *s) { int fd = open(p, O_WRONLY); if (fd >= 0) { write(fd, s, strlen(s)); close(fd); } }
int main(int argc, char **argv) {
    int p1[2], p2[2]; char b;
    if (pipe(p1) || pipe(p2)) return 97;
    pid_t pid = fork();
    if (pid == 0) {
        if (unshare(CLONE_NEWUSER)) { printf("no userns\n"); _exit(99); }
        write(p1[1], "x", 1); read(p2[0], &b, 1);
        if (setgroups(0, 0) || setresgid(999, 999, 999) || setresuid(999, 999, 999)) { printf("no ids\n"); _exit(98); }
        if (rename(argv[2], argv[3]) == 0) { printf("ok\n"); _exit(0); }
        printf("%d\n", errno); _exit(errno);
    }
    read(p1[0], &b, 1);
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %s 2000\n", argv[1]);
    snprintf(path, sizeof path, "/proc/%d/uid_map", pid); wr(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", pid); wr(path, map);
    write(p2[1], "x", 1);
    int st; waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
"""

# A second thread restricts the process with Landlock, then execs argv[1]
# with the remaining arguments (the exec'ing thread takes the leader's id).
LANDLOCK_THREAD_EXEC_PROG = r"""
#define _GNU_SOURCE
#include <linux/landlock.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
static char **V;
static void *t(void *a) {
    (void)a;
    /* Only making sockets is restricted: the exec and the rename's own
       steps are allowed, and the process is sandboxed all the same. */
    struct landlock_ruleset_attr at = {.handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_SOCK};
    int rs = syscall(SYS_landlock_create_ruleset, &at, sizeof at, 0);
    if (rs < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_landlock_restrict_self, rs, 0)) _exit(99);
    execv(V[1], V + 1);
    _exit(97);
}
int main(int argc, char **argv) { (void)argc; V = argv; pthread_t th; pthread_create(&th, 0, t, 0); pause(); }
"""

# renameat2 with an invalid directory descriptor and absolute paths: the
# kernel ignores the descriptor.
BADFD_PROG = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    if (syscall(SYS_renameat2, 999, argv[1], 999, argv[2], 0) == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
"""


def test_in_a_user_namespace_the_move_takes_the_ids_the_program_has_there(fs_pair, tmp_path):
    """The program's ids as /proc shows them (host ids) are not the ids to
    take inside its user namespace: a program mapped to host uid 1999
    (namespace uid 999) renames a file in a 0700 directory of host uid
    2000. It cannot reach it, so the kernel's answer (EACCES from the
    same-filesystem view; EXDEV never turns into a move) must stand: the
    helper must not act as namespace uid 1000 = host uid 2000."""
    need(PRIVILEGED, "needs root to write another user's id map")
    p = fs_pair
    prog = build_c(tmp_path, "userns", USERNS_PROG, ["cc", "-static"])
    d = p.src_dir / "d"
    d.mkdir()
    src = d / "f"
    src.write_bytes(b"host uid 2000's")
    os.chown(d, 2000, 2000)
    os.chown(src, 2000, 2000)
    os.chmod(d, 0o700)
    os.chmod(p.dst_dir, 0o777)
    with searchable_for_all(p.src_dir, p.dst_dir, prog):
        proc = traced(prog, "1000", src, p.dst_dir / "f")
    need(proc.stdout.strip() not in ("no userns", "no ids"), f"user namespaces unavailable: {proc.stdout}")
    assert proc.returncode != 0 and proc.stdout.strip() != "ok", describe(proc)
    assert src.read_bytes() == b"host uid 2000's" and not (p.dst_dir / "f").exists()


def test_landlock_from_another_thread_then_exec_keeps_the_process_sandboxed(fs_pair, tmp_path, progs):
    """A non-leader thread restricts itself and execs (taking the leader's
    id): the new program is still sandboxed, its EXDEV stands."""
    p = fs_pair
    prog = build_c(tmp_path, "llexec", LANDLOCK_THREAD_EXEC_PROG, ["cc", "-static"])
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    proc = traced(prog, progs["static"], src, dst)
    need(proc.returncode != 99, "Landlock is not available on this kernel")
    assert proc.returncode == 18, describe(proc)
    assert src.read_bytes() == b"stays" and not os.path.lexists(dst)


def test_the_programs_own_lease_and_file_size_limit_count_not_the_helpers(fs_pair):
    """The helper moves for the program: a file the program holds a write
    lease on is never opened (EXDEV, the lease intact), and the program's
    RLIMIT_FSIZE applies (a file over it: EXDEV, nothing written)."""
    import sys
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"leased")
    code = ("import fcntl, os, signal, sys\n"
            "breaks = []\n"
            "signal.signal(signal.SIGIO, lambda *a: breaks.append(1))\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n"
            "try:\n    os.rename(sys.argv[1], sys.argv[2]); r = 'ok'\n"
            "except OSError as e:\n    r = str(e.errno)\n"
            "print(r, len(breaks), fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_WRLCK)\n")
    proc = traced(sys.executable, "-c", code, src, dst)
    assert proc.returncode == 0 and proc.stdout.split() == ["18", "0", "True"], describe(proc)
    big = p.src_dir / "big"
    big.write_bytes(b"y" * (4 << 20))
    code = ("import os, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))\n"
            "try:\n    os.rename(sys.argv[1], sys.argv[2]); print('ok')\n"
            "except OSError as e:\n    print(e.errno)\n")
    proc = traced(sys.executable, "-c", code, big, p.dst_dir / "big")
    assert proc.returncode == 0 and proc.stdout.strip() == "18", describe(proc)
    assert big.stat().st_size == 4 << 20 and not (p.dst_dir / "big").exists()


def test_an_absolute_path_with_an_invalid_dirfd_moves_as_the_kernel_would(fs_pair, tmp_path):
    p = fs_pair
    prog = build_c(tmp_path, "badfd", BADFD_PROG, ["cc", "-static"])
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"abs")
    proc = traced(prog, src, dst)
    assert proc.returncode == 0, describe(proc)
    assert dst.read_bytes() == b"abs" and not src.exists()


def test_a_policy_forbidding_ptrace_gives_the_clear_error_or_the_preload(fs_pair, tmp_path):
    """A seccomp policy refusing ptrace to xrename itself (the filter of
    c-tests/lib/seccomp_eperm.c, preloaded into xrename): --trace says it
    cannot trace and exits 125; the default falls back to the preload."""
    import sys
    from xrename_harness import REPO_ROOT
    lib = tmp_path / "libseccomp_eperm.so"
    cc = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib),
                         str(REPO_ROOT / "c-tests" / "lib" / "seccomp_eperm.c")], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"policy")
    env = xrename_env({"LD_PRELOAD": str(lib), "XT_SECCOMP_EPERM": "ptrace"})
    code = "import os,sys; os.rename(sys.argv[1], sys.argv[2])"
    proc = run([XRENAME, "--trace", "--", sys.executable, "-c", code, src, dst], env=env)
    assert proc.returncode == 125 and "cannot trace" in proc.stderr, describe(proc)
    assert src.exists() and not dst.exists()
    proc = run([XRENAME, "--", sys.executable, "-c", code, src, dst], env=env)
    assert proc.returncode == 0 and "LD_PRELOAD only" in proc.stderr, describe(proc)
    assert dst.read_bytes() == b"policy" and not src.exists()


def test_sigterm_to_xrename_reaches_the_traced_program(tmp_path):
    import time
    ready = tmp_path / "ready"
    sup = subprocess.Popen([str(XRENAME), "--", "sh", "-c",
                            f'trap "exit 3" TERM; touch "{ready}"; while :; do sleep 0.05; done'],
                           env=xrename_env())
    try:
        for _ in range(3000):
            if ready.exists():
                break
            time.sleep(0.01)
        os.kill(sup.pid, 15)
        assert sup.wait(timeout=60) == 3
    finally:
        if sup.poll() is None:
            sup.kill()


def test_posix_spawn_and_exec_chains_are_served(fs_pair, progs):
    """A program started with posix_spawn (clone with CLONE_VM|CLONE_VFORK)
    and one at the end of a chain of execs: both renames are moved."""
    import sys
    p = fs_pair
    for n in ("a", "b"):
        (p.src_dir / n).write_bytes(n.encode())
    code = ("import os, sys\n"
            "pid = os.posix_spawn(sys.argv[1], [sys.argv[1], sys.argv[2], sys.argv[3]], os.environ)\n"
            "_, st = os.waitpid(pid, 0)\n"
            "sys.exit(os.waitstatus_to_exitcode(st))\n")
    proc = traced(sys.executable, "-c", code, progs["static"], p.src_dir / "a", p.dst_dir / "a")
    assert proc.returncode == 0, describe(proc)
    chain = f'exec sh -c \'exec "{progs["static"]}" "{p.src_dir}/b" "{p.dst_dir}/b"\''
    proc = traced("sh", "-c", chain)
    assert proc.returncode == 0, describe(proc)
    assert entries(p.src_dir) == set() and entries(p.dst_dir) == {"a", "b"}


def tracer_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(l.split()[1]) for l in status.splitlines() if l.startswith("TracerPid:")), None)


def run_traced_waiting(prog, src, dst, strace_args, xrename_args=(), stderr=subprocess.PIPE):
    """Starts `xrename --trace -- prog src dst` (prog waits for a line on
    stdin), attaches `strace -f -p SUPERVISOR *strace_args` (the helpers it
    forks are followed; the program, traced by the supervisor, is not),
    then lets the program rename. Returns (exit code, stdout)."""
    import time
    sup = subprocess.Popen([str(XRENAME), "--trace", *xrename_args, "--", str(prog), str(src), str(dst)],
                           env=xrename_env(),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    st = None
    try:
        # strace must attach only once the supervisor has seized the
        # program: attached earlier, it would follow the fork and take the
        # program itself (the supervisor then cannot trace it: 125).
        for _ in range(3000):
            kids = Path(f"/proc/{sup.pid}/task/{sup.pid}/children").read_text().split()
            if any(tracer_of(int(k)) == sup.pid for k in kids):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the supervisor never started the program")
        st = subprocess.Popen(["strace", "-f", "-qq", "-p", str(sup.pid), *strace_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(3000):
            status = Path(f"/proc/{sup.pid}/status").read_text()
            if any(l.startswith("TracerPid:") and l.split()[1] != "0" for l in status.splitlines()):
                break
            time.sleep(0.01)
        else:
            st.kill()
            pytest.fail(f"strace never attached to the supervisor: {st.communicate()[1]} {strace_args}")
        out, _ = sup.communicate("go\n", timeout=60)
    finally:
        if sup.poll() is None:
            sup.kill()
        if st is not None:
            st.terminate()
            st.wait()
    return sup.returncode, out


def snapshot_of(path: Path):
    """What `path` holds, for comparing: bytes of a file, or a dict of a
    tree's entries and contents; None if absent."""
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        return {str(q.relative_to(path)): (q.read_bytes() if q.is_file() else "dir")
                for q in sorted(path.rglob("*"))}
    return path.read_bytes()


def helper_calls(trace: Path) -> list[tuple[str, int]]:
    """From a calibration (`strace -f -p SUPERVISOR`), the helper's calls
    an injection `NAME:...:when=N` can reach alone: strace counts calls per
    process, so a call whose ordinal the supervisor also reaches (its own
    opens and reads of /proc, say) would hit the supervisor instead (or as
    well), and is left out, with a margin."""
    import re
    from fault_harness import INJECTABLE
    lines = [l for l in trace.read_text().splitlines() if re.match(r"^\d+\s+\w+\(", l)]
    pids = [int(l.split()[0]) for l in lines]
    # The helper: the process that made the copy's calls (not the supervisor).
    helper = next(pid for pid, l in zip(pids, lines) if "copy_file_range(" in l or "sendfile(" in l)
    supervisor = pids[0]
    assert supervisor != helper, "test bug: the trace starts with the helper"
    calls, mine, theirs = [], {}, {}
    for pid, l in zip(pids, lines):
        name = re.match(r"^\d+\s+(\w+)\(", l)[1]
        if name not in INJECTABLE:
            continue  # a call this strace cannot name (syscall_0x1d1)
        if pid == helper:
            mine[name] = mine.get(name, 0) + 1
            calls.append((name, mine[name]))
        else:
            theirs[name] = theirs.get(name, 0) + 1
    reachable = [(n, k) for n, k in calls if n not in theirs or k > theirs[n] + 2]
    assert len(reachable) > 10, f"test bug: too few helper calls reachable alone: {calls}, supervisor: {theirs}"
    return reachable


def sweep_case(p, kind: str):
    """The object a helper sweep moves (a new file, a file replacing
    another, a tree), and `build()`, which empties both directories and
    makes it again."""
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    data = os.urandom(200_000)
    old = b"the old destination\n"

    def build():
        for d in (p.src_dir, p.dst_dir):
            for n in os.listdir(d):
                q = d / n
                shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else os.unlink(q)
        if kind == "tree":
            (src / "sub").mkdir(parents=True)
            (src / "a").write_bytes(data)
            (src / "sub" / "b").write_bytes(data[:1000])
            os.symlink("a", src / "link")
        else:
            src.write_bytes(data)
        if kind == "replace":
            dst.write_bytes(old)

    return src, dst, old, build


@pytest.mark.parametrize("fault", ["EIO", "ENOSPC", "ENOSYS"])
@pytest.mark.parametrize("kind", ["file", "replace", "tree"])
def test_each_call_of_the_helper_failing_keeps_the_invariants(fs_pair, tmp_path, fault, kind):
    """The fault-injection invariants, for a traced move (a new file, a
    file replacing another, a tree): a calibration run lists the calls the
    helper makes; then each of them in turn fails with `fault` (ENOSYS:
    never an errno rename returns, so EXDEV). Each time the program gets 0
    (the call was one xrename can do without, and the move is complete:
    source gone, destination whole) or an errno rename(2) documents with
    the source and the old destination as they were; never anything left
    behind."""
    need(shutil.which("strace") is not None, "strace missing")
    import errno as errno_mod
    import re
    from fault_harness import INJECTABLE, RENAME_ERRNOS, age
    prog = build_c(tmp_path, "waiting", WAITING_PROG, ["cc", "-static"])
    p = fs_pair
    src, dst, old, build = sweep_case(p, kind)

    def reset():
        build()
        # Not racy: no content compare, the same calls every run.
        for q in [src, *src.rglob("*")] if kind == "tree" else [src]:
            os.utime(q, ns=(1_500_000_000_000_000_000, 1_400_000_000_000_000_000), follow_symlinks=False)
        age(p.src_dir, p.dst_dir)  # and ctimes older than a clock tick

    reset()
    want = snapshot_of(src)
    trace = tmp_path / "calibrate.txt"
    code, out = run_traced_waiting(prog, src, dst, ["-e", f"trace={','.join(INJECTABLE)}", "-o", str(trace)])
    assert code == 0 and snapshot_of(dst) == want, (code, out)
    calls = helper_calls(trace)
    problems, codes = [], []
    for name, nth in calls:
        reset()
        code, out = run_traced_waiting(prog, src, dst,
                                       ["-o", "/dev/null", "-e", f"inject={name}:error={fault}:when={nth}"])
        codes.append(code)
        left = sorted(os.listdir(p.src_dir)) + sorted(os.listdir(p.dst_dir))
        what = f"{fault} at {name} #{nth}: exit {code}, left {left}"
        if code == 0:
            if os.path.lexists(src) or snapshot_of(dst) != want or left != ["f"]:
                problems.append(f"{what}: reported success, but the move is not complete")
        else:
            name_of = errno_mod.errorcode.get(code, str(code))
            if name_of not in RENAME_ERRNOS:
                problems.append(f"{what}: {name_of} is not an errno rename(2) returns")
            expected_left = ["f", "f"] if kind == "replace" else ["f"]
            if snapshot_of(src) != want or snapshot_of(dst) != (old if kind == "replace" else None) \
                    or left != expected_left:
                problems.append(f"{what}: failed, but the world changed")
    assert not problems, "\n".join(problems)
    # The injections landed: most calls of a move cannot fail unnoticed.
    assert sum(1 for c in codes if c != 0) > len(calls) // 3, f"injections seem not to land: {list(zip(calls, codes))}"


@pytest.mark.parametrize("kind", ["file", "replace", "tree"])
def test_the_helper_killed_at_any_call_never_loses_data_and_answers_truthfully(fs_pair, tmp_path, kind):
    """The helper is killed (SIGKILL, as by the OOM killer) at each of its
    calls in turn. The program lives on and must get the truth: 0 only if
    the rename has happened for every observer (source name gone,
    destination whole), else EXDEV with the source whole (at its name, or,
    if the helper died while taking it, at a hidden `.xrename-src-*` name)
    and the destination old or whole, never partial. Anything else left is
    hidden (`.xrename-*`, for `xrename clean`); no data is ever lost: the
    old destination, when replaced, is at a hidden name or the move
    finished. The log line of a killed helper says so."""
    need(shutil.which("strace") is not None, "strace missing")
    import errno
    import json
    import re
    from fault_harness import INJECTABLE, age
    prog = build_c(tmp_path, "waiting", WAITING_PROG, ["cc", "-static"])
    p = fs_pair
    src, dst, old, build = sweep_case(p, kind)
    log = tmp_path / "moves.log"

    def reset():
        build()
        age(p.src_dir, p.dst_dir)  # no racy compare: the same calls every run
        if log.exists():
            log.unlink()

    def traced(strace_args, logged=True):
        return run_traced_waiting(prog, src, dst, strace_args, xrename_args=["--log", str(log)] if logged else [])

    reset()
    want = snapshot_of(src)
    trace = tmp_path / "calibrate.txt"
    code, out = traced(["-e", f"trace={','.join(INJECTABLE)}", "-o", str(trace)])
    assert code == 0 and snapshot_of(dst) == want, (code, out)
    calls = helper_calls(trace)

    def hidden(d, infix=""):
        return [d / n for n in os.listdir(d) if n.startswith(".xrename-" + infix)]

    problems, codes = [], []
    for name, nth in calls:
        reset()
        # A killed helper makes the supervisor write a log line: a kill at
        # the helper's nth write would also reach that write.
        logged = name != "write"
        code, out = traced(["-o", "/dev/null", "-e", f"inject={name}:signal=SIGKILL:when={nth}"], logged)
        codes.append(code)
        visible = sorted(n for d in (p.src_dir, p.dst_dir) for n in os.listdir(d) if not n.startswith(".xrename-"))
        what = f"SIGKILL at {name} #{nth}: exit {code}, left {visible} + hidden " \
               f"{[q.name for d in (p.src_dir, p.dst_dir) for q in hidden(d)]}"
        lines = log.read_text().splitlines() if log.exists() else []
        killed = [json.loads(l) for l in lines if '"warning"' in l]
        if code == 0:
            if os.path.lexists(src) or snapshot_of(dst) != want or visible != ["f"]:
                problems.append(f"{what}: reported success, but the rename has not happened")
        elif code == errno.EXDEV:
            at_name = snapshot_of(src) == want
            aside = [q for q in hidden(p.src_dir, "src-") if snapshot_of(q) == want]
            if not (at_name or aside):
                problems.append(f"{what}: EXDEV, but the source is nowhere whole")
            old_dst = old if kind == "replace" else None
            if snapshot_of(dst) not in (old_dst, want):
                problems.append(f"{what}: EXDEV, and the destination is neither old nor whole")
            if kind == "replace" and snapshot_of(dst) == want \
                    and not any(snapshot_of(q) == old for q in hidden(p.dst_dir, "old-")):
                problems.append(f"{what}: EXDEV, and the old destination is lost")
            if logged and not killed:
                problems.append(f"{what}: no log line says the helper was killed: {lines}")
        else:
            problems.append(f"{what}: errno {code} for a killed helper")
    assert not problems, "\n".join(problems)
    # Kills landed before and after the point of no return.
    assert errno.EXDEV in codes and codes.count(0) >= 1, f"kills seem not to land: {list(zip(calls, codes))}"


# Run as uid 65534 inside `unshare -Urm`: two private tmpfs mounts, then each
# case; prints one "PASS name" or "FAIL name: why" line per case.
UNPRIVILEGED_SCRIPT = r'''
set -u
W=$1; X=$W/bin/xrename; B=$W/bin
cd "$W" && mkdir -p a b && mount -t tmpfs src a && mount -t tmpfs dst b || { echo "FAIL mounts"; exit 0; }
reset() { rm -rf a/* a/.x* b/* b/.x*; }
check() { if [ "$2" = "$3" ]; then echo "PASS $1"; else echo "FAIL $1: $4 (got $2, want $3)"; fi; }
for kind in static musl go raw int80; do
    prog=$B/$kind; extra=; [ "$kind" = raw ] && extra=raw2
    [ -x "$prog" ] || { echo "FAIL $kind: not built"; continue; }
    reset; printf 'moved as nobody\n' > a/f; chmod 640 a/f
    "$prog" a/f b/f $extra >/dev/null; check "$kind-untraced" $? 18 "EXDEV without xrename"
    "$X" --trace -- "$prog" a/f b/f $extra >/dev/null; rc=$?
    ok=$( [ $rc = 0 ] && [ ! -e a/f ] && [ "$(cat b/f)" = "moved as nobody" ] \
          && [ "$(stat -c %a b/f)" = 640 ] && [ -z "$(ls -A a)" ] && [ "$(ls -A b)" = f ] && echo yes)
    check "$kind-file" "$rc:$ok" "0:yes" "moved, source gone, mode kept, nothing left"
done
for kind in static go; do
    reset; mkdir -p a/t/x/y; echo deep > a/t/x/y/deep; ln -s x/y/deep a/t/link
    "$X" --trace -- "$B/$kind" a/t b/t >/dev/null; rc=$?
    ok=$( [ ! -e a/t ] && [ "$(cat b/t/x/y/deep)" = deep ] && [ "$(readlink b/t/link)" = x/y/deep ] && echo yes)
    check "$kind-tree" "$rc:$ok" "0:yes" "tree moved"
done
reset; echo new > a/f; echo old > b/f
"$X" --trace -- "$B/static" a/f b/f raw2 >/dev/null; check noreplace $? 17 "RENAME_NOREPLACE onto a file"
"$X" --trace -- "$B/static" a/f b/f xchg >/dev/null; check exchange $? 18 "RENAME_EXCHANGE"
check untouched "$(cat a/f)/$(cat b/f)/$(ls -A a b | tr '\n' ' ')" "new/old/a: f  b: f " "nothing changed"
'''


def test_as_an_unprivileged_user_in_a_user_namespace_every_program_is_served(progs, tmp_path):
    """The supervisor and the programs run as uid 65534 inside `unshare
    -Urm` (no privilege anywhere: the case of a developer or CI job that
    is not root): files and trees between two private tmpfs mounts, for
    static, musl, Go, raw-syscall and int 0x80 programs; NOREPLACE and
    EXCHANGE answer as the kernel would."""
    need(PRIVILEGED, "needs root to become uid 65534")
    need(shutil.which("setpriv") is not None, "setpriv missing")
    work = tmp_path / "unprivileged"
    (work / "bin").mkdir(parents=True)
    names = {"static": "static", "musl": "musl", "go": "go", "glibc-raw-syscall": "raw", "int80": "int80"}
    for kind, name in names.items():
        if kind in progs:
            shutil.copy(progs[kind], work / "bin" / name)
    shutil.copy(XRENAME, work / "bin" / "xrename")
    for q in [work, *work.rglob("*")]:
        os.chmod(q, 0o755)
    os.chown(work, 65534, 65534)
    with searchable_for_all(work):
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                               "--", "unshare", "-Urm", "--propagation", "private",
                               "sh", "-c", UNPRIVILEGED_SCRIPT, "sh", str(work)],
                              capture_output=True, text=True, timeout=300, env=xrename_env())
    results = proc.stdout.splitlines()
    failed = [l for l in results if not l.startswith("PASS ")]
    missing = [k for k in PROGRAMS if k not in progs]
    if missing and IN_CI:
        failed.append(f"toolchains missing in CI: {missing}")
    assert not failed and len(results) >= 15, f"{describe(proc)}\n" + "\n".join(failed)


# --------------------------------------------------------------------------
# From a hostile review of the supervisor
# --------------------------------------------------------------------------

def test_the_traced_program_starts_with_the_signal_dispositions_it_would_have():
    """Rust's runtime ignores SIGPIPE in xrename; an ignored disposition
    survives exec, so `yes | head -1` saw EPIPE instead of dying."""
    plain = run(["sh", "-c", "grep SigIgn /proc/self/status"])
    proc = run([XRENAME, "--trace", "--", "sh", "-c", "grep SigIgn /proc/self/status"])
    assert proc.returncode == 0 and proc.stdout == plain.stdout, (describe(plain), describe(proc))
    proc = run([XRENAME, "--trace", "--", "bash", "-c", "yes | head -1 >/dev/null; echo ${PIPESTATUS[0]}"])
    assert proc.stdout.strip() == "141", describe(proc)


# int 0x80 with pointers above 4 GiB: the kernel reads the low 32 bits of
# each register, so rename(argv[1], argv[2]) happens, not (argv[3], argv[4]).
I386_HIGH_PROG = r'''
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    char *lo = mmap((void *)0x10000000, 4096, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    char *hi = mmap((void *)0x110000000, 4096, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (lo == MAP_FAILED || hi == MAP_FAILED) { printf("mmap\n"); return 99; }
    strcpy(lo, argv[1]); strcpy(lo + 2048, argv[2]);
    strcpy(hi, argv[3]); strcpy(hi + 2048, argv[4]);
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(38L), "b"((uint64_t)hi), "c"((uint64_t)hi + 2048) : "memory");
    if (r == 0) { printf("ok\n"); return 0; }
    printf("%ld\n", -r);
    return (int)-r;
}
'''


def test_int80_arguments_are_read_as_the_kernel_reads_them(fs_pair, tmp_path):
    p = fs_pair
    prog = build_c(tmp_path, "i386hi", I386_HIGH_PROG, ["cc", "-static"])
    asked, victim = p.src_dir / "asked", p.src_dir / "victim"
    asked.write_bytes(b"asked\n")
    victim.write_bytes(b"victim\n")
    proc = run([XRENAME, "--trace", "--", prog, asked, p.dst_dir / "asked", victim, p.dst_dir / "victim"])
    assert proc.returncode == 0, describe(proc)
    assert entries(p.src_dir) == {"victim"} and entries(p.dst_dir) == {"asked"}, \
        (entries(p.src_dir), entries(p.dst_dir))
    assert (p.dst_dir / "asked").read_bytes() == b"asked\n"


# A thread that is not the process's leader renames argv[1] to argv[2].
THREAD_PROG = r'''
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
static char **args;
static long result;
static void *go(void *x) { (void)x; result = rename(args[1], args[2]) == 0 ? 0 : errno; return 0; }
int main(int argc, char **argv) {
    pthread_t t;
    args = argv;
    pthread_create(&t, 0, go, 0);
    pthread_join(t, 0);
    if (result == 0) { printf("ok\n"); return 0; }
    printf("%ld\n", result);
    return (int)result;
}
'''


def test_a_thread_in_another_mount_namespace_is_served(tmp_path, progs):
    """The helper enters the thread's namespaces; pidfd_open() refuses a
    thread that is not its process's leader, so every goroutine but one of
    a Go program in a private mount namespace got EXDEV."""
    need(PRIVILEGED or shutil.which("unshare") is not None, "unshare missing")
    prog = build_c(tmp_path, "thread", THREAD_PROG, ["cc", "-static"])
    work = tmp_path / "ns"
    (work / "a").mkdir(parents=True)
    (work / "b").mkdir()
    script = (f"mount -t tmpfs a {work}/a && mount -t tmpfs b {work}/b && echo data > {work}/a/f && "
              f"{prog} {work}/a/f {work}/b/f && cat {work}/b/f && ! test -e {work}/a/f")
    ns = ["unshare", "-m", "--propagation", "private"] if PRIVILEGED else ["unshare", "-Urm"]
    proc = run([XRENAME, "--trace", "--", *ns, "sh", "-c", script])
    assert proc.returncode == 0 and proc.stdout == "ok\ndata\n", describe(proc)
    if "go" in progs:
        # 16 goroutines, each renaming its own file.
        gosrc = tmp_path / "gor"
        gosrc.mkdir()
        (gosrc / "main.go").write_text(GO_THREADS_PROG)
        env = dict(os.environ, GOCACHE=str(tmp_path / "gocache"), GOPATH=str(tmp_path / "gopath"),
                   GO111MODULE="off", CGO_ENABLED="0", GOFLAGS="")
        built = subprocess.run(["go", "build", "-o", str(tmp_path / "gor.bin"), "main.go"], cwd=gosrc,
                               capture_output=True, text=True, env=env)
        assert built.returncode == 0, built.stderr
        script = (f"mount -t tmpfs a {work}/a && mount -t tmpfs b {work}/b && "
                  f"for i in $(seq 0 15); do echo $i > {work}/a/f$i; done && {tmp_path}/gor.bin {work}/a {work}/b && "
                  f"ls {work}/b | wc -l && ls {work}/a | wc -l")
        proc = run([XRENAME, "--trace", "--", *ns, "sh", "-c", script])
        assert proc.returncode == 0 and proc.stdout.split() == ["0", "16", "0"], describe(proc)
    elif IN_CI:
        pytest.fail("golang-go missing in CI")


GO_THREADS_PROG = r'''
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			n := fmt.Sprintf("f%d", i)
			if err := os.Rename(filepath.Join(os.Args[1], n), filepath.Join(os.Args[2], n)); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				fmt.Fprintln(os.Stderr, err)
			}
		}(i)
	}
	wg.Wait()
	fmt.Println(failed)
}
'''


# chroot(argv[1]), then rename(argv[2], argv[3]); prints the result and
# whether each name exists, as the program sees them.
CHROOT_RENAME_PROG = r'''
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (chroot(argv[1]) || chdir("/")) { perror("chroot"); return 99; }
    int r = rename(argv[2], argv[3]) == 0 ? 0 : errno;
    printf("%d %d %d\n", r, access(argv[2], F_OK) == 0, access(argv[3], F_OK) == 0);
    return 0;
}
'''


def test_a_root_that_is_a_bind_mount_of_ours_is_the_programs_root(tmp_path):
    """The program chroots into a bind mount of `/` (same inode as ours,
    another mount) over which a tmpfs is mounted at the destination: the
    file must land in that tmpfs, where the program sees it, not in the
    directory under it that only the supervisor sees."""
    need(PRIVILEGED, "needs root (bind mounts, chroot)")
    prog = build_c(tmp_path, "chren", CHROOT_RENAME_PROG, ["cc", "-static"])
    rb, dst_dir = tmp_path / "rb", tmp_path / "dst"
    rb.mkdir()
    dst_dir.mkdir()
    src = tmp_path / "src.txt"
    src.write_bytes(b"precious\n")
    inner_dst = Path(str(rb) + str(dst_dir))
    subprocess.run(["mount", "--bind", "/", str(rb)], check=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "t", str(inner_dst)], check=True)
        try:
            proc = run([XRENAME, "--trace", "--", prog, rb, src, dst_dir / "src.txt"])
            assert proc.returncode == 0 and proc.stdout == "0 0 1\n", describe(proc)
            assert (inner_dst / "src.txt").read_bytes() == b"precious\n"
            assert not (dst_dir / "src.txt").exists(), "moved under the program's mount, where it cannot see it"
        finally:
            subprocess.run(["umount", str(inner_dst)], check=True)
    finally:
        subprocess.run(["umount", str(rb)], check=True)


# Opens argv[1] and argv[2] (directories), then renames
# /proc/self/fd/A/argv[3] to /proc/self/fd/B/argv[3].
PROC_SELF_PROG = r'''
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int a = open(argv[1], O_RDONLY | O_DIRECTORY), b = open(argv[2], O_RDONLY | O_DIRECTORY);
    char s[256], d[256];
    snprintf(s, sizeof s, "/proc/self/fd/%d/%s", a, argv[3]);
    snprintf(d, sizeof d, "/proc/self/fd/%d/%s", b, argv[3]);
    if (rename(s, d) == 0) { printf("ok\n"); return 0; }
    printf("%d\n", errno);
    return errno;
}
'''


def test_paths_through_proc_self_keep_the_kernels_exdev(fs_pair, tmp_path):
    """/proc/self/fd/N names the descriptors of whoever resolves it: the
    helper would move other files (or fail with ENOTDIR). The kernel's
    EXDEV stands, and nothing anywhere changes."""
    p = fs_pair
    prog = build_c(tmp_path, "procself", PROC_SELF_PROG, ["cc", "-static"])
    (p.src_dir / "f").write_bytes(b"f\n")
    plain = run([prog, p.src_dir, p.dst_dir, "f"])
    assert plain.returncode == 18, describe(plain)
    log = tmp_path / "log"
    proc = run([XRENAME, "--trace", "--log", log, "--", prog, p.src_dir, p.dst_dir, "f"])
    assert proc.returncode == 18, describe(proc)
    assert entries(p.src_dir) == {"f"} and entries(p.dst_dir) == set()
    assert "descriptor link" in log.read_text(), log.read_text()


def test_a_long_move_shows_one_status_line_on_a_terminal_and_clears_it(fs_pair, tmp_path):
    """`xrename -- CMD` with stderr on a terminal: a move that takes longer
    than a second (the helper's fsync delayed 1.5 s by strace) shows what
    is moved, bytes and objects so far and a rate, on one line that is
    cleared when the move ends. With stderr a pipe: nothing at all."""
    import pty
    need(shutil.which("strace") is not None, "strace missing")
    prog = build_c(tmp_path, "waiting", WAITING_PROG, ["cc", "-static"])
    p = fs_pair
    src, dst = p.src_dir / "big", p.dst_dir / "big"
    slow = ["-o", "/dev/null", "-e", "inject=fsync:delay_enter=1500000:when=1"]

    src.write_bytes(os.urandom(3 << 20))
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))  # a narrow terminal
    try:
        code, out = run_traced_waiting(prog, src, dst, slow, stderr=slave)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert code == 0 and not src.exists(), (code, out)
    text = seen.decode(errors="replace")
    import re
    assert re.search(r"xrename: moving \S*big -> \S*big: 3\.0 MiB(, \d+ objects?)?, [\d.]+ \w+/s", text), repr(text)
    assert "/s" in text
    # Each drawing fits on one row of the 60-column terminal (a wrapped
    # line could not be erased).
    drawn = [seg for seg in text.split("\r\x1b[K") if seg.strip()]
    assert drawn and all(len(seg) <= 59 for seg in drawn), drawn
    # Drawn with a carriage return and erased at the end: nothing of it stays.
    assert text.rstrip("\r\n").endswith("\r\x1b[K"), repr(text[-80:])

    dst.unlink()
    src.write_bytes(os.urandom(3 << 20))
    code, out = run_traced_waiting(prog, src, dst, slow)
    assert code == 0, (code, out)
