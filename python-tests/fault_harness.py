"""Fault injection for cross-device moves: a strace-driven driver and an
independent invariant checker (issue 5: prove a move never loses data).

The driver
----------
The program that renames is a tiny C child, `rename1 SRC DST` (built once
with cc into target/fault-child/ from `CHILD_SOURCE`), run under
`LD_PRELOAD=libxrename.so`. It calls rename(3) once, then getppid(2) (the
end-of-move marker in a trace), then prints `<errno> <preloaded>` (errno 0 on
success; preloaded 1 if libxrename.so is mapped).

1. `count_move_calls` traces one successful move of the same kind of object
   with `strace -f -qq -e trace=<INJECTABLE + rename family + getppid>` and
   numbers every call of each syscall from process start (that is how strace's
   `when=N` counts). The move's calls are those after the caller's rename that
   failed with EXDEV and before getppid; for each syscall it keeps their
   process-wide ordinals.
2. `run_injected` reruns the move with `-e inject=SYSCALL:error=ERRNO:when=N`
   or `-e inject=SYSCALL:signal=SIGKILL:when=N` (only the Nth call from process
   start is hit), with N one of those ordinals. Its own small trace (the
   injected syscall, the rename family and the marker) proves the injection
   really landed inside the move window; a scenario where it did not is
   reported, never silently counted.

strace only injects into syscalls it traces, so the injected syscall is always
in the trace set. `--seccomp-bpf` is not used: strace 6.1 does not deliver
`signal=` injections with it.

The checker
-----------
It never uses the library. Before a run it records the source object and the
old destination (type, mode, uid, gid, size, mtime_ns, nlink, xattrs, sha256;
for trees the canonical listing of `tree_harness.listing`, atime ignored) and
the entries of both parent directories; after the run `check_outcome`
applies the invariants of the outcome (success / error / killed).
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tree_harness import diff_listings, listing, sha256_noatime
from xrename_harness import LIBRARY, PRIVILEGED, REPO_ROOT, child_env

# --------------------------------------------------------------------------
# what is injected
# --------------------------------------------------------------------------

INJECTABLE = (
    "openat", "copy_file_range", "sendfile", "read", "pread64", "write", "pwrite64",
    "fsync", "fdatasync", "syncfs", "fchown", "fchownat", "fchmod", "fchmodat",
    "fsetxattr", "lsetxattr", "utimensat", "linkat", "renameat2", "unlinkat",
    "mkdirat", "mknodat", "symlinkat", "statx", "getdents64", "lseek", "ftruncate",
)
RENAME_FAMILY = ("rename", "renameat", "renameat2")
# What rename(2) documents (crates/engine/src/lib.rs, RENAME_ERRNOS): the program
# never sees another errno; an injected one outside this list gives EXDEV.
RENAME_ERRNOS = frozenset({
    "EACCES", "EBADF", "EBUSY", "EDQUOT", "EEXIST", "EFAULT", "EINVAL", "EIO", "EISDIR", "ELOOP", "EMLINK",
    "ENAMETOOLONG", "ENOENT", "ENOMEM", "ENOSPC", "ENOTDIR", "ENOTEMPTY", "EPERM", "EROFS", "EXDEV",
})
END_MARKER = "getppid"
TRACE_SET = tuple(dict.fromkeys(INJECTABLE + RENAME_FAMILY + (END_MARKER,)))

# Calls that write data or allocate quota (blocks or inodes, or change the
# owner a quota is charged to): these also get EDQUOT.
WRITE_LIKE = frozenset({
    "write", "pwrite64", "copy_file_range", "sendfile", "ftruncate", "fsync", "fdatasync",
    "syncfs", "fsetxattr", "lsetxattr", "mkdirat", "mknodat", "symlinkat", "linkat",
    "fchown", "fchownat",
})
# Data-path calls that also get EAGAIN.
READ_WRITE_COPY = frozenset({"read", "pread64", "write", "pwrite64", "copy_file_range", "sendfile"})

# Calls that only move data or make it durable, steps the kernel's rename
# never makes: a policy's (seccomp, LSM, FUSE server) refusal there, or a
# filesystem's EINVAL, is nothing rename(2) could say. Injected with
# POLICY_FAULTS, the program must get 0 (a fallback worked) or EXDEV.
DATA_ONLY = frozenset({
    "read", "pread64", "write", "pwrite64", "copy_file_range", "sendfile", "lseek",
    "fsync", "fdatasync", "syncfs", "ftruncate",
})
POLICY_FAULTS = ("EPERM", "EACCES", "EINVAL")

KILL = "SIGKILL"

# Fault classes: one pytest test per (object kind x pair x class).
FAULT_CLASSES = ("errors", "eintr", "eagain", "policy", "kill")


def faults_for(fault_class: str, syscall: str) -> list[str]:
    """The faults of `fault_class` that apply to `syscall`."""
    if fault_class == "errors":
        # ENOSYS: a call the kernel or a sandbox does not offer; rename(2)
        # never returns it, so the program must get EXDEV, nothing changed.
        return ["ENOSPC", "EIO", "ENOSYS"] + (["EDQUOT"] if syscall in WRITE_LIKE else [])
    if fault_class == "eintr":
        return ["EINTR"]
    if fault_class == "eagain":
        return ["EAGAIN"] if syscall in READ_WRITE_COPY else []
    if fault_class == "policy":
        return list(POLICY_FAULTS) if syscall in DATA_ONLY else []
    if fault_class == "kill":
        return [KILL]
    raise ValueError(fault_class)


FULL = os.environ.get("XRENAME_FAULT_FULL", "") == "1"


def sample(count: int, full: bool = FULL) -> list[int]:
    """Which of the calls 1..count to hit: all when count <= 20 (or full),
    else the first 10, the last 10 and about 10 spread evenly between."""
    if full or count <= 20:
        return list(range(1, count + 1))
    picked = set(range(1, 11)) | set(range(count - 9, count + 1))
    inner_lo, inner_hi = 11, count - 10
    if inner_hi >= inner_lo:
        span = inner_hi - inner_lo + 1
        k = min(10, span)
        for i in range(k):
            picked.add(inner_lo + (i * span + span // 2) // k)
    return sorted(picked)


# --------------------------------------------------------------------------
# the C child
# --------------------------------------------------------------------------

# The start of a child's source: `report(e)` ends its main with the
# end-of-move marker getppid(2), then "<errno> <preloaded>" on stdout
# (preloaded 1 if libxrename.so is mapped).
CHILD_REPORT = r'''
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(int e) {
    syscall(SYS_getppid);
    int preloaded = 0;
    FILE *maps = fopen("/proc/self/maps", "re");
    if (maps) {
        char line[4096];
        while (fgets(line, sizeof line, maps))
            if (strstr(line, "libxrename"))
                preloaded = 1;
        fclose(maps);
    }
    printf("%d %d\n", e, preloaded);
    return fflush(stdout) == 0 ? 0 : 3;
}
'''

CHILD_SOURCE = CHILD_REPORT + r'''
/* rename1 SRC DST: one rename(3), then report() (errno 0 on success). */
int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: rename1 SRC DST\n");
        return 2;
    }
    int r = rename(argv[1], argv[2]);
    return report(r == 0 ? 0 : errno);
}
'''


def build_child(name: str = "rename1", source: str = CHILD_SOURCE) -> Path:
    """Compiles `source` (CHILD_SOURCE) once (keyed by its hash) into
    target/fault-child/`name`-HASH."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    out_dir = REPO_ROOT / "target" / "fault-child"
    exe = out_dir / f"{name}-{digest}"
    if exe.is_file():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"{name}-{digest}.c"
    src.write_text(source)
    tmp = out_dir / f".{name}-{digest}.{os.getpid()}"
    cc = shutil.which("cc") or shutil.which("gcc")
    proc = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, f"building the fault child failed:\n{proc.stderr}"
    os.replace(tmp, exe)
    return exe


