"""Data safety, round 2 (issue 10): what a move must never lose.

Each test names the behaviour it proves:

1. a regular file open for writing (by the caller or anyone else, through a
   descriptor or a shared writable mapping) is not moved: EXDEV, nothing
   changed, log step "open for writing"; a file open read-only is moved;
2. rename is a claim: two movers of one source to two destinations on
   another filesystem: one gets 0, the other ENOENT, the object is at exactly
   one destination and the other destination is as it was;
3. coarse (1 s) timestamps (`mkfs.ext4 -I 128`) hide neither a same-size
   write nor a chmod made during the move, and do not keep a moved tree's
   source alive;
4. a hard link made inside a source tree during the move is not deleted;
5. where O_TMPFILE is missing, a hidden name holding an old destination is
   always `.xrename-old-*`, so `xrename clean --remove` never deletes it;
6. a transient EIO from one statx while the old source tree is deleted is
   retried: no `.xrename-src-*` is left;
7. a bind-mounted file inside a source tree gives EBUSY, nothing changed;
8. the source is read with O_NOATIME where permitted.

"During the move" is made deterministic with strace: the renaming child (the
C program `rename1` of fault_harness) runs under
`strace -f -e inject=SYSCALL:signal=SIGSTOP:when=N`. strace sends the signal
at the entry of the Nth call of SYSCALL (counted from process start); the
call is not interrupted (none of these block), and the child stops as it
returns, in a group-stop that lasts until the test sends SIGCONT. The
ordinal N comes from a calibration run of the same move on the same paths
(the scenario is rebuilt identically afterwards). The test waits for
strace's own `--- stopped by SIGSTOP ---` line, then checks from the trace
that the last call before the stop is the targeted one and comes after the
caller's rename failed with EXDEV (that is, inside the move), and checks
the filesystem state the stop must show (e.g. the destination installed).
Waiting for that line polls the trace file: it waits for an event, nothing
is timed, and the deadline only turns a hang into a failure.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import fault_harness as fh
from tree_harness import build_small_tree, diff_listings, leftovers, listing, make_chain
from xrename_harness import (
    LIBRARY, PAST_ATIME_NS, PAST_MTIME_NS, PRIVILEGED, REPO_ROOT, assert_cross_device, child_env,
    loop_devices_usable, move_with, need, random_bytes, run_child, Pair,
)

TEMP_PREFIX = ".xrename-"
OPEN_FOR_WRITING = "open for writing"
TRACE = ",".join(fh.TRACE_SET)
DEADLINE_S = 60  # upper bound for any wait: a hang fails, nothing is timed


# --------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------

def need_strace() -> None:
    need(shutil.which("strace") is not None, "strace not installed")
    probe = subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True, text=True)
    need(probe.returncode == 0, f"strace cannot trace here: {probe.stderr.strip()}")


@pytest.fixture(scope="module")
def child() -> Path:
    """The C renaming child `rename1 SRC DST` of fault_harness."""
    need(shutil.which("cc") is not None or shutil.which("gcc") is not None, "no C compiler (cc/gcc)")
    return fh.build_child()


def hidden(*dirs: Path) -> list[str]:
    """`.xrename-*` entries directly in the given directories."""
    out = []
    for d in dirs:
        if d.is_dir():
            out += [str(d / n) for n in sorted(os.listdir(d)) if n.startswith(TEMP_PREFIX)]
    return out


def clear_dir(d: Path) -> None:
    """Empties d (its entries, hidden leftovers included), keeping d."""
    for name in os.listdir(d):
        p = d / name
        if p.is_dir() and not p.is_symlink():
            for sub, dnames, _ in os.walk(p):
                for dn in dnames:
                    if not os.path.islink(os.path.join(sub, dn)):
                        os.chmod(os.path.join(sub, dn), 0o700)
            os.chmod(p, 0o700)
            shutil.rmtree(p)
        else:
            p.unlink()


def ctime_s(path: Path) -> int:
    return os.lstat(path).st_ctime_ns // 1_000_000_000


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_dirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def cross_pair(src_root: Path, dst_root: Path, name: str) -> Pair:
    pair = Pair(name, src_root / "src", dst_root / "dst", False)
    make_dirs(pair.src_dir, pair.dst_dir)
    assert_cross_device(pair)
    return pair


# --------------------------------------------------------------------------
# the renaming child, plain or under strace
# --------------------------------------------------------------------------

def parse_outcome(proc_rc: int, stdout: str, stderr: str, trace: str = "") -> fh.Outcome:
    out = fh.Outcome("broken", returncode=proc_rc, stdout=stdout, stderr=stderr, trace=trace)
    if proc_rc in (-9, 128 + 9) and stdout == "":
        out.kind = "killed"
        return out
    m = re.fullmatch(r"(\d+) ([01])\n", stdout)
    if proc_rc == 0 and m:
        out.errno, out.preloaded = int(m[1]), m[2] == "1"
        out.kind = "ok" if out.errno == 0 else "error"
    return out


class Mover:
    """`rename1 SRC DST` under the shim, started now, running in its own
    session (so that teardown can end it as a whole). Under strace unless
    `traced` is False; `injects` are strace `inject=` specs."""

    def __init__(self, child: Path, src: Path, dst: Path, trace_file: Path | None = None,
                 injects: tuple[str, ...] = (), env_extra: dict[str, str] | None = None,
                 preload: str | None = None, nofile: int | None = None):
        self.trace_file = trace_file
        preload = preload or str(LIBRARY)
        if trace_file is None:
            argv = [str(child), str(src), str(dst)]
            env = child_env({"LD_PRELOAD": preload})
        else:
            argv = ["strace", "-f", "-qq", "-e", f"trace={TRACE}", "-o", str(trace_file)]
            for spec in injects:
                argv += ["-e", f"inject={spec}"]
            argv += ["-E", f"LD_PRELOAD={preload}", "--", str(child), str(src), str(dst)]
            env = child_env(preload=False)
        env.update(env_extra or {})
        limit = None
        if nofile is not None:
            import resource
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))  # noqa: E731
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True, preexec_fn=limit)
        self.pid: int | None = None  # the traced child's pid, once it stopped
        self.outcome: fh.Outcome | None = None

    def trace(self) -> str:
        if self.trace_file is None or not self.trace_file.exists():
            return ""
        return self.trace_file.read_text(errors="replace")

    def wait_stopped(self) -> bool:
        """Waits until the traced child is in its SIGSTOP group-stop (True) or
        the run has ended (False)."""
        end = time.monotonic() + DEADLINE_S
        while True:
            text = self.trace()
            m = re.search(r"^(\d+)\s+--- stopped by SIGSTOP ---", text, re.M)
            if m:
                self.pid = int(m[1])
                return True
            if self.proc.poll() is not None:
                return False
            if time.monotonic() > end:
                self.kill()
                pytest.fail(f"the mover neither stopped nor ended within {DEADLINE_S} s:\n{text[-3000:]}")
            time.sleep(0.002)

    def cont(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)

    def done(self) -> bool:
        return self.proc.poll() is not None

    def finish(self) -> fh.Outcome:
        if self.outcome is None:
            try:
                stdout, stderr = self.proc.communicate(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.kill()
                stdout, stderr = self.proc.communicate()
                stderr += f"\n[hung: no exit after {DEADLINE_S} s, killed]"
            self.outcome = parse_outcome(self.proc.returncode, stdout, stderr, self.trace())
        return self.outcome

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.communicate()


@pytest.fixture
def movers(mounts):
    """Movers started by a test; any still running at teardown (a failed
    test) are killed before the mounts are taken down."""
    started: list[Mover] = []
    yield started
    for m in started:
        m.kill()


def start(movers: list, *a, **kw) -> Mover:
    m = Mover(*a, **kw)
    movers.append(m)
    return m


def run_traced(child, src, dst, trace_file, injects=(), **kw) -> fh.Outcome:
    m = Mover(child, src, dst, trace_file, injects, **kw)
    return m.finish()


def without_tmpfile(child, src, dst, trace_file, reset) -> tuple[str]:
    """The strace injection that makes the move's O_TMPFILE open fail
    (EOPNOTSUPP, as on a filesystem without it), found by one plain move
    after `reset()`: the move then takes the named-temp path."""
    reset()
    out = run_traced(child, src, dst, trace_file)
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    tmpfile = [c for c in calls[first:end] if c.name == "openat" and "O_TMPFILE" in c.text]
    assert tmpfile, "precondition: the move uses O_TMPFILE"
    return (f"openat:error=EOPNOTSUPP:when={tmpfile[0].ordinal}",)


def window(out: fh.Outcome) -> tuple[list[fh.Call], int, int]:
    calls = fh.parse_trace(out.trace)
    first, end = fh.move_window(calls)
    return calls, first, end


def quoted(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def install_call(calls: list[fh.Call], first: int, end: int, dst_name: str) -> fh.Call:
    """The call that put the copy at the destination name: the first
    successful link or rename in the move whose new name is `dst_name`."""
    for c in calls[first:end]:
        if c.name in ("linkat", "renameat2", "renameat") and c.ret == "0":
            q = quoted(c.text)
            if q and (q[-1] == dst_name or q[-1].endswith("/" + dst_name)):
                return c
    raise AssertionError(f"calibration: no call installs {dst_name!r}:\n"
                         + "\n".join(c.text for c in calls[first:end]))


DATA_CALLS = ("copy_file_range", "sendfile", "write", "pwrite64")


def last_data_call(calls: list[fh.Call], first: int, upto: int) -> fh.Call:
    data = [c for c in calls[first:upto] if c.name in DATA_CALLS and c.ret not in ("?", "0")
            and not c.ret.startswith("-")]
    assert data, "calibration: the move copied no data"
    return data[-1]


def first_named(calls: list[fh.Call], first: int, end: int, name: str) -> fh.Call:
    for c in calls[first:end]:
        if c.name == name and c.ret != "?" and not c.ret.startswith("-"):
            return c
    raise AssertionError(f"calibration: no successful {name} in the move:\n"
                         + "\n".join(c.text for c in calls[first:end]))


def copy_done_call(calls: list[fh.Call], first: int, install: fh.Call) -> fh.Call:
    """For a tree: the call that ends the copy before its install (the
    syncfs making it durable; else the last call before the install)."""
    synced = [c for c in calls[first:install.index] if c.name == "syncfs" and c.ret == "0"]
    return synced[-1] if synced else calls[install.index - 1]


def calibrate(child, src: Path, dst: Path, tmp_path: Path, reset, injects=()):
    """Runs the move once unstopped and unattacked, after `reset()`: its
    calls, the move's window in them and its install call."""
    reset()
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace", injects)
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls, first, end = window(out)
    return calls, first, end, install_call(calls, first, end, dst.name)


