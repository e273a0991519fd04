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
def test_a_program_the_preload_cannot_reach_moves_a_file_when_traced(fs_pair, progs, kind):
    p = fs_pair
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
def test_a_tree_moves_when_traced(fs_pair, progs, kind):
    p = fs_pair
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