# --------------------------------------------------------------------------
# traces
# --------------------------------------------------------------------------

LINE = re.compile(r"^(?:(?P<tid>\d+)\s+)?(?P<name>\w+)\((?P<rest>.*)$")
RET = re.compile(r"\)\s+=\s+(?P<ret>-?\d+|\?)(?:\s+(?P<err>E[A-Z0-9]+))?")


@dataclass
class Call:
    index: int        # position in the trace
    name: str
    ordinal: int      # this call is the ordinal-th call of `name` by its thread (strace's when= counts per tracee)
    ret: str
    err: str | None
    text: str
    tid: int = 0      # the thread (tracee) that made it


def parse_trace(text: str) -> list[Call]:
    """The calls of a trace. Ordinals count per thread: strace's `when=N`
    counts the calls of each tracee apart (the engine's lease-probe child
    and its threads are tracees of their own)."""
    calls: list[Call] = []
    seen: dict[tuple[int, str], int] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue  # --- signals ---, +++ exits +++
        name, tid = m["name"], int(m["tid"] or 0)
        seen[(tid, name)] = seen.get((tid, name), 0) + 1
        r = RET.search(line)
        calls.append(Call(len(calls), name, seen[(tid, name)], r["ret"] if r else "?",
                          r["err"] if r else None, line, tid))
    return calls