def stop_spec(c: fh.Call) -> str:
    return f"{c.name}:signal=SIGSTOP:when={c.ordinal}"


def assert_stopped_at(m: Mover, target: fh.Call) -> None:
    """The mover stopped right after `target` (same syscall and ordinal),
    and inside the move: after the caller's rename failed with EXDEV."""
    calls = fh.parse_trace(m.trace())
    assert calls, "empty trace"
    first, _ = fh.move_window(calls)
    last = calls[-1]
    assert (last.name, last.ordinal) == (target.name, target.ordinal), (
        f"the stop did not land after {target.name} #{target.ordinal}; last call: {last.text}")
    assert last.index >= first, f"the stop landed before the move began: {last.text}"
    assert last.ret != "?" and not last.ret.startswith("-"), f"the targeted call failed: {last.text}"


def stop_and(m: Mover, target: fh.Call, what: str) -> None:
    stopped = m.wait_stopped()
    if not stopped:
        out = m.finish()
        pytest.fail(f"the mover was to stop {what} ({target.name} #{target.ordinal}) but ended: "
                    f"{out.describe()}\n{fh.move_trace_excerpt(out.trace)}")
    assert_stopped_at(m, target)


def log_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------
# 1. open writers
# --------------------------------------------------------------------------

SIZE = 64 * 1024


def assert_refused_for_open_writer(run, log: Path, src: Path, dst: Path, ino: int,
                                   content: bytes, dirs: tuple[Path, ...]) -> None:
    r = run.result
    assert not r["ok"], ("rename returned 0 for a file open for writing: the writer's later "
                         "writes go to the removed source and are lost")
    assert r["errname"] == "EXDEV", f"expected EXDEV, got {r['errname']}: {r['error']}"
    assert os.lstat(src).st_ino == ino, "the source is not the same inode any more"
    assert read(src) == content, "the source's content is not what its writers wrote"
    assert not os.path.lexists(dst), "the destination was created"
    assert not hidden(*dirs), f"hidden names left behind: {hidden(*dirs)}"
    lines = [ln for ln in log_lines(log) if ln.get("src") == str(src)]
    assert lines, f"no log line for the refused move in {log}: {log_lines(log)}"
    assert lines[-1].get("result") == "EXDEV", lines[-1]
    assert lines[-1].get("step") == OPEN_FOR_WRITING, (
        f"log step is {lines[-1].get('step')!r}, want {OPEN_FOR_WRITING!r}: {lines[-1]}")


@pytest.fixture(params=["tmpfs-to-ext4", "ext4-to-tmpfs"])
def two_way(request) -> Pair:
    tmpfs, ext4 = request.getfixturevalue("tmpfs"), request.getfixturevalue("ext4")
    if request.param == "tmpfs-to-ext4":
        return cross_pair(tmpfs, ext4, request.param)
    return cross_pair(ext4, tmpfs, request.param)


def test_open_writer_caller_own_rdwr_fd_is_not_moved_and_its_later_write_survives(two_way, tmp_path):
    """The minimal MariaDB form: open O_RDWR, write, rename, write again."""
    src, dst = two_way.src_dir / "table.ibd", two_way.dst_dir / "table.ibd"
    initial = random_bytes(SIZE, seed=101)
    src.write_bytes(initial)
    ino = os.lstat(src).st_ino
    log = tmp_path / "xrename.log"
    body = '''
fd = os.open(ARGS["src"], os.O_RDWR)
os.write(fd, b"first-")
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
os.write(fd, b"second")
os.close(fd)
'''
    run = run_child(body, {"src": str(src), "dst": str(dst)}, env={"XRENAME_LOG": str(log)})
    expected = b"first-second" + initial[12:]
    assert_refused_for_open_writer(run, log, src, dst, ino, expected, (two_way.src_dir, two_way.dst_dir))


def test_open_writer_caller_shared_writable_mapping_without_fd_is_not_moved(fs_pair, tmp_path):
    src, dst = fs_pair.src_dir / "mapped.bin", fs_pair.dst_dir / "mapped.bin"
    initial = random_bytes(SIZE, seed=102)
    src.write_bytes(initial)
    ino = os.lstat(src).st_ino
    log = tmp_path / "xrename.log"
    body = '''
import mmap
fd = os.open(ARGS["src"], os.O_RDWR)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.close(fd)
m[0:5] = b"map-1"
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
m[5:10] = b"map-2"
m.flush()
m.close()
'''
    run = run_child(body, {"src": str(src), "dst": str(dst)}, env={"XRENAME_LOG": str(log)})
    expected = b"map-1map-2" + initial[10:]
    assert_refused_for_open_writer(run, log, src, dst, ino, expected, (fs_pair.src_dir, fs_pair.dst_dir))


def test_open_writer_other_process_wronly_fd_is_not_moved(fs_pair, tmp_path):
    src, dst = fs_pair.src_dir / "held.bin", fs_pair.dst_dir / "held.bin"
    initial = random_bytes(SIZE, seed=103)
    src.write_bytes(initial)
    ino = os.lstat(src).st_ino
    log = tmp_path / "xrename.log"
    fd = os.open(src, os.O_WRONLY)  # this (pytest) process is the other writer
    try:
        run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                        {"src": str(src), "dst": str(dst)}, env={"XRENAME_LOG": str(log)})
        os.pwrite(fd, b"after", 0)
    finally:
        os.close(fd)
    expected = b"after" + initial[5:]
    assert_refused_for_open_writer(run, log, src, dst, ino, expected, (fs_pair.src_dir, fs_pair.dst_dir))


def test_open_writer_inside_tree_refuses_the_whole_directory_move(fs_pair, tmp_path):
    tree = fs_pair.src_dir / "tree"
    build_small_tree(tree, seed=104)
    dst = fs_pair.dst_dir / "tree"
    held = tree / "sub" / "mid.bin"
    before = listing(tree)
    before_src_entries = set(os.listdir(fs_pair.src_dir))
    log = tmp_path / "xrename.log"
    fd = os.open(held, os.O_WRONLY)
    try:
        run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                        {"src": str(tree), "dst": str(dst)}, env={"XRENAME_LOG": str(log)})
    finally:
        os.close(fd)
    r = run.result
    assert not r["ok"], "rename returned 0 for a tree with a file open for writing in it"
    assert r["errname"] == "EXDEV", f"expected EXDEV, got {r['errname']}: {r['error']}"
    d = diff_listings(before, listing(tree) if tree.is_dir() else {}, "before", "after", ignore=("atime_ns",))
    assert not d, "the source tree changed:\n  " + "\n  ".join(d)
    assert set(os.listdir(fs_pair.src_dir)) == before_src_entries
    assert not os.path.lexists(dst), "the destination was created"
    left = leftovers(fs_pair.src_dir, fs_pair.dst_dir)
    assert not left, f"hidden names left behind: {left}"
    lines = [ln for ln in log_lines(log) if ln.get("src") == str(tree)]
    assert lines and lines[-1].get("step") == OPEN_FOR_WRITING, f"log: {lines}"


def test_control_file_open_read_only_by_caller_is_moved(fs_pair):
    src, dst = fs_pair.src_dir / "reader.bin", fs_pair.dst_dir / "reader.bin"
    data = random_bytes(SIZE, seed=105)
    src.write_bytes(data)
    body = '''
fd = os.open(ARGS["src"], os.O_RDONLY)
os.read(fd, 10)
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
os.close(fd)
'''
    run = run_child(body, {"src": str(src), "dst": str(dst)})
    assert run.result["ok"], f"a file open read-only was not moved: {run.result}"
    assert read(dst) == data
    assert not os.path.lexists(src)
    assert not hidden(fs_pair.src_dir, fs_pair.dst_dir)


# --------------------------------------------------------------------------
# 2. rename is a claim
# --------------------------------------------------------------------------

@dataclass
class Claim:
    """One source, two destinations (a and b) on another filesystem."""
    kind: str            # "file" or "tree"
    existing: bool       # both destinations exist before the move
    src_dir: Path
    dst_dir: Path
    src: Path = field(init=False)
    dsts: dict = field(init=False)

    def __post_init__(self):
        self.src = self.src_dir / "obj"
        self.dsts = {"a": self.dst_dir / "claim-a", "b": self.dst_dir / "claim-b"}

    def reset(self) -> tuple[dict, dict]:
        """Rebuilds the scenario; returns (source record, old destination records)."""
        clear_dir(self.src_dir)
        clear_dir(self.dst_dir)
        if self.kind == "file":
            self.src.write_bytes(random_bytes(200_000, seed=201))
            os.utime(self.src, ns=(fh.PAST_NS, fh.PAST_NS + 77))
        else:
            fh.make_tree(self.src, seed=202, with_xattr=False)
        if self.existing:
            for k, p in self.dsts.items():
                if self.kind == "file":
                    p.write_bytes(b"old destination " + k.encode() * 100)
                else:
                    p.mkdir()
        olds = {k: self.old_record(p) for k, p in self.dsts.items()}
        return fh.record(self.src), olds

    def old_record(self, p: Path):
        if not os.path.lexists(p):
            return None
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            return {"dir": True, "ino": st.st_ino, "entries": sorted(os.listdir(p))}
        return {"dir": False, "sha256": hashlib.sha256(read(p)).hexdigest()}


