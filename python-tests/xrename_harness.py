"""Shared helpers for the xrename Python test suite.

Everything that runs with the shim runs in a *child* process started by
`run_child`; the pytest process itself is never preloaded (conftest checks).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = REPO_ROOT / "target" / "release" / "libxrename.so"
IN_CI = os.environ.get("CI", "").lower() == "true"

MiB = 1024 * 1024

# A generous upper bound so a hung child fails the test instead of the suite.
# This is not a timing assertion; nothing is measured against it.
CHILD_TIMEOUT_S = 120


# --------------------------------------------------------------------------
# skip-or-fail policy
# --------------------------------------------------------------------------

def need(condition: bool, reason: str) -> None:
    """Require an environment capability (privilege, mount, loop device...).

    Outside CI a missing capability skips the test with `reason`.  Under
    CI=true (always root there) it is a test FAILURE: CI must never silently
    skip coverage because a mount or privilege went missing.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but required capability missing: {reason}", pytrace=False)
    pytest.skip(reason)


def _full_root() -> bool:
    """True only for real root (initial user namespace), not `unshare -Ur` root."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inner, outer, count = (int(x) for x in line.split())
                if inner == 0 and outer == 0 and count == 4294967295:
                    return True
    except OSError:
        pass
    return False


PRIVILEGED = _full_root()


# --------------------------------------------------------------------------
# mounts
# --------------------------------------------------------------------------

class Mounts:
    """Mounts created by one test; `cleanup` unmounts them in reverse order."""

    def __init__(self) -> None:
        self.points: list[Path] = []
        self.after_umount: list[Path] = []

    def try_mount(self, args: list[str], target: Path) -> tuple[bool, str]:
        target.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            return False, (f"{' '.join(['mount', *args, str(target)])}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        self.points.append(target)
        return True, ""

    def mount(self, args: list[str], target: Path, what: str) -> None:
        ok, err = self.try_mount(args, target)
        need(ok, f"cannot mount {what} ({err})")

    def remount(self, args: list[str], target: Path, what: str) -> None:
        proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        need(proc.returncode == 0, f"cannot {what}: {proc.stderr.strip()}")

    def cleanup(self) -> None:
        errors = []
        while self.points:
            p = self.points.pop()
            proc = subprocess.run(["umount", str(p)], capture_output=True, text=True)
            if proc.returncode != 0:
                # Do not leave anything mounted even if something kept it busy.
                subprocess.run(["umount", "-l", str(p)], capture_output=True, text=True)
                errors.append(f"umount {p}: {proc.stderr.strip()}")
        for f in self.after_umount:
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        assert not errors, "teardown could not unmount cleanly: " + "; ".join(errors)


def loop_devices_usable() -> bool:
    return PRIVILEGED and os.path.exists("/dev/loop-control") and shutil.which("mkfs.ext4") is not None


@dataclass
class Pair:
    """A source directory and a destination directory on different mounts."""
    name: str
    src_dir: Path
    dst_dir: Path
    same_fs: bool  # True for the bind pair (same st_dev, still EXDEV)


def assert_cross_device(pair: Pair) -> None:
    """Prove, without the shim (this is the pytest process), that a rename
    from pair.src_dir to pair.dst_dir fails with EXDEV in the kernel."""
    sdev = os.stat(pair.src_dir).st_dev
    ddev = os.stat(pair.dst_dir).st_dev
    if pair.same_fs:
        assert sdev == ddev, f"bind pair {pair.name}: expected same st_dev, got {sdev} vs {ddev}"
    else:
        assert sdev != ddev, f"pair {pair.name}: src and dst share st_dev {sdev}"
    probe = pair.src_dir / ".cross-device-probe"
    target = pair.dst_dir / ".cross-device-probe"
    probe.write_bytes(b"probe")
    try:
        os.rename(probe, target)
    except OSError as e:
        assert e.errno == errno.EXDEV, f"probe rename gave {errno.errorcode.get(e.errno)}, want EXDEV"
    else:
        target.unlink()
        pytest.fail(f"pair {pair.name} is not cross-device: plain rename succeeded")
    finally:
        if probe.exists():
            probe.unlink()
    assert not target.exists()


# --------------------------------------------------------------------------
# running code under the shim
# --------------------------------------------------------------------------

CHILD_PRELUDE = r'''
import ctypes, errno, json, os, pathlib, shutil, sys
ARGS = json.loads(sys.argv[1])
RESULTS = []
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int

def renameat2(olddirfd, old, newdirfd, new, flags=0):
    if _libc.renameat2(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old, None, new)

def attempt(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "errname": errno.errorcode.get(e.errno), "error": str(e)}

def _preloaded():
    with open("/proc/self/maps") as f:
        return "libxrename" in f.read()
'''

CHILD_EPILOGUE = r'''
print(json.dumps({"pid": os.getpid(), "preloaded": _preloaded(), "results": RESULTS}))
'''

# One "method" = one way a program renames a file.  Each body moves
# ARGS["src"] to ARGS["dst"] and appends one attempt() result.
METHOD_BODIES = {
    "os.rename": 'RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
    "os.replace": 'RESULTS.append(attempt(os.replace, ARGS["src"], ARGS["dst"]))',
    "pathlib.Path.rename": 'RESULTS.append(attempt(lambda: pathlib.Path(ARGS["src"]).rename(ARGS["dst"])))',
    # shutil.move falls back to copy+unlink on EXDEV; disable that fallback so
    # the move can only succeed if rename() itself (the shim) succeeded.
    "shutil.move": '''
def _no_copy(*a, **k):
    raise AssertionError("shutil fell back to copying: rename() was not handled by the shim")
shutil.copy2 = shutil.copyfile = shutil.copytree = shutil.copy = _no_copy
RESULTS.append(attempt(shutil.move, ARGS["src"], ARGS["dst"]))
''',
    # renameat(2) with real directory fds and names relative to them.
    "os.rename-dir_fd": '''
_s = os.open(os.path.dirname(ARGS["src"]), os.O_RDONLY | os.O_DIRECTORY)
_d = os.open(os.path.dirname(ARGS["dst"]), os.O_RDONLY | os.O_DIRECTORY)
RESULTS.append(attempt(os.rename, os.path.basename(ARGS["src"]), os.path.basename(ARGS["dst"]),
                       src_dir_fd=_s, dst_dir_fd=_d))
os.close(_s); os.close(_d)
''',
    # renameat2(2) (flags=0) through libc with real directory fds.
    "renameat2": '''
_s = os.open(os.path.dirname(ARGS["src"]), os.O_RDONLY | os.O_DIRECTORY)
_d = os.open(os.path.dirname(ARGS["dst"]), os.O_RDONLY | os.O_DIRECTORY)
RESULTS.append(attempt(renameat2, _s, os.path.basename(ARGS["src"]), _d, os.path.basename(ARGS["dst"])))
os.close(_s); os.close(_d)
''',
}
METHODS = list(METHOD_BODIES)


@dataclass
class ChildRun:
    pid: int
    results: list[dict]
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        assert len(self.results) == 1, self.results
        return self.results[0]


def child_env(extra: dict[str, str] | None = None, preload: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith("XRENAME_")}
    if preload:
        env["LD_PRELOAD"] = str(LIBRARY)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_child(body: str, args: dict | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None, strace_to: Path | None = None,
              strace_args: tuple[str, ...] = ()) -> ChildRun:
    """Run `body` in a fresh Python under LD_PRELOAD=libxrename.so.

    Asserts the child exited 0, that the shim really was loaded in it, and
    that its stdout is *exactly* the one JSON line the child printed itself
    (the library must never write to stdout).
    """
    script = CHILD_PRELUDE + "\n" + body + "\n" + CHILD_EPILOGUE
    argv = [sys.executable, "-c", script, json.dumps(args or {})]
    full_env = child_env(env)
    if strace_to is not None:
        # Preload only the traced program, not strace itself.
        argv = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=%file,%desc", *strace_args,
                "-o", str(strace_to), "-E", f"LD_PRELOAD={full_env.pop('LD_PRELOAD')}", "--", *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=full_env, cwd=cwd,
        timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"child exited with {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"child stdout must be exactly its own JSON line, got:\n{proc.stdout!r}"
    data = json.loads(lines[0])
    assert proc.stdout == json.dumps(data) + "\n", f"unexpected bytes on child stdout: {proc.stdout!r}"
    assert data["preloaded"], "libxrename.so was not mapped in the child: LD_PRELOAD had no effect"
    return ChildRun(pid=data["pid"], results=data["results"], stdout=proc.stdout, stderr=proc.stderr)


def move_with(method: str, src: Path | str, dst: Path | str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> ChildRun:
    return run_child(METHOD_BODIES[method], {"src": str(src), "dst": str(dst)}, env=env, cwd=cwd)


def assert_ok(run: ChildRun) -> None:
    r = run.result
    assert r["ok"], f"rename failed under the shim: {r}\nchild stderr:\n{run.stderr}"


def assert_errno(run: ChildRun, name: str) -> None:
    r = run.result
    assert not r["ok"], f"expected OSError {name}, but the rename succeeded"
    assert r["errname"] == name, f"expected OSError {name}, got {r['errname']}: {r['error']}"


# --------------------------------------------------------------------------
# files and metadata
# --------------------------------------------------------------------------

def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))}


def snapshot(path: Path) -> dict:
    """Metadata that must survive a cross-device move (lstat: no atime update)."""
    st = os.lstat(path)
    return {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "nlink": st.st_nlink,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
        "xattrs": xattrs(path),
    }


def assert_metadata_equal(before: dict, after: dict, fields: list[str] | None = None) -> None:
    fields = fields or list(before)
    diffs = []
    for f in fields:
        b, a = before[f], after[f]
        if b != a:
            if f == "mode":
                b, a = oct(b), oct(a)
            diffs.append(f"  {f}: before={b!r} after={a!r}")
    assert not diffs, "metadata changed by the move:\n" + "\n".join(diffs)


def entries(d: Path) -> set[str]:
    return set(os.listdir(d))


# Odd nanosecond values well in the past (2001 and 2003), distinct from each
# other and never produced by "now".
PAST_ATIME_NS = 1_000_000_000 * 1_000_000_001 + 123_456_789
PAST_MTIME_NS = 1_000_000_000 * 1_050_000_003 + 987_654_321