def main_tid(calls: list[Call]) -> int:
    """The thread that called rename (and got EXDEV): the one injections by
    ordinal aim at."""
    return next((c.tid for c in calls if c.name in RENAME_FAMILY and c.err == "EXDEV"), 0)


def move_window(calls: list[Call]) -> tuple[int, int]:
    """(first, end): calls[first:end] are the calls the move made, from the
    one after the caller's rename that failed with EXDEV up to the marker."""
    start = next((c.index for c in calls if c.name in RENAME_FAMILY and c.err == "EXDEV"), None)
    assert start is not None, "no rename failing with EXDEV in the trace"
    end = next((c.index for c in calls[start:] if c.name == END_MARKER), len(calls))
    return start + 1, end


def strace_argv(child: Path, src: Path, dst: Path, trace: str, out: str, inject: str | None) -> list[str]:
    argv = ["strace", "-f", "-qq", "-e", f"trace={trace}", "-o", out]
    if inject:
        argv += ["-e", f"inject={inject}"]
    return argv + ["-E", f"LD_PRELOAD={LIBRARY}", "--", str(child), str(src), str(dst)]


@dataclass
class Outcome:
    kind: str                 # "ok", "error", "killed", "broken"
    errno: int = 0
    preloaded: bool = False
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    trace: str = ""

    @property
    def errname(self) -> str:
        return errno_mod.errorcode.get(self.errno, str(self.errno))

    def describe(self) -> str:
        if self.kind == "ok":
            return "rename returned 0"
        if self.kind == "error":
            return f"rename failed with {self.errname}"
        if self.kind == "killed":
            return "child killed by SIGKILL"
        return f"child broke: rc={self.returncode} stdout={self.stdout!r} stderr={self.stderr[-500:]!r}"


CHILD_TIMEOUT_S = 60  # an upper bound so a hang fails, never a timing assertion