def check_claim(sc: Claim, outs: dict[str, fh.Outcome], src_rec: dict, olds: dict) -> list[str]:
    v = []
    for k, o in outs.items():
        if o.kind not in ("ok", "error"):
            v.append(f"mover {k}: {o.describe()}")
        elif not o.preloaded:
            v.append(f"mover {k}: libxrename.so not mapped")
    if v:
        return v
    got = {k: o.errname if o.errno else "0" for k, o in outs.items()}
    if sorted(got.values()) != ["0", "ENOENT"]:
        v.append(f"results {got}: want exactly one 0 and one ENOENT")
    if os.path.lexists(sc.src):
        v.append("the source still exists")
    holders = [k for k, p in sc.dsts.items() if os.path.lexists(p) and not fh.record_diff(src_rec, fh.record(p))]
    if len(holders) != 1:
        v.append(f"the moved object is at {len(holders)} destinations ({holders}), want exactly 1")
    winners = [k for k, r in got.items() if r == "0"]
    if len(winners) == 1 and holders and holders != winners:
        v.append(f"the object is at {holders}, but {winners} got 0")
    for k, p in sc.dsts.items():
        if k in holders:
            continue
        now = sc.old_record(p)
        if now != olds[k]:
            what = "absent (it was new)" if olds[k] is None else f"its old content {olds[k]}"
            v.append(f"destination {k} should be {what}, found {now}")
    left = [os.fsdecode(x) for x in leftovers(sc.src_dir, sc.dst_dir)]
    if left:
        v.append(f"hidden names left: {left}")
    return v


def claim_params():
    return [pytest.param(kind, existing, id=f"{kind}-{'existing' if existing else 'new'}-destinations")
            for kind in ("file", "tree") for existing in (False, True)]


@pytest.fixture
def claim_dirs(tmpfs, ext4) -> tuple[Path, Path]:
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    return p.src_dir, p.dst_dir


def calibrate_claim(child, sc: Claim, tmp_path: Path) -> fh.Call:
    sc.reset()
    out = run_traced(child, sc.src, sc.dsts["a"], tmp_path / "calibrate.trace")
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls, first, end = window(out)
    return install_call(calls, first, end, sc.dsts["a"].name)


@pytest.mark.parametrize("kind,existing", claim_params())
def test_claim_mover_stopped_after_install_loses_to_mover_that_finished(
        child, claim_dirs, tmp_path, movers, kind, existing):
    """Deterministic order: A installs its copy and stops; B moves the
    source completely; A continues and must find the source claimed (ENOENT)
    and withdraw its install, restoring the old destination."""
    need_strace()
    sc = Claim(kind, existing, *claim_dirs)
    install = calibrate_claim(child, sc, tmp_path)
    src_rec, olds = sc.reset()
    a = start(movers, child, sc.src, sc.dsts["a"], tmp_path / "a.trace", (stop_spec(install),))
    stop_and(a, install, "after installing its copy")
    assert not fh.record_diff(src_rec, fh.record(sc.dsts["a"])), "A stopped, but its copy is not installed"
    b = start(movers, child, sc.src, sc.dsts["b"])
    end = time.monotonic() + 10
    while not b.done() and time.monotonic() < end:
        time.sleep(0.002)
    # B normally ends on its own; a design where B waits for A's claim is
    # allowed too: then A goes on first.
    a.cont()
    outs = {"a": a.finish(), "b": b.finish()}
    v = check_claim(sc, outs, src_rec, olds)
    assert not v, "rename is not a claim:\n  " + "\n  ".join(v)


@pytest.mark.parametrize("kind,existing", claim_params())
def test_claim_two_movers_stopped_at_install_and_released_together(
        child, claim_dirs, tmp_path, movers, kind, existing):
    need_strace()
    sc = Claim(kind, existing, *claim_dirs)
    install = calibrate_claim(child, sc, tmp_path)
    src_rec, olds = sc.reset()
    ms = {k: start(movers, child, sc.src, sc.dsts[k], tmp_path / f"{k}.trace", (stop_spec(install),))
          for k in ("a", "b")}
    stopped = {k: m.wait_stopped() for k, m in ms.items()}
    assert any(stopped.values()), "neither mover reached its install: " + "; ".join(
        f"{k}: {m.finish().describe()}" for k, m in ms.items())
    for k, m in ms.items():
        if stopped[k]:
            assert_stopped_at(m, install)
    for k, m in ms.items():
        if stopped[k]:
            m.cont()
    outs = {k: m.finish() for k, m in ms.items()}
    v = check_claim(sc, outs, src_rec, olds)
    assert not v, "rename is not a claim:\n  " + "\n  ".join(v)


RACE_REPEATS = 6


@pytest.mark.parametrize("kind,existing", claim_params())
def test_claim_two_movers_racing_freely_repeated(child, claim_dirs, tmp_path, movers, kind, existing):
    sc = Claim(kind, existing, *claim_dirs)
    failures = []
    for i in range(RACE_REPEATS):
        src_rec, olds = sc.reset()
        ms = {k: start(movers, child, sc.src, sc.dsts[k]) for k in ("a", "b")}
        outs = {k: m.finish() for k, m in ms.items()}
        v = check_claim(sc, outs, src_rec, olds)
        if v:
            failures.append(f"round {i}: " + "; ".join(v))
    assert not failures, (f"rename is not a claim in {len(failures)}/{RACE_REPEATS} races:\n  "
                          + "\n  ".join(failures))


# --------------------------------------------------------------------------
# 3. coarse clocks
# --------------------------------------------------------------------------