def run_move(child: Path, src: Path, dst: Path, trace_file: Path, trace: str,
             inject: str | None = None) -> Outcome:
    # Own session, so a hung run can be ended as a whole: strace and its child.
    proc = subprocess.Popen(strace_argv(child, src, dst, trace, str(trace_file), inject),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(preload=False), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[hung: no exit after {CHILD_TIMEOUT_S} s, killed]"
    text = trace_file.read_text(errors="replace") if trace_file.exists() else ""
    out = Outcome("broken", returncode=proc.returncode, stdout=stdout, stderr=stderr, trace=text)
    if "[hung:" in stderr:
        return out
    if proc.returncode in (-9, 128 + 9) and stdout == "":
        out.kind = "killed"
        return out
    m = re.fullmatch(r"(\d+) ([01])\n", stdout)
    if proc.returncode == 0 and m:
        out.errno, out.preloaded = int(m[1]), m[2] == "1"
        out.kind = "ok" if out.errno == 0 else "error"
    return out


def count_move_calls(child: Path, src: Path, dst: Path, trace_file: Path) -> tuple[Outcome, dict[str, list[int]]]:
    """One clean traced move: for each injectable syscall the move makes, the
    process-wide ordinals (strace's `when=` numbers) of its calls in the move."""
    outcome = run_move(child, src, dst, trace_file, ",".join(TRACE_SET))
    calls = parse_trace(outcome.trace)
    first, end = move_window(calls)
    me = main_tid(calls)
    counts: dict[str, list[int]] = {}
    for c in calls[first:end]:
        # Only the calling thread's calls: another tracee's N-th call is
        # not the N-th call strace counts for the caller.
        if c.name in INJECTABLE and c.tid == me:
            counts.setdefault(c.name, []).append(c.ordinal)
    return outcome, counts


def injection_landed(outcome: Outcome, syscall: str, ordinal: int) -> str | None:
    """None if the trace shows the injection hit `syscall` call `ordinal`
    inside the move window, else what went wrong."""
    try:
        calls = parse_trace(outcome.trace)
        first, end = move_window(calls)
    except AssertionError as e:
        return str(e)
    me = main_tid(calls)
    hit = [c for c in calls if c.name == syscall and c.ordinal == ordinal and c.tid == me]
    if not hit:
        return f"the trace has no call #{ordinal} of {syscall}: the move made fewer calls than when counted"
    c = hit[0]
    if not first <= c.index < end:
        return f"call #{ordinal} of {syscall} fell outside the move window: {c.text.strip()[:200]}"
    if outcome.kind == "killed":
        if c.index != len(calls) - 1:
            return f"child killed, but not at {syscall} #{ordinal}"
    elif "(INJECTED)" not in c.text:
        return f"{syscall} #{ordinal} was not injected: {c.text.strip()[:200]}"
    return None


def move_trace_excerpt(text: str, around: int = 30) -> str:
    """The move's part of a full trace, centred on the injected call (for
    failure reports): up to `around` calls before it and after it."""
    calls = parse_trace(text)
    try:
        first, end = move_window(calls)
    except AssertionError:
        first, end = 0, len(calls)
    hit = next((c.index for c in calls if "(INJECTED)" in c.text), None)
    if hit is None and calls and calls[-1].ret == "?":
        hit = calls[-1].index  # killed there
    lo = max(0, first - 1) if hit is None else max(first - 1, hit - around)
    hi = min(len(calls), end + 1) if hit is None else min(len(calls), end + 1, hit + around + 1)
    lines = []
    if lo > max(0, first - 1):
        lines.append(f"... {lo - first + 1} earlier calls of the move ...")
    lines += [c.text for c in calls[lo:hi]]
    if hi < min(len(calls), end + 1):
        lines.append(f"... {min(len(calls), end + 1) - hi} later calls ...")
    lines += [ln for ln in text.splitlines() if ln.split(None, 1)[-1].startswith(("+++", "---"))]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------

PAST_NS = 1_100_000_000 * 10**9


def xattrs_supported(*dirs: Path) -> bool:
    for d in dirs:
        probe = d / ".xattr-probe"
        probe.write_bytes(b"")
        try:
            os.setxattr(probe, "user.probe", b"1")
        except OSError:
            return False
        finally:
            probe.unlink()
    return True


def make_file(path: Path, seed: int, size: int, mode: int, with_xattr: bool) -> None:
    rng = random.Random(seed)
    path.write_bytes(rng.randbytes(size))
    if PRIVILEGED:
        os.chown(path, 1234, 5678)
    os.chmod(path, mode)
    if with_xattr:
        os.setxattr(path, "user.fault.seed", b"%d" % seed)
    os.utime(path, ns=(PAST_NS + seed * 7919, PAST_NS + seed * 104729 + 123))


# The engine compares by content what changed within a clock tick of its
# copy (racy entries, see README): that adds calls to the move. A fixture
# made a moment before the move would be racy in one run and not in the
# next, and the when= numbers of a calibration would not match. So each
# fixture is left to grow older than that tick (20 ms on these
# nanosecond filesystems) before its move: this makes timestamps old, it
# synchronises nothing.
RACY_NS = 30_000_000


def age(*roots: Path) -> None:
    """Waits until everything under `roots` changed more than RACY_NS ago."""
    newest = 0
    for root in roots:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for n in [".", *dirnames, *filenames]:
                newest = max(newest, os.lstat(os.path.join(dirpath, n)).st_ctime_ns)
    delay = newest + RACY_NS - time.time_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


def make_tree(root: Path, seed: int, with_xattr: bool) -> None:
    """3 directories, 6 files (regular, empty, hard link pair, symlink, fifo)."""
    rng = random.Random(seed)
    os.mkdir(root)
    os.mkdir(root / "a")
    os.mkdir(root / "a" / "b")
    (root / "top.txt").write_bytes(rng.randbytes(100))
    (root / "a" / "data.bin").write_bytes(rng.randbytes(70_000))
    (root / "a" / "b" / "empty").write_bytes(b"")
    os.link(root / "top.txt", root / "a" / "b" / "top-hardlink")
    os.symlink("a/data.bin", root / "link-to-data")
    os.mkfifo(root / "a" / "fifo")
    os.chmod(root / "a" / "data.bin", 0o600)
    os.chmod(root / "a" / "b", 0o750)
    if PRIVILEGED:
        os.chown(root / "a" / "data.bin", 1234, 5678)
        os.lchown(root / "link-to-data", 1234, 5678)
    if with_xattr:
        os.setxattr(root / "a" / "data.bin", "user.fault", b"file")
        os.setxattr(root / "a", "user.fault", b"dir")
    rels = ["top.txt", "a/data.bin", "a/b/empty", "link-to-data", "a/fifo"]
    for i, rel in enumerate(rels):
        os.utime(root / rel, ns=(PAST_NS + i * 1001, PAST_NS + i * 999_999_937 + seed), follow_symlinks=False)
    for i, rel in enumerate(["a/b", "a", "."]):
        os.utime(root / rel, ns=(PAST_NS + i * 31, PAST_NS + i * 1_000_003 + seed))


def record(path: Path):
    """A comparable record of the object at path (None if absent); atime
    is left out (reading the source during a move may update it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return {"tree": listing(path)}
    r = {
        "type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size, "nlink": st.st_nlink,
        "mtime_ns": st.st_mtime_ns,
        "xattrs": {n: os.getxattr(path, n, follow_symlinks=False).hex()
                   for n in sorted(os.listxattr(path, follow_symlinks=False))},
    }
    if stat.S_ISREG(st.st_mode):
        r["sha256"] = sha256_noatime(os.fsencode(path))
    return r


def record_diff(expected, actual) -> list[str]:
    """Differences between two records (empty if the same object)."""
    if expected is None or actual is None:
        return [] if expected is actual else [f"expected {'nothing' if expected is None else 'an object'}, "
                                              f"found {'nothing' if actual is None else 'an object'}"]
    if "tree" in expected or "tree" in actual:
        if "tree" not in expected or "tree" not in actual:
            return ["a directory where a file was expected, or the reverse"]
        return diff_listings(expected["tree"], actual["tree"], "expected", "found", ignore=("atime_ns",))
    return [f"{k}: expected={expected.get(k)!r} found={actual.get(k)!r}"
            for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]


# --------------------------------------------------------------------------
# scenarios and invariants
# --------------------------------------------------------------------------

TEMP_PREFIX = ".xrename-"


@dataclass
class Scenario:
    kind: str          # "file-new", "file-replace", "tree-new"
    pair: str
    syscall: str
    nth: int           # the nth call of syscall in the move
    count: int         # how many the move makes
    ordinal: int       # strace's when= (from process start)
    fault: str         # an errno name or "SIGKILL"

    def describe(self) -> str:
        what = "kill (SIGKILL) at" if self.fault == KILL else f"{self.fault} from"
        return (f"[{self.kind} {self.pair}] {what} {self.syscall} call {self.nth}/{self.count} of the move "
                f"(when={self.ordinal})")

    def inject_spec(self) -> str:
        if self.fault == KILL:
            return f"{self.syscall}:signal=SIGKILL:when={self.ordinal}"
        return f"{self.syscall}:error={self.fault}:when={self.ordinal}"


@dataclass
class Before:
    src_name: str
    dst_name: str
    src: dict
    old_dst: dict | None
    src_entries: set[str]
    dst_entries: set[str]


@dataclass
class Checked:
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def entries(d: Path) -> set[str]:
    return set(os.listdir(d))


def check_outcome(sc: Scenario, out: Outcome, before: Before, src_dir: Path, dst_dir: Path) -> Checked:
    """Applies the invariants of the outcome; returns violations (and notes:
    harmless observations, e.g. hidden leftovers after a successful move)."""
    res = Checked()
    v = res.violations
    src_now = record(src_dir / before.src_name)
    dst_now = record(dst_dir / before.dst_name)
    src_entries, dst_entries = entries(src_dir), entries(dst_dir)
    src_extra = src_entries - before.src_entries
    dst_extra = dst_entries - before.dst_entries - {before.dst_name}

    def show(diffs: list[str]) -> str:
        return "; ".join(diffs[:6]) + (f" (+{len(diffs) - 6} more)" if len(diffs) > 6 else "")

    if out.kind == "broken":
        v.append(f"child did not finish normally: {out.describe()}")
        return res
    if out.kind in ("ok", "error") and not out.preloaded:
        v.append("libxrename.so was not mapped in the child")

    if sc.fault == KILL and out.kind != "killed":
        v.append(f"the kill did not happen ({out.describe()})")
    if sc.fault != KILL and out.kind == "killed":
        v.append("child was killed, but only an error was injected")

    if out.kind == "ok":
        d = record_diff(before.src, dst_now)
        if d:
            v.append(f"rename returned 0 but the destination is not the source: {show(d)}")
        if src_now is not None:
            v.append("rename returned 0 but the source still exists"
                     + ("" if not record_diff(before.src, src_now) else " (and is no longer what it was: "
                        + show(record_diff(before.src, src_now)) + ")"))
        extra = sorted(src_extra) + sorted(dst_extra)
        if extra:
            (v if any(not e.startswith(TEMP_PREFIX) for e in extra) else res.notes).append(
                f"after a successful move, extra entries: {extra}")
    elif out.kind == "error":
        if sc.fault == "EINTR":
            v.append(f"EINTR was not retried: {out.describe()}")
        elif out.errname not in RENAME_ERRNOS:
            v.append(f"rename reported {out.errname}, which rename(2) never returns ({sc.fault} was injected)")
        elif sc.fault in POLICY_FAULTS and sc.syscall in DATA_ONLY:
            if out.errname != "EXDEV":
                    v.append(f"rename reported {out.errname} for {sc.fault} at {sc.syscall}, a step rename never "
                         "makes (must be EXDEV)")
        elif out.errname != sc.fault and not (out.errname == "EXDEV" and sc.fault not in RENAME_ERRNOS):
            v.append(f"rename reported {out.errname}, but {sc.fault} was injected")
        d = record_diff(before.src, src_now)
        if d:
            v.append(f"rename failed but the source changed: {show(d)}")
        d = record_diff(before.old_dst, dst_now)
        if d:
            what = "old destination" if before.old_dst is not None else "destination (there was none)"
            v.append(f"rename failed but the {what} changed: {show(d)}")
        if src_extra or dst_extra:
            v.append(f"rename failed and left extra entries: source dir {sorted(src_extra)}, "
                     f"destination dir {sorted(dst_extra)}")
    elif out.kind == "killed":
        src_ok = src_now is not None and not record_diff(before.src, src_now)
        dst_complete = dst_now is not None and not record_diff(before.src, dst_now)
        if src_now is not None and not src_ok:
            v.append(f"after the kill the source name holds a changed or partial object: "
                     f"{show(record_diff(before.src, src_now))}")
        if not src_ok and not dst_complete:
            v.append("after the kill neither the source nor the destination is complete: data lost"
                     + ("" if dst_now is None else f" (destination: {show(record_diff(before.src, dst_now))})"))
        if src_now is None and not dst_complete:
            v.append("after the kill the source is gone but the destination is not complete")
        if dst_now is not None and not dst_complete:
            if before.old_dst is None:
                v.append(f"after the kill the destination name holds a partial object: "
                         f"{show(record_diff(before.src, dst_now))}")
            elif record_diff(before.old_dst, dst_now):
                v.append("after the kill the destination is neither the old destination intact nor the "
                         f"complete new object: {show(record_diff(before.old_dst, dst_now))}")
        if before.old_dst is not None and dst_now is None:
            v.append("after the kill the old destination is gone and nothing replaced it")
        bad = [e for e in sorted(src_extra) + sorted(dst_extra) if not e.startswith(TEMP_PREFIX)]
        if bad:
            v.append(f"after the kill, leftovers not matching {TEMP_PREFIX}*: {bad}")
        hidden = [e for e in sorted(src_extra) + sorted(dst_extra) if e.startswith(TEMP_PREFIX)]
        if hidden:
            res.notes.append(f"after the kill, hidden leftovers (removed by the test): {len(hidden)}")
    return res


def remove_leftovers(*dirs: Path) -> None:
    for d in dirs:
        for name in os.listdir(d):
            if name.startswith(TEMP_PREFIX):
                p = d / name
                if p.is_dir() and not p.is_symlink():
                    for sub, dnames, _ in os.walk(p):
                        for dn in dnames:
                            os.chmod(os.path.join(sub, dn), 0o700)
                    os.chmod(p, 0o700)
                    shutil.rmtree(p)
                else:
                    p.unlink()