@pytest.fixture
def coarse_ext4(mounts, tmp_path) -> Path:
    """ext4 with 128-byte inodes: timestamps in whole seconds."""
    need(loop_devices_usable(), "loop-mounted ext4 needs real root, mkfs.ext4 and /dev/loop-control")
    image = tmp_path / "coarse.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    mk = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", "-b", "4096",
                         "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)],
                        capture_output=True, text=True)
    assert mk.returncode == 0, f"mkfs.ext4 -I 128 failed: {mk.stderr}"
    mounts.after_umount.append(image)
    mp = tmp_path / "coarse"
    mounts.mount(["-t", "ext4", "-o", "loop", str(image)], mp, "ext4 with 128-byte inodes")
    probe = mp / ".probe"
    probe.write_bytes(b"x")
    os.utime(probe, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    st = os.lstat(probe)
    probe.unlink()
    assert st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0, (
        "precondition: ext4 -I 128 should keep whole seconds only")
    return mp


SAME_SECOND_TRIES = 8


def installed_check(stop: str, dst: Path):
    """What the filesystem must show at the stop: after the install the
    destination exists; after a tree's copy, only its hidden temp does."""
    def check():
        if stop == "after-install":
            assert os.path.lexists(dst), "stopped 'after the install', but the destination does not exist"
        else:
            assert not os.path.lexists(dst), "stopped before the install, but the destination exists"
            if stop == "after-copy":
                assert hidden(dst.parent), "stopped after a tree's copy, but no hidden temp tree exists"
    return check


class Writer:
    """Changes a file from a thread of this process. If the open blocks on
    a lease break (a design where the mover holds a lease), that is seen in
    the thread's wchan and the mover is let go first."""

    def __init__(self, action):
        self.error: BaseException | None = None
        self.tid: int | None = None
        self.finished = threading.Event()

        def run():
            self.tid = threading.get_native_id()
            try:
                action()
            except BaseException as e:  # reported by the test
                self.error = e
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def done_or_blocked(self) -> bool:
        """Waits until the change is made (True) or the thread waits for a
        lease break (False)."""
        end = time.monotonic() + DEADLINE_S
        while not self.finished.is_set():
            if self.tid is not None:
                try:
                    wchan = Path(f"/proc/self/task/{self.tid}/wchan").read_text()
                except OSError:
                    wchan = ""
                if "lease" in wchan:
                    return False
            assert time.monotonic() < end, "the writer neither finished nor waited for a lease"
            time.sleep(0.002)
        return True

    def join(self):
        assert self.finished.wait(DEADLINE_S), "the writer never finished"
        if self.error:
            raise self.error


def change_during_stop(child, movers, tmp_path, reset, src: Path, dst: Path, target: fh.Call,
                       watched: Path, change, what: str, at_stop=None, **mover_kw):
    """Runs the move stopped after `target`; makes `change` while it is
    stopped, in the same second as `watched`'s ctime before the move (on a
    coarse clock the change is then invisible to size/mtime/ctime); retried
    when a second boundary fell in between. Returns the outcome."""
    for attempt in range(SAME_SECOND_TRIES):
        reset()
        t0 = ctime_s(watched)
        m = start(movers, child, src, dst, tmp_path / f"move-{attempt}.trace", (stop_spec(target),), **mover_kw)
        stop_and(m, target, what)
        if at_stop:
            at_stop()
        w = Writer(change)
        made_now = w.done_or_blocked()
        t1 = ctime_s(watched) if made_now else t0
        m.cont()
        out = m.finish()
        w.join()
        if t1 == t0:
            return out
    pytest.fail(f"could not make the change within the second of the source's ctime in "
                f"{SAME_SECOND_TRIES} tries")


def coarse_file_pair(coarse_ext4, tmpfs) -> Pair:
    return cross_pair(coarse_ext4, tmpfs, "coarse-ext4-to-tmpfs")


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.mark.parametrize("clock", ["real", "faketime+1d"])
@pytest.mark.parametrize("stop", ["after-data-copy", "after-install"])
def test_coarse_clock_same_size_write_during_file_move_is_kept(child, coarse_ext4, tmpfs, tmp_path, movers, stop,
                                                               clock):
    """With "faketime+1d" the mover runs under libfaketime a day ahead: the
    shim must read the kernel's clock, not libc's, or every file would look
    a day old and never racy."""
    need_strace()
    kw = {}
    if clock != "real":
        need(os.path.exists(FAKETIME_LIB), "libfaketime not installed (apt-get install faketime)")
        kw = {"preload": f"{LIBRARY}:{FAKETIME_LIB}", "env_extra": {"FAKETIME": "+1d"}}
    p = coarse_file_pair(coarse_ext4, tmpfs)
    src, dst = p.src_dir / "data.bin", p.dst_dir / "data.bin"
    old, new = random_bytes(300_000, seed=301), random_bytes(300_000, seed=302)

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        src.write_bytes(old)  # mtime = ctime = now (whole seconds)

    reset()
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace", **kw)
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    # A data call may be interrupted by the injected signal (sendfile
    # returns ERESTARTSYS): stop at the call right after the last one.
    target = calls[last_data_call(calls, first, install.index).index + 1] if stop == "after-data-copy" else install

    def write():
        fd = os.open(src, os.O_WRONLY)
        try:
            assert os.pwrite(fd, new, 0) == len(new)
        finally:
            os.close(fd)

    out = change_during_stop(child, movers, tmp_path, reset, src, dst, target, src, write, stop,
                             at_stop=installed_check(stop, dst), **kw)
    left = hidden(p.src_dir, p.dst_dir)
    if out.kind == "ok":
        assert not os.path.lexists(src), "rename returned 0 but the source is still there"
        assert read(dst) == new, ("rename returned 0 but the destination holds the data from before the "
                                  "write: a same-size write in the same second was lost")
    elif out.kind == "error" and out.errname == "EXDEV":
        assert read(src) == new, "EXDEV, but the source does not hold the write"
        assert not os.path.lexists(dst), "EXDEV, but a destination was created"
    else:
        pytest.fail(f"unexpected outcome: {out.describe()}")
    assert not left, f"hidden names left: {left}"


def test_coarse_clock_tree_moved_to_coarse_ext4_leaves_no_source(tmpfs, coarse_ext4):
    p = cross_pair(tmpfs, coarse_ext4, "tmpfs-to-coarse-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    build_small_tree(tree, seed=303)  # nanosecond times the destination cannot hold
    before = listing(tree)
    run = move_with("os.rename", tree, dst)
    assert run.result["ok"], f"the move failed: {run.result}"
    left = hidden(p.src_dir, p.dst_dir)
    assert not left, f"hidden names left (the old source kept as changed?): {left}"
    assert not os.path.lexists(tree), "the source tree is still at its name"
    after = listing(dst)
    d = diff_listings(before, after, "source", "destination", ignore=("atime_ns", "mtime_ns"))
    assert not d, "the destination is not the source:\n  " + "\n  ".join(d)
    secs = {k: r["mtime_ns"] // 10**9 for k, r in before.items() if r["type"] != "symlink"}
    assert secs == {k: after[k]["mtime_ns"] // 10**9 for k in secs}, "mtime seconds differ"


def test_coarse_clock_chmod_during_file_move_is_kept(child, coarse_ext4, tmpfs, tmp_path, movers):
    need_strace()
    p = coarse_file_pair(coarse_ext4, tmpfs)
    src, dst = p.src_dir / "mode.bin", p.dst_dir / "mode.bin"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        src.write_bytes(random_bytes(100_000, seed=304))
        os.chmod(src, 0o640)

    reset()
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    target = install_call(calls, first, end, dst.name)
    out = change_during_stop(child, movers, tmp_path, reset, src, dst, target, src,
                             lambda: os.chmod(src, 0o600), "after-install",
                             at_stop=installed_check("after-install", dst))
    if out.kind == "ok":
        assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o600, (
            f"rename returned 0 but the destination has mode {oct(stat.S_IMODE(os.lstat(dst).st_mode))}: "
            "the chmod made during the move was lost")
        assert not os.path.lexists(src)
    elif out.kind == "error" and out.errname == "EXDEV":
        assert stat.S_IMODE(os.lstat(src).st_mode) == 0o600
        assert not os.path.lexists(dst)
    else:
        pytest.fail(f"unexpected outcome: {out.describe()}")


@pytest.mark.parametrize("stop", ["after-copy", "after-install"])
def test_coarse_clock_chmod_during_tree_move_of_a_copied_file_is_kept(
        child, coarse_ext4, tmpfs, tmp_path, movers, stop):
    need_strace()
    p = coarse_file_pair(coarse_ext4, tmpfs)
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    rel = Path("sub") / "mid.bin"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        build_small_tree(tree, seed=305)
        os.chmod(tree / rel, 0o644)  # its ctime: now

    reset()
    out = run_traced(child, tree, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    target = copy_done_call(calls, first, install) if stop == "after-copy" else install
    out = change_during_stop(child, movers, tmp_path, reset, tree, dst, target, tree / rel,
                             lambda: os.chmod(tree / rel, 0o600), stop, at_stop=installed_check(stop, dst))
    if out.kind == "ok":
        # Either the change is at the destination, or the changed entry was
        # kept: put back under the source name (README: entries changed
        # during a tree move are never deleted unseen).
        mode = stat.S_IMODE(os.lstat(dst / rel).st_mode)
        kept = os.path.lexists(tree / rel) and stat.S_IMODE(os.lstat(tree / rel).st_mode) == 0o600
        assert mode == 0o600 or kept, (
            f"rename returned 0 but {rel} at the destination has mode {oct(mode)} and it was not kept "
            "at the source: the chmod made during the move was lost")
    elif out.kind == "error" and out.errname == "EXDEV":
        assert stat.S_IMODE(os.lstat(tree / rel).st_mode) == 0o600
        assert not os.path.lexists(dst)
    else:
        pytest.fail(f"unexpected outcome: {out.describe()}")


# --------------------------------------------------------------------------
# 4. a hard link made during a tree move
# --------------------------------------------------------------------------

def link_and_finish(m: Mover, x: Path, tree: Path, dst: Path, subs: tuple[str, ...], data: bytes) -> None:
    """With the mover stopped: links `x` as y in each of `subs` of `tree`,
    lets the move finish, and checks each y exists (with `data`) in the
    destination tree or back at the source: never deleted unseen."""
    for s in subs:
        os.link(x, tree / s / "y")
    m.cont()
    out = m.finish()
    assert out.kind in ("ok", "error"), out.describe()
    lost = [s for s in subs
            if not any(q.is_file() and read(q) == data for q in (dst / s / "y", tree / s / "y"))]
    assert not lost, (f"{out.describe()}, and the hard link(s) {[s + '/y' for s in lost]} made during "
                      "the move exist neither in the destination tree nor back at the source: deleted")


@pytest.mark.parametrize("stop", ["after-copy", "after-install"])
def test_hard_link_created_in_source_tree_during_move_is_not_lost(child, tmpfs, ext4, tmp_path, movers, stop):
    """os.link(tree/x, tree/sub-?/y) while the move is stopped. The source
    is walked in directory order, which differs between filesystems and
    kernels: x sits between two subdirectories (created before and after
    it), each getting a new link, so that one of them is visited after x
    whatever the order."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    data = random_bytes(50_000, seed=401)
    subs = ("sub-before", "sub-after")

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        tree.mkdir()
        (tree / subs[0]).mkdir()
        (tree / "x").write_bytes(data)
        (tree / subs[1]).mkdir()
        for s in subs:
            (tree / s / "other").write_bytes(b"other")
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    reset()
    out = run_traced(child, tree, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    target = copy_done_call(calls, first, install) if stop == "after-copy" else install
    reset()
    m = start(movers, child, tree, dst, tmp_path / "move.trace", (stop_spec(target),))
    stop_and(m, target, stop)
    installed_check(stop, dst)()
    link_and_finish(m, tree / "x", tree, dst, subs, data)


def test_a_hard_link_made_before_its_file_is_copied_in_a_directory_walked_already_is_kept(
        child, tmpfs, ext4, tmp_path, movers):
    """os.link(tree/a/x, tree/b-?/y) while the move is stopped right after
    opening a/x to copy it, with b-before or b-after (one of them, whatever
    the directory order) walked already: x is recorded with the new link,
    so its record proves the inode, but that y is in no directory of the
    copy. The deletion must keep it (records prove inodes, not names);
    before session 8's fix it was deleted with the source. One thread, so
    that the stop lands on the same call in every run."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    data = random_bytes(50_000, seed=402)
    subs = ("b-before", "b-after")
    one = {"XRENAME_THREADS": "1"}

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        tree.mkdir()
        (tree / subs[0]).mkdir()
        (tree / "a").mkdir()
        (tree / subs[1]).mkdir()
        (tree / "a" / "x").write_bytes(data)
        for s in subs:
            (tree / s / "other").write_bytes(b"other")
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    reset()
    out = run_traced(child, tree, dst, tmp_path / "calibrate.trace", env_extra=one)
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    target = next(c for c in calls[first:end] if c.name == "openat" and quoted(c.text)[-1:] == ["x"]
                  and "O_CREAT" not in c.text and not c.ret.startswith("-"))
    reset()
    m = start(movers, child, tree, dst, tmp_path / "move.trace", (stop_spec(target),), env_extra=one)
    stop_and(m, target, "after opening a/x")
    link_and_finish(m, tree / "a" / "x", tree, dst, subs, data)


def test_a_directory_another_rename_puts_over_an_installed_empty_tree_stays_there(
        child, tmpfs, ext4, tmp_path, movers):
    """An empty directory moved to a free name; right after the install,
    another process renames its own (full) directory onto that name, which
    the kernel allows over an empty one. The move cannot say its tree is
    at the name: EXDEV, the source back. The other directory stays where
    its owner's rename put it, as the kernel leaves it: before session 8
    the undo moved it to a hidden temp name, which `xrename clean --remove`
    then deletes."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst, theirs = p.src_dir / "tree", p.dst_dir / "tree", p.dst_dir / "theirs"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        tree.mkdir()
        theirs.mkdir()
        (theirs / "data").write_bytes(b"theirs")
        fh.age(p.src_dir, p.dst_dir)

    *_, install = calibrate(child, tree, dst, tmp_path, reset)
    reset()
    m = start(movers, child, tree, dst, tmp_path / "move.trace", (stop_spec(install),))
    stop_and(m, install, "after the install")
    os.rename(theirs, dst)
    m.cont()
    out = m.finish()
    assert out.kind == "error" and out.errname == "EXDEV", out.describe()
    assert tree.is_dir() and not os.listdir(tree)
    assert read(dst / "data") == b"theirs", "the other process's directory left the name it renamed it to"
    assert hidden(p.src_dir, p.dst_dir) == []


# --------------------------------------------------------------------------
# 5. hidden names where O_TMPFILE is missing
# --------------------------------------------------------------------------

def kill_scan(child, tmp_path, reset, src: Path, dst: Path, old: bytes, extra_injects=(),
              calibration_injects=()) -> tuple[list[str], int]:
    """Kills the mover at every call of the move from its first install
    attempt on; after each kill checks the hidden names and `xrename clean
    --remove`. Returns (violations, scenarios)."""
    reset()
    fh.age(src.parent, dst.parent)  # same calls in every run: no racy compare
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace", calibration_injects)
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    data = last_data_call(calls, first, install.index)
    begin = next(c.index for c in calls[data.index:end] if c.name in ("linkat", "renameat2", "renameat"))
    points = [c for c in calls[begin:end] if c.name != "openat" and c.tid == fh.main_tid(calls)]
    assert any("RENAME_EXCHANGE" in c.text or c.name in ("renameat", "linkat") for c in points)
    violations = []
    xrename = REPO_ROOT / "target" / "release" / "xrename"
    for c in points:
        reset()
        fh.age(src.parent, dst.parent)
        spec = f"{c.name}:signal=SIGKILL:when={c.ordinal}"
        out = run_traced(child, src, dst, tmp_path / f"kill-{c.name}-{c.ordinal}.trace",
                         tuple(extra_injects) + (spec,))
        where = f"kill at {c.name} #{c.ordinal} ({c.text.split(' ', 1)[-1][:90]})"
        if out.kind != "killed":
            violations.append(f"{where}: the kill did not happen: {out.describe()}")
            continue
        holders = [n for n in os.listdir(dst.parent)
                   if (dst.parent / n).is_file() and read(dst.parent / n) == old]
        bad = [n for n in holders if n.startswith(TEMP_PREFIX) and not n.startswith(".xrename-old-")]
        if bad:
            violations.append(f"{where}: the old destination is at {bad}, a name `clean --remove` deletes")
        cl = subprocess.run([str(xrename), "clean", "--remove", str(dst.parent)], capture_output=True, text=True)
        after = [n for n in os.listdir(dst.parent)
                 if (dst.parent / n).is_file() and read(dst.parent / n) == old]
        if holders and not after:
            violations.append(f"{where}: `xrename clean --remove` deleted the only copy of the old destination "
                              f"({holders}); it said: {cl.stdout.strip()} {cl.stderr.strip()}")
    return violations, len(points)


def bindfs_pair(mounts, tmpfs, tmp_path) -> Pair:
    """tmpfs -> a FUSE bindfs mount (over another directory of the tmpfs),
    which has no O_TMPFILE and refuses renameat2 flags."""
    from conftest import bindfs_over
    return cross_pair(tmpfs, bindfs_over(mounts, tmpfs, tmp_path), "tmpfs-to-bindfs")


def test_directory_onto_a_filesystem_without_noreplace_is_exdev_not_look_then_rename(mounts, tmpfs, tmp_path):
    """Without RENAME_NOREPLACE (bindfs answers EINVAL to every renameat2
    flag) a directory cannot be placed atomically at a free name: looking
    first and renaming then could replace an empty directory made in
    between. The kernel's EXDEV stands, and nothing changes."""
    p = bindfs_pair(mounts, tmpfs, tmp_path)
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    build_small_tree(tree, seed=808)
    before = listing(tree)
    run = move_with("os.rename", tree, dst)
    assert run.result.get("errname") == "EXDEV", run.result
    assert not os.path.lexists(dst)
    assert not diff_listings(before, listing(tree), ignore=("atime_ns",))
    assert hidden(p.src_dir, p.dst_dir) == []
    # A file still moves there (a hard link never replaces).
    (p.src_dir / "f").write_bytes(b"file")
    assert move_with("os.rename", p.src_dir / "f", p.dst_dir / "f").result["ok"]
    assert read(p.dst_dir / "f") == b"file"


def test_directory_onto_an_empty_directory_of_a_filesystem_without_noreplace_moves(mounts, tmpfs, tmp_path):
    """Replacing an empty directory needs no RENAME_NOREPLACE: the tree
    keeps its temp name (a directory cannot be linked), the exchange is
    refused as well, and a plain rename replaces the empty directory, as
    the kernel's rename would. (A review found the session-6 build
    answering EINVAL, an errno of that filesystem's renameat2 flags.)"""
    p = bindfs_pair(mounts, tmpfs, tmp_path)
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    build_small_tree(tree, seed=809)
    dst.mkdir()
    before = listing(tree)
    run = move_with("os.rename", tree, dst)
    assert run.result["ok"], run.result
    assert not os.path.lexists(tree)
    # Link counts are left out: read through this bindfs mount right after
    # the move, a hard-linked file shows the count it was created with
    # (the underlying tmpfs has both names on one inode).
    assert not diff_listings(before, listing(dst), ignore=("atime_ns", "nlink", "hardlinks"))
    assert hidden(p.src_dir, p.dst_dir) == []


def test_hidden_names_on_bindfs_destination_old_destination_never_removable_by_clean(
        child, mounts, tmpfs, tmp_path):
    need_strace()
    p = bindfs_pair(mounts, tmpfs, tmp_path)
    try:
        fd = os.open(p.dst_dir, os.O_TMPFILE | os.O_WRONLY, 0o600)
        os.close(fd)
        pytest.fail("precondition: bindfs was expected to lack O_TMPFILE")
    except OSError as e:
        assert e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL), e
    src, dst = p.src_dir / "new.bin", p.dst_dir / "target.bin"
    old = b"the old destination, nowhere else " * 100

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        src.write_bytes(random_bytes(100_000, seed=501))
        dst.write_bytes(old)
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    v, n = kill_scan(child, tmp_path, reset, src, dst, old)
    assert not v, f"kill points ({n} tried) that lose the old destination:\n  " + "\n  ".join(v)


def test_hidden_names_without_o_tmpfile_old_destination_never_removable_by_clean(child, tmpfs, ext4, tmp_path):
    """The same on a filesystem that can exchange names: O_TMPFILE is made
    unavailable by strace (the openat with O_TMPFILE fails EOPNOTSUPP, as on
    a filesystem without it), so the copy is built under a hidden name and
    swapped with the old destination by RENAME_EXCHANGE."""
    need_strace()
    p = cross_pair(ext4, tmpfs, "ext4-to-tmpfs")
    src, dst = p.src_dir / "new.bin", p.dst_dir / "target.bin"
    old = b"the old destination, nowhere else " * 100

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        src.write_bytes(random_bytes(100_000, seed=502))
        dst.write_bytes(old)
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    no_tmpfile = without_tmpfile(child, src, dst, tmp_path / "plain.trace", reset)
    v, n = kill_scan(child, tmp_path, reset, src, dst, old, no_tmpfile, no_tmpfile)
    assert not v, f"kill points ({n} tried) that lose the old destination:\n  " + "\n  ".join(v)


# --------------------------------------------------------------------------
# 6. a transient EIO while the old source tree is deleted
# --------------------------------------------------------------------------

def test_transient_eio_from_statx_while_deleting_old_source_tree_is_retried(child, tmpfs, ext4, tmp_path):
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        fh.make_tree(tree, seed=601, with_xattr=False)
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    reset()
    src_rec = fh.record(tree)
    # Recording put the symlink's atime back, which set its ctime: aged
    # again, or the calibration alone would compare it as racy (one statx
    # more than every later run).
    fh.age(p.src_dir)
    out = run_traced(child, tree, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    # The deletion of the old source starts when its directory (now under a
    # `.xrename-src-*` name) is opened to be emptied, after the install.
    opened = [c for c in calls[install.index:end] if c.name == "openat" and c.ret.isdigit()
              and any(q.startswith(".xrename-src-") for q in quoted(c.text))]
    assert opened, "calibration: the old source tree is never opened under a .xrename-src-* name"
    points = [c for c in calls[opened[0].index:end] if c.name == "statx" and c.tid == fh.main_tid(calls)]
    assert points, "calibration: no statx while deleting the old source"
    failures = []
    for c in points:
        reset()
        out = run_traced(child, tree, dst, tmp_path / f"eio-{c.ordinal}.trace", (f"statx:error=EIO:when={c.ordinal}",))
        miss = fh.injection_landed(out, "statx", c.ordinal)
        where = f"EIO at statx #{c.ordinal} ({c.text.split(' ', 1)[-1][:80]})"
        if miss:
            failures.append(f"{where}: {miss}")
            continue
        problems = []
        if out.kind != "ok":
            problems.append(out.describe())
        left = [n for n in os.listdir(p.src_dir) if n.startswith(TEMP_PREFIX)]
        if left:
            problems.append(f"left {left}")
        if os.path.lexists(tree):
            problems.append("the source name is still there")
        if out.kind == "ok" and fh.record_diff(src_rec, fh.record(dst)):
            problems.append("the destination is not the source")
        if problems:
            failures.append(f"{where}: " + "; ".join(problems))
    assert not failures, (f"{len(failures)} of {len(points)} transient EIOs while deleting the old source "
                          "were not retried:\n  " + "\n  ".join(failures))


# --------------------------------------------------------------------------
# 7. a bind-mounted file inside the source tree
# --------------------------------------------------------------------------

def mount_id_at(path: Path) -> int | None:
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if decode_mountinfo(parts[4]) == str(path):
                found = int(parts[0])
    return found


def decode_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)


def mount_point_of(mid: int) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if int(parts[0]) == mid:
                return decode_mountinfo(parts[4])
    return None


def test_bind_mounted_file_inside_source_tree_gives_ebusy_and_changes_nothing(tmpfs, ext4, tmp_path):
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"
    build_small_tree(tree, seed=701)
    outside = tmpfs / "bound-file"
    outside.write_bytes(b"a file bind-mounted into the tree")
    target = tree / "sub" / "f"
    target.write_bytes(b"")
    proc = subprocess.run(["mount", "--bind", str(outside), str(target)], capture_output=True, text=True)
    need(proc.returncode == 0, f"cannot bind-mount a file: {proc.stderr.strip()}")
    mid = mount_id_at(target)
    assert mid is not None
    try:
        before = listing(tree)
        run = move_with("os.rename", tree, dst)
        where = mount_point_of(mid)
        r = run.result
        assert not r["ok"], "the tree was moved although a file inside it is a mount point"
        assert r["errname"] == "EBUSY", f"expected EBUSY, got {r['errname']}: {r['error']}"
        assert where == str(target), f"the bind mount moved to {where}"
        assert not os.path.lexists(dst), "a destination was created"
        d = diff_listings(before, listing(tree), "before", "after", ignore=("atime_ns",))
        assert not d, "the source tree changed:\n  " + "\n  ".join(d)
        left = leftovers(p.src_dir, p.dst_dir)
        assert not left, f"hidden names left: {left}"
    finally:
        where = mount_point_of(mid)
        if where is not None:
            subprocess.run(["umount", where], capture_output=True)


# --------------------------------------------------------------------------
# 8. O_NOATIME
# --------------------------------------------------------------------------

def test_reading_the_source_uses_o_noatime_other_hard_link_keeps_its_atime(mounts, ext4, tmp_path):
    mp = tmp_path / "strictatime"
    mounts.mount(["-t", "tmpfs", "-o", "size=64m,strictatime", "xrename-strictatime"], mp, "tmpfs strictatime")
    p = cross_pair(mp, ext4, "strictatime-tmpfs-to-ext4")
    # precondition: reads update atime on this mount
    probe = p.src_dir / "probe"
    probe.write_bytes(b"probe" * 1000)
    os.utime(probe, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    read(probe)
    assert os.lstat(probe).st_atime_ns != PAST_ATIME_NS, "precondition: strictatime reads do not update atime"
    probe.unlink()

    src, other, dst = p.src_dir / "moved", p.src_dir / "other-name", p.dst_dir / "moved"
    data = random_bytes(200_000, seed=801)
    src.write_bytes(data)
    os.link(src, other)
    os.utime(other, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    run = move_with("os.rename", src, dst)
    assert run.result["ok"], run.result
    assert read(dst) == data
    assert os.lstat(other).st_atime_ns == PAST_ATIME_NS, (
        "reading the source for the copy changed its atime (seen through its other name): "
        "the source was not opened with O_NOATIME")


# --------------------------------------------------------------------------
# 10. overlayfs destinations from the lower layer (the Docker image case)
# --------------------------------------------------------------------------

@pytest.fixture
def small_upper_overlay(mounts, tmp_path) -> tuple[Path, Path, Path]:
    """An overlay whose lower layer (600 MiB tmpfs) holds a 300 MiB file and
    an empty directory, and whose writable layer is a 100 MiB tmpfs: copying
    the lower file up would fail with ENOSPC. Returns (merged, upper, other),
    `other` a tmpfs of its own for sources."""
    lower, upper_fs, merged, other = (tmp_path / n for n in ("lower", "upperfs", "merged", "other"))
    mounts.mount(["-t", "tmpfs", "-o", "size=600m", "xrename-lower"], lower, "tmpfs")
    mounts.mount(["-t", "tmpfs", "-o", "size=100m", "xrename-upper"], upper_fs, "tmpfs")
    mounts.mount(["-t", "tmpfs", "-o", "size=64m", "xrename-other"], other, "tmpfs")
    with open(lower / "big", "wb") as f:
        f.truncate(0)
        chunk = b"\x5a" * (1 << 20)
        for _ in range(300):
            f.write(chunk)
    (lower / "emptydir").mkdir()
    (upper_fs / "u").mkdir()
    (upper_fs / "w").mkdir()
    opts = f"lowerdir={lower},upperdir={upper_fs / 'u'},workdir={upper_fs / 'w'}"
    mounts.mount(["-t", "overlay", "-o", opts, "xrename-ovl"], merged, "overlayfs")
    return merged, upper_fs, other


def test_overlay_small_file_over_big_lower_layer_file_replaces_it_without_copy_up(small_upper_overlay, tmp_path):
    merged, upper_fs, other = small_upper_overlay
    (other / "small").write_bytes(b"the new content\n")
    try:
        os.rename(other / "small", merged / "big")  # the kernel, without the shim
        pytest.fail("test bug: the kernel renamed across the overlay and another tmpfs")
    except OSError as e:
        assert e.errno == errno.EXDEV
    used_before = shutil.disk_usage(upper_fs).used
    log = tmp_path / "log.jsonl"
    run = move_with("os.rename", other / "small", merged / "big", env={"XRENAME_LOG": str(log)})
    assert run.result["ok"], f"rename over a lower-layer file failed: {run.result} {log_lines(log)}"
    assert read(merged / "big") == b"the new content\n"
    assert not os.path.lexists(other / "small")
    assert hidden(merged, other) == []
    # No copy-up of the 300 MiB lower file: the upper layer grew by (far) less.
    grown = shutil.disk_usage(upper_fs).used - used_before
    assert grown < 8 << 20, f"the upper layer grew by {grown} bytes: the old lower file was copied up"


def test_overlay_directory_onto_empty_lower_layer_directory_replaces_it(small_upper_overlay):
    merged, _, other = small_upper_overlay
    tree = other / "tree"
    build_small_tree(tree, seed=1001)
    before = listing(tree)
    run = move_with("os.rename", tree, merged / "emptydir")
    assert run.result["ok"], f"a directory onto an empty lower-layer directory: {run.result} (the kernel replaces it)"
    assert not diff_listings(before, listing(merged / "emptydir"))
    assert not os.path.lexists(tree)
    assert hidden(merged, other) == []


def test_overlay_lower_layer_destination_directory_not_empty_is_enotempty_and_nothing_changes(small_upper_overlay):
    merged, _, other = small_upper_overlay
    tree = other / "tree"
    build_small_tree(tree, seed=1002)
    before = listing(tree)
    run = move_with("os.rename", tree, merged)  # merged itself holds entries: not empty
    assert not run.result["ok"]
    (merged / "notempty").mkdir()
    (merged / "notempty" / "x").write_bytes(b"x")
    run = move_with("os.rename", tree, merged / "notempty")
    assert run.result.get("errname") == "ENOTEMPTY", run.result
    assert not diff_listings(before, listing(tree)), "the source changed"
    assert read(merged / "notempty" / "x") == b"x"
    assert hidden(merged, other) == []


# --------------------------------------------------------------------------
# 6b. whatever is left after a successful move is named in the log
# --------------------------------------------------------------------------

def test_entry_changed_during_tree_move_is_kept_and_named_as_leftover(child, tmpfs, ext4, tmp_path, movers):
    """A file inside the tree is rewritten (new size) after the copy: the
    move succeeds, the changed file is kept under the source name, and the
    log line's `leftover` names it; `--summary` counts it."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    tree, dst = p.src_dir / "tree", p.dst_dir / "tree"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        build_small_tree(tree, seed=77)
        (tree / "changing").write_bytes(b"before\n")
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    reset()
    out = run_traced(child, tree, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    reset()
    log = tmp_path / "log.jsonl"
    m = start(movers, child, tree, dst, tmp_path / "move.trace", (stop_spec(install),),
              env_extra={"XRENAME_LOG": str(log)})
    stop_and(m, install, "after-install")
    (tree / "changing").write_bytes(b"changed during the move, longer\n")
    m.cont()
    out = m.finish()
    assert out.kind == "ok", out.describe()
    assert read(tree / "changing") == b"changed during the move, longer\n", "the change was not kept"
    lines = [line for line in log_lines(log) if line.get("result") == "ok"]
    assert lines and lines[-1].get("leftover") == str(tree), f"log lines: {lines}"


# --------------------------------------------------------------------------
# 9b. removability follows the kernel in a user namespace
# --------------------------------------------------------------------------

USERNS_MOVE = r"""
import json, os, subprocess, sys
src, dst_fs = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "xrename-userns", dst_fs], check=True)
try:
    os.rename(src, os.path.join(dst_fs, "tree"))
    out = {"ok": True}
except OSError as e:
    out = {"ok": False, "errname": __import__("errno").errorcode.get(e.errno)}
out["dst"] = sorted(os.listdir(dst_fs))
print(json.dumps(out))
"""


def test_sticky_entry_of_an_unmapped_owner_in_a_user_namespace_is_refused_before_anything_is_made(tmpfs, tmp_path):
    """In `unshare -Ur` (root mapped to root, nothing else), a tree holding a
    sticky directory owned by an unmapped user, with a file of another
    unmapped user in it: the kernel would refuse to delete that file (EPERM:
    CAP_FOWNER counts only over mapped owners), so the move is refused
    before anything is installed, with the kernel's errno."""
    need(PRIVILEGED, "needs real root to create files of other owners")
    tree = tmpfs / "tree"
    (tree / "sticky").mkdir(parents=True)
    os.chmod(tree, 0o777)
    os.chown(tree / "sticky", 4321, 4321)
    os.chmod(tree / "sticky", 0o1777)
    (tree / "sticky" / "theirs").write_bytes(b"unmapped owner\n")
    os.chown(tree / "sticky" / "theirs", 1234, 1234)
    before = listing(tree)
    dst_fs = tmp_path / "userns-dst"
    dst_fs.mkdir()
    proc = subprocess.run(["unshare", "-Urm", "--propagation", "private", sys_python(), "-c", USERNS_MOVE,
                           str(tree), str(dst_fs)], capture_output=True, text=True, timeout=DEADLINE_S,
                          env=child_env())
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"ok": False, "errname": "EPERM", "dst": []}, out
    assert not diff_listings(before, listing(tree), ignore=("atime_ns",)), "the source tree changed"
    assert hidden(tmpfs) == []


def sys_python() -> str:
    import sys
    return sys.executable


# --------------------------------------------------------------------------
# 1b. a writer that opens the file during the move (after the first look)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind,nofile", [("file", None), ("tree", None), ("tree", 128)],
                         ids=["file", "tree", "tree-probed-by-name"])
def test_writer_opening_the_source_during_the_move_is_seen_and_its_writes_survive(
        child, tmpfs, ext4, tmp_path, movers, kind, nofile):
    """The mover stops after its install; a writer opens the source (by
    path, before it is taken from its name) and holds it. The move must see
    it once the source has left its name: EXDEV, everything as before, and
    the writer's later write lands in the source. A tree is probed through
    the descriptors its copy kept, or (under a descriptor limit of 128,
    which keeps none) by name."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    src = p.src_dir / ("f" if kind == "file" else "tree")
    dst = p.dst_dir / src.name
    target_file = src if kind == "file" else src / "sub" / "log"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        if kind == "tree":
            build_small_tree(src, seed=909)
            (src / "sub").mkdir(exist_ok=True)
        target_file.write_bytes(b"line 1\n")
        fh.age(p.src_dir, p.dst_dir)  # same calls in every run: no racy compare

    reset()
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace", nofile=nofile)
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    install = install_call(calls, first, end, dst.name)
    reset()
    m = start(movers, child, src, dst, tmp_path / "move.trace", (stop_spec(install),), nofile=nofile)
    stop_and(m, install, "after-install")
    fd = os.open(target_file, os.O_WRONLY | os.O_APPEND)
    try:
        m.cont()
        out = m.finish()
        os.write(fd, b"line 2, written after the rename returned\n")
    finally:
        os.close(fd)
    assert out.kind == "error" and out.errname == "EXDEV", (
        f"{out.describe()}: a file opened for writing during the move was moved away from its writer")
    assert read(target_file) == b"line 1\nline 2, written after the rename returned\n"
    assert not os.path.lexists(dst), "the withdrawn install is still there"
    assert hidden(p.src_dir, p.dst_dir) == []


@pytest.fixture
def reachable(tmpfs, ext4):
    """The tmpfs and ext4 fixtures, reachable by path for other uids."""
    from oracle_harness import OpenRoot
    o = OpenRoot()
    try:
        yield o.bind(tmpfs, "tmpfs"), o.bind(ext4, "ext4")
    finally:
        o.cleanup()


def test_file_someone_else_writes_is_not_moved_by_a_user_who_cannot_see_their_processes(reachable):
    """nobody (uid 65534) moves a world-writable file owned by uid 4321,
    while a process of uid 4321 holds it open for writing. nobody may not
    take a lease on a file it does not own, nor read that process's
    descriptors: it cannot prove there is no writer, so it must not move."""
    need(PRIVILEGED, "needs root to run processes as other users")
    need(shutil.which("setpriv") is not None, "setpriv missing (util-linux)")
    p = cross_pair(*reachable, "tmpfs-to-ext4")
    for d in (p.src_dir, p.dst_dir):
        os.chmod(d, 0o777)
    f = p.src_dir / "shared.log"
    f.write_bytes(b"first\n")
    os.chown(f, 4321, 4321)
    os.chmod(f, 0o666)
    writer = subprocess.Popen(["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups", sys_python(), "-c",
                               "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY|os.O_APPEND); "
                               "print('open', flush=True); sys.stdin.readline(); os.write(fd, b'second\\n')",
                               str(f)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys_python(), "-c",
                               "import os,sys\ntry:\n os.rename(sys.argv[1], sys.argv[2]); print('ok')\n"
                               "except OSError as e:\n print(__import__('errno').errorcode[e.errno])",
                               str(f), str(p.dst_dir / "shared.log")],
                              capture_output=True, text=True, env=child_env(), timeout=DEADLINE_S)
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(DEADLINE_S) == 0
    finally:
        writer.kill()
    assert proc.stdout.strip() == "EXDEV", (proc.stdout, proc.stderr)
    assert read(f) == b"first\nsecond\n"
    assert not os.path.lexists(p.dst_dir / "shared.log")


# --------------------------------------------------------------------------
# issue 11, 0. never follow a symlink by name: test_node_race.py (an
# attacker acting at stops of the move, not racing it)
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# issue 11, 3. resource limits
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["file", "tree"])
def test_file_over_the_file_size_limit_is_left_to_the_program_not_killed(fs_pair, kind):
    """RLIMIT_FSIZE below the size of the file (or of a file in the tree),
    SIGXFSZ at its default action (a C program's): the copy would kill the
    program or fail with EFBIG. The move is refused before a byte is
    written: EXDEV, source intact, nothing at the destination."""
    p = fs_pair
    src = p.src_dir / ("big" if kind == "file" else "tree")
    if kind == "tree":
        build_small_tree(src, seed=1111)
        (src / "big").write_bytes(random_bytes(20_000, seed=1112))
    else:
        src.write_bytes(random_bytes(20_000, seed=1112))
    before = listing(src) if kind == "tree" else read(src)
    body = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, resource.RLIM_INFINITY))
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
"""
    run = run_child(body, {"src": str(src), "dst": str(p.dst_dir / src.name)})
    assert run.result.get("errname") == "EXDEV", run.result
    after = listing(src) if kind == "tree" else read(src)
    if kind == "tree":
        assert not diff_listings(before, after, ignore=("atime_ns",))
    else:
        assert after == before
    assert not os.path.lexists(p.dst_dir / src.name)
    assert hidden(p.src_dir, p.dst_dir) == []


# --------------------------------------------------------------------------
# 2b. the claim, at every step of the move (fault-injection style)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind,existing", [("file", False), ("file", True), ("tree", False), ("tree", True)])
def test_claim_lost_at_any_step_of_the_move_gives_enoent_or_moves_exactly_once(
        child, tmpfs, ext4, tmp_path, movers, kind, existing):
    """The mover is stopped after each call of its move in turn (sampled:
    at most 24 points), another rename takes the source away meanwhile (to
    `taken`, on the source's filesystem), and the mover goes on. Whatever
    the point: the object exists exactly once, at `taken` or at the
    destination; the mover got ENOENT (the other rename won: an old
    destination is back, nothing hidden is left) or 0 (it had taken the
    source before: `taken` never got it)."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    src, dst, taken = p.src_dir / "job", p.dst_dir / "job", p.src_dir / "taken"
    old = b"the old destination\n"

    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        if kind == "tree":
            build_small_tree(src, seed=2222)
        else:
            src.write_bytes(random_bytes(30_000, seed=2222))
        if existing:
            if kind == "tree":
                dst.mkdir()
            else:
                dst.write_bytes(old)
        fh.age(p.src_dir, p.dst_dir)

    reset()
    original = listing(src) if kind == "tree" else read(src)
    fh.age(p.src_dir, p.dst_dir)  # listing a symlink sets its ctime
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", out.describe()
    calls, first, end = window(out)
    # Calls strace names by number (a syscall newer than it) cannot be
    # injected into by name.
    points = [c for c in calls[first + 1:end]
              if c.name != "getppid" and not c.name.startswith("syscall_") and c.tid == fh.main_tid(calls)]
    step = max(1, len(points) // 24)
    problems = []
    for c in points[::step]:
        reset()
        m = start(movers, child, src, dst, tmp_path / f"claim-{c.name}-{c.ordinal}.trace", (stop_spec(c),))
        if not m.wait_stopped():
            problems.append(f"{c.name} #{c.ordinal}: the mover did not stop there: {m.finish().describe()}")
            continue
        try:
            os.rename(src, taken)  # the other mover, on the source's filesystem
            took = True
        except FileNotFoundError:
            took = False  # the mover had taken it already
        m.cont()
        out = m.finish()
        where = f"stopped after {c.name} #{c.ordinal}, taken by the other rename: {took}: {out.describe()}"

        def same(path: Path) -> bool:
            if not os.path.lexists(path):
                return False
            got = listing(path) if kind == "tree" else read(path)
            return not diff_listings(original, got, ignore=("atime_ns", "mtime_ns")) if kind == "tree" \
                else got == original
        at = [n for n, q in (("taken", taken), ("destination", dst)) if same(q)]
        if len(at) != 1:
            problems.append(f"{where}: the object is at {at or 'no place'}")
        if out.kind == "error":
            if out.errname not in ("ENOENT", "EXDEV"):
                problems.append(f"{where}: errno {out.errname}")
            if existing and kind == "file" and read(dst) != old:
                problems.append(f"{where}: the old destination was not put back")
            if existing and kind == "tree" and (not dst.is_dir() or os.listdir(dst)):
                problems.append(f"{where}: the old (empty) destination directory was not put back")
        elif out.kind == "ok":
            if took:
                problems.append(f"{where}: rename returned 0, yet the other rename had taken the source")
        else:
            problems.append(f"{where}: unexpected outcome")
        left = hidden(p.src_dir, p.dst_dir)
        if left:
            problems.append(f"{where}: hidden names left: {left}")
    assert not problems, f"{len(problems)} of {len(points[::step])} points:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------
# issue 11, 2. other preloaded libraries
# --------------------------------------------------------------------------

def lib_path(*candidates: str) -> str:
    for c in candidates:
        if os.path.exists(c):
            return c
    need(False, f"none of {candidates} installed")
    return ""


def test_under_fakeroot_xrename_steps_aside_and_mv_keeps_fake_owners_and_nodes(fs_pair, tmp_path):
    """fakeroot fakes owners and device nodes in its own daemon; the
    engine's raw syscalls cannot see them. Under the shim, mv of a fake
    device node and of a file chowned to 1234:5678 must give what mv alone
    gives: the shim steps aside (EXDEV, named in the log) and mv copies
    through fakeroot."""
    need(shutil.which("fakeroot") is not None, "fakeroot not installed")
    p = fs_pair
    log = tmp_path / "log.jsonl"
    script = (f'cd "{p.src_dir}" && mknod dev c 1 3 && echo data > f && chown 1234:5678 f && '
              f'LD_PRELOAD="{LIBRARY} $LD_PRELOAD" XRENAME_LOG="{log}" mv dev f "{p.dst_dir}/" && '
              f'stat -c "%F %u:%g %t:%T" "{p.dst_dir}/dev" "{p.dst_dir}/f"')
    proc = subprocess.run(["fakeroot", "sh", "-c", script], capture_output=True, text=True, timeout=DEADLINE_S,
                          env=child_env(preload=False))
    assert proc.returncode == 0, proc.stderr
    dev, f = proc.stdout.strip().splitlines()
    assert dev.startswith("character special file 0:0 1:3"), dev
    assert f.startswith("regular file 1234:5678"), f
    lines = log_lines(log)
    assert lines and all("libfakeroot" in line.get("step", "") for line in lines), lines


def test_under_fakechroot_xrename_steps_aside_and_touches_no_real_path(child, tmpfs, ext4, tmp_path):
    """fakechroot translates paths inside a fake root. With the shim
    preloaded first (as `xrename --` did), the EXDEV comes from the
    translated paths; the engine must not act on the untranslated ones (the
    real system's). It steps aside, and the log names fakechroot."""
    lib = lib_path("/usr/lib/x86_64-linux-gnu/fakechroot/libfakechroot.so",
                   "/usr/lib/fakechroot/libfakechroot.so")
    base = tmpfs / "fakeroot-base"
    (base / "a").mkdir(parents=True)
    os.symlink(ext4, base / "b")  # /b inside the fake root: another filesystem
    (base / "a" / "f").write_bytes(b"inside the fake root\n")
    log = tmp_path / "log.jsonl"
    env = child_env({"LD_PRELOAD": f"{LIBRARY} {lib}", "FAKECHROOT_BASE": str(base), "XRENAME_LOG": str(log)},
                    preload=False)
    # A C program (the fault suite's rename1): python could not find its
    # own files inside the fake root.
    proc = subprocess.run([str(child), "/a/f", "/b/f"], capture_output=True, text=True, env=env, timeout=DEADLINE_S)
    lines = log_lines(log)
    assert lines and "libfakechroot" in lines[-1].get("step", ""), (proc.stdout, proc.stderr, lines)
    assert read(base / "a" / "f") == b"inside the fake root\n"
    assert not os.path.exists(ext4 / "f")


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("which", ["eatmydata", "faketime"])
def test_under_eatmydata_and_faketime_xrename_still_moves(fs_pair, which, first):
    """libeatmydata (no fsync) and libfaketime (other clocks) interpose
    calls the engine also makes, but change neither paths nor owners: the
    shim keeps working under them, in either order in LD_PRELOAD."""
    other = lib_path("/usr/lib/x86_64-linux-gnu/libeatmydata.so", "/usr/lib/libeatmydata.so") \
        if which == "eatmydata" else lib_path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"moved under " + which.encode())
    order = f"{LIBRARY} {other}" if first else f"{other} {LIBRARY}"
    env = {"LD_PRELOAD": order, "FAKETIME": "-1d"}
    proc = subprocess.run([sys_python(), "-c", "import os,sys; os.rename(sys.argv[1], sys.argv[2])", str(src), str(dst)],
                          capture_output=True, text=True, env=child_env(env, preload=False), timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr
    assert read(dst) == b"moved under " + which.encode() and not os.path.lexists(src)


# --------------------------------------------------------------------------
# issue 11, 5. a lease on the source
# --------------------------------------------------------------------------

LEASE_HOLDER = r"""
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
def release(sig, frame):
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    os.close(fd)
    print("released", flush=True)
    sys.exit(0)
signal.signal(signal.SIGIO, release)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("leased", flush=True)
while True:
    signal.pause()
"""


def test_a_source_under_a_write_lease_is_moved_once_the_holder_lets_go(fs_pair):
    """Another process holds a write lease on the source (Samba oplocks,
    NFS delegations) and releases it when told (SIGIO). The kernel's
    rename ignores leases and mv waits for the holder: the move succeeds
    (it used to fail at once with EAGAIN, an errno rename never returns)."""
    p = fs_pair
    src, dst = p.src_dir / "leased", p.dst_dir / "leased"
    src.write_bytes(b"under a lease\n")
    holder = subprocess.Popen([sys_python(), "-c", LEASE_HOLDER, str(src)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "leased"
        run = move_with("os.rename", src, dst)
        assert run.result["ok"], run.result
        assert holder.stdout.readline().strip() == "released"
        assert holder.wait(DEADLINE_S) == 0
    finally:
        holder.kill()
    assert read(dst) == b"under a lease\n" and not os.path.lexists(src)


def test_a_tree_whose_file_is_under_a_write_lease_is_moved_once_the_holder_lets_go(fs_pair):
    """The tree version: a file deep in a directory is under another
    process's write lease, released on SIGIO. The tree is moved across
    devices (the writer probe and the copy both open that file): the move
    succeeds as mv's does, the leased file's content arrives, the holder saw
    the break, and nothing is left at the source."""
    p = fs_pair
    tree = p.src_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "before").write_bytes(b"next to the leased file\n")
    leased = tree / "sub" / "leased"
    leased.write_bytes(b"under a lease, in a tree\n" * 100)
    holder = subprocess.Popen([sys_python(), "-c", LEASE_HOLDER, str(leased)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "leased"
        run = move_with("os.rename", tree, p.dst_dir / "tree")
        assert run.result["ok"], run.result
        assert holder.stdout.readline().strip() == "released"
        assert holder.wait(DEADLINE_S) == 0
    finally:
        holder.kill()
    assert read(p.dst_dir / "tree" / "sub" / "leased") == b"under a lease, in a tree\n" * 100
    assert read(p.dst_dir / "tree" / "before") == b"next to the leased file\n"
    assert not os.path.lexists(tree) and os.listdir(p.src_dir) == []
    assert hidden(p.src_dir, p.dst_dir) == []


def test_mv_under_the_shim_works_with_few_descriptors_as_mv_alone_does(fs_pair):
    """RLIMIT_NOFILE of 20 and a tree 6 levels deep: the shim runs out of
    descriptors (it keeps some per level, and 32 files for the writer
    probe). It must then give mv the kernel's EXDEV (never EMFILE, which
    rename does not return), so that mv copies the tree itself, as alone."""
    p = fs_pair
    tree = p.src_dir / "tree"
    make_chain(tree, 6, 40)
    before = listing(tree)
    proc = subprocess.run(["sh", "-c", 'ulimit -n 20 && exec mv "$0" "$1"', str(tree), str(p.dst_dir / "tree")],
                          capture_output=True, text=True, env=child_env(), timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.lexists(tree)
    assert not diff_listings(before, listing(p.dst_dir / "tree"), ignore=("atime_ns",))


# --------------------------------------------------------------------------
# issue 10.5 / 11.1: /proc hidden after a first move
# --------------------------------------------------------------------------

def test_moves_after_proc_is_hidden_take_the_named_temp_path_and_leave_nothing(fs_pair):
    """One move with /proc, then the process hides /proc (a private mount
    namespace, a tmpfs over it: what a chroot without /proc looks like to
    it) and moves again, a new file and one replacing a destination. Whether
    /proc is usable is decided at every move: both succeed (through a named
    `.xrename-*` temp, then `.xrename-old-*` for the exchange), and nothing
    hidden is left."""
    need(PRIVILEGED, "hiding /proc needs CAP_SYS_ADMIN")
    p = fs_pair
    for n in ("first", "second", "third"):
        (p.src_dir / n).write_bytes(n.encode() * 1000)
    (p.dst_dir / "third").write_bytes(b"old destination")
    body = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
RESULTS.append(attempt(os.rename, ARGS["src"] + "/first", ARGS["dst"] + "/first"))
assert libc.unshare(0x00020000) == 0, ctypes.get_errno()              # CLONE_NEWNS
assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0       # MS_REC|MS_PRIVATE
assert libc.mount(b"none", b"/proc", b"tmpfs", 0, None) == 0, ctypes.get_errno()
assert not os.path.exists("/proc/self/fd")
RESULTS.append(attempt(os.rename, ARGS["src"] + "/second", ARGS["dst"] + "/second"))
RESULTS.append(attempt(os.rename, ARGS["src"] + "/third", ARGS["dst"] + "/third"))
assert libc.umount2(b"/proc", 0) == 0, ctypes.get_errno()  # the harness reads /proc/self/maps next
"""
    run = run_child(body, {"src": str(p.src_dir), "dst": str(p.dst_dir)})
    assert [r["ok"] for r in run.results] == [True, True, True], run.results
    for n in ("first", "second", "third"):
        assert read(p.dst_dir / n) == n.encode() * 1000
    assert os.listdir(p.src_dir) == []
    assert hidden(p.src_dir, p.dst_dir) == []


def test_block_device_into_a_default_acl_directory_without_proc_gets_no_inherited_acl(fs_pair):
    """Root, with /proc hidden (a chroot without it), moves a block device
    (brw-rw---- root:disk) into a directory whose default ACL names another
    user. The new node must not keep the inherited ACL (that user would get
    read/write on the disk): removed without /proc (removexattrat), or the
    move refused (EXDEV) with nothing changed."""
    need(PRIVILEGED, "mknod and hiding /proc need root")
    need(shutil.which("setfacl") is not None and shutil.which("getfacl") is not None, "acl tools missing")
    p = fs_pair
    acl = subprocess.run(["setfacl", "-d", "-m", "u:1234:rw", str(p.dst_dir)], capture_output=True, text=True)
    need(acl.returncode == 0, f"no ACLs on {p.name}: {acl.stderr.strip()}")
    dev = p.src_dir / "disk"
    os.mknod(dev, 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(dev, 0, 6)
    os.chmod(dev, 0o660)  # whatever the umask
    body = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x00020000) == 0
assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0
assert libc.mount(b"none", b"/proc", b"tmpfs", 0, None) == 0
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
assert libc.umount2(b"/proc", 0) == 0
"""
    run = run_child(body, {"src": str(dev), "dst": str(p.dst_dir / "disk")})
    if run.result["ok"]:
        st = os.lstat(p.dst_dir / "disk")
        assert stat.S_ISBLK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        facl = subprocess.run(["getfacl", "-c", "-p", str(p.dst_dir / "disk")], capture_output=True, text=True).stdout
        assert "user:1234" not in facl, f"the moved device kept the inherited ACL:\n{facl}"
    else:
        assert run.result["errname"] == "EXDEV", run.result
        assert stat.S_ISBLK(os.lstat(dev).st_mode) and not os.path.lexists(p.dst_dir / "disk")


@pytest.mark.parametrize("limit", [20, 32])
def test_a_deep_tree_moves_with_few_descriptors_the_walk_sizes_itself_to_the_limit(fs_pair, limit):
    """RLIMIT_NOFILE of 20 (or 32) in the moving process itself: the walk
    keeps as many levels open, and probes as many files at once, as the
    descriptors left allow, so rename() of a 6-deep tree succeeds; if it
    ever ran out it would be EXDEV, never EMFILE."""
    p = fs_pair
    tree = p.src_dir / "tree"
    make_chain(tree, 6, 40)
    before = listing(tree)
    body = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (ARGS["limit"], resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
"""
    run = run_child(body, {"src": str(tree), "dst": str(p.dst_dir / "tree"), "limit": limit})
    assert run.result["ok"], run.result
    assert not os.path.lexists(tree)
    assert not diff_listings(before, listing(p.dst_dir / "tree"), ignore=("atime_ns",))
