"""Differential ("oracle") helpers: the same rename calls made by the kernel
alone (a child WITHOUT the shim, on one filesystem) and by xrename (a child
WITH the shim, across devices), batched so that one child makes hundreds of
calls.

A child receives on stdin a JSON object

    {"ops": [op, ...], "landlock": null | {"rules": [[dir_hex, rights], ...]}}

and prints one JSON line {"pid", "preloaded", "landlock_abi", "results"}.
Every path travels as hex-encoded bytes, so names that are not UTF-8 work.

An op is {"call", "src", "dst", "sdir", "ddir", "flags"}:
  call  "os.rename" | "os.replace"   (with sdir/ddir: src_dir_fd/dst_dir_fd)
        "libc.rename" | "libc.renameat" | "libc.renameat2"   (ctypes)
  src, dst     hex bytes, or None for a NULL pointer (ctypes calls only)
  sdir, ddir   hex bytes of a directory opened O_RDONLY|O_DIRECTORY (O_PATH
               with "o_path": true) as the dirfd, or None (no dirfd / AT_FDCWD)
  flags        renameat2 flags
A result is {"ok", "errno", "errname", "errno_after"}; errno_after is the
errno a ctypes call left behind on success (set to a sentinel before the
call), None for os.* calls.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from xrename_harness import CHILD_TIMEOUT_S, Mounts, child_env

NOBODY = 65534
OTHER_UID = 1234
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
ERRNO_SENTINEL = 12345

ORACLE_CHILD = r'''
import ctypes, errno, json, os, sys
SPEC = json.loads(sys.stdin.read())
AT_FDCWD = -100
SENTINEL = 12345
libc = ctypes.CDLL(None, use_errno=True)
libc.rename.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.renameat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.syscall.restype = ctypes.c_long

def _preloaded():
    with open("/proc/self/maps") as f:
        return "libxrename" in f.read()

PRELOADED = _preloaded()

def h(x):
    return None if x is None else bytes.fromhex(x)

# ---- Landlock (raw system calls through ctypes) ----
class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]

class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

def landlock_abi():
    v = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return v if v >= 0 else -ctypes.get_errno()

def landlock_all_rights(abi):
    r = (1 << 13) - 1
    if abi >= 2: r |= 1 << 13
    if abi >= 3: r |= 1 << 14
    if abi >= 5: r |= 1 << 15
    return r

def landlock_restrict(rules, abi):
    attr = RulesetAttr(landlock_all_rights(abi))
    rs = libc.syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if rs < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    for d, rights in rules:
        fd = os.open(h(d), os.O_PATH | os.O_CLOEXEC)
        pb = PathBeneath(rights, fd)
        if libc.syscall(ctypes.c_long(445), ctypes.c_int(rs), ctypes.c_int(1), ctypes.byref(pb), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_add_rule")
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.syscall(ctypes.c_long(446), ctypes.c_int(rs), ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(rs)

ABI = landlock_abi()
if SPEC.get("landlock"):
    landlock_restrict(SPEC["landlock"]["rules"], ABI)

# ---- the calls ----
def run(op):
    call, src, dst, flags = op["call"], h(op["src"]), h(op["dst"]), op.get("flags", 0)
    sfd = dfd = None
    res = {"ok": True, "errno": 0, "errname": None, "errno_after": None}
    try:
        how = (os.O_PATH if op.get("o_path") else os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
        if op.get("sdir") is not None:
            sfd = os.open(h(op["sdir"]), how)
        if op.get("ddir") is not None:
            dfd = os.open(h(op["ddir"]), how)
        if call in ("os.rename", "os.replace"):
            fn = os.rename if call == "os.rename" else os.replace
            kw = {}
            if sfd is not None: kw["src_dir_fd"] = sfd
            if dfd is not None: kw["dst_dir_fd"] = dfd
            try:
                fn(src, dst, **kw)
            except OSError as e:
                res.update(ok=False, errno=e.errno)
        else:
            s = AT_FDCWD if sfd is None else sfd
            d = AT_FDCWD if dfd is None else dfd
            ctypes.set_errno(SENTINEL)
            if call == "libc.rename":
                rc = libc.rename(src, dst)
            elif call == "libc.renameat":
                rc = libc.renameat(s, src, d, dst)
            elif call == "libc.renameat2":
                rc = libc.renameat2(s, src, d, dst, flags)
            else:
                raise ValueError(call)
            e = ctypes.get_errno()
            if rc == 0:
                res["errno_after"] = e
            else:
                res.update(ok=False, errno=e)
                if rc != -1:
                    res["bad_rc"] = rc
    finally:
        for fd in (sfd, dfd):
            if fd is not None:
                os.close(fd)
    if not res["ok"]:
        res["errname"] = errno.errorcode.get(res["errno"], str(res["errno"]))
    return res

RESULTS = [run(op) for op in SPEC["ops"]]
print(json.dumps({"pid": os.getpid(), "preloaded": PRELOADED, "landlock_abi": ABI, "results": RESULTS}))
'''


def hx(p: bytes | str | Path | None) -> str | None:
    return None if p is None else os.fsencode(p).hex()


def op(call: str, src, dst, sdir=None, ddir=None, flags: int = 0, o_path: bool = False) -> dict:
    """One call; o_path: open the dirfds with O_PATH (needs no read
    permission on the directory, like a dirfd opened before dropping
    privileges)."""
    return {"call": call, "src": hx(src), "dst": hx(dst), "sdir": hx(sdir), "ddir": hx(ddir),
            "flags": flags, "o_path": o_path}


_python_for: dict[int, str] = {}


def python_for(uid: int) -> str:
    """A Python interpreter the given uid can execute (pyenv under /root is
    not reachable for nobody; the system python is)."""
    if uid in _python_for:
        return _python_for[uid]
    candidates = [sys.executable, "/usr/bin/python3"]
    for c in candidates:
        if uid == os.geteuid():
            _python_for[uid] = c
            return c
        try:
            p = subprocess.run([c, "-c", "import ctypes, json"], capture_output=True,
                               user=uid, group=uid, extra_groups=[], cwd="/",
                               env=child_env(preload=False))
        except PermissionError:
            continue
        if p.returncode == 0:
            _python_for[uid] = c
            return c
    raise AssertionError(f"no Python interpreter executable by uid {uid} among {candidates}")


@dataclass
class Batch:
    results: list[dict]
    landlock_abi: int
    stderr: str


def run_ops(ops: list[dict], preload: bool, uid: int | None = None,
            landlock: list[tuple[bytes | str | Path, int]] | None = None,
            env: dict[str, str] | None = None, trace: bool = False) -> Batch:
    """Make `ops` in one child, with or without the shim, as `uid` (None:
    unchanged identity); with `trace`, unpreloaded under `xrename --trace`
    (the supervisor alone handles every EXDEV).  Asserts the child exited
    0, printed exactly one JSON line, and that the shim was (or was not)
    mapped."""
    spec = {"ops": ops,
            "landlock": None if landlock is None else {"rules": [[hx(d), r] for d, r in landlock]}}
    kw = {}
    if uid is not None and uid != os.geteuid():
        kw = {"user": uid, "group": uid, "extra_groups": []}
    exe = python_for(uid if uid is not None else os.geteuid())
    from xrename_harness import REPO_ROOT
    prefix = [str(REPO_ROOT / "target" / "release" / "xrename"), "--trace", "--"] if trace else []
    proc = subprocess.run([*prefix, exe, "-c", ORACLE_CHILD], input=json.dumps(spec), capture_output=True,
                          text=True, env=child_env(env, preload=preload), cwd="/",
                          timeout=CHILD_TIMEOUT_S, **kw)
    assert proc.returncode == 0, (
        f"child (preload={preload}, uid={uid}) exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"child stdout must be exactly its own JSON line, got:\n{proc.stdout[-4000:]!r}"
    data = json.loads(lines[0])
    assert data["preloaded"] == preload, (
        f"libxrename.so {'not ' if preload else ''}mapped in the child (preload={preload}, uid={uid})"
        f"\n--- stderr ---\n{proc.stderr[-2000:]}")
    assert len(data["results"]) == len(ops)
    return Batch(results=data["results"], landlock_abi=data["landlock_abi"], stderr=proc.stderr)


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------

def res_str(r: dict) -> str:
    return "0" if r["ok"] else f"-1 {r['errname']}"


def res_eq(a: dict, b: dict) -> bool:
    return a["ok"] == b["ok"] and (a["ok"] or a["errno"] == b["errno"])


def errno_res(name: str | None) -> dict:
    """The result of a call that succeeds (None) or fails with errno `name`."""
    if name is None:
        return {"ok": True, "errno": 0, "errname": None}
    return {"ok": False, "errno": getattr(errno, name), "errname": name}


# --------------------------------------------------------------------------
# recursive listings
# --------------------------------------------------------------------------

def _show(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace").encode("unicode_escape").decode("ascii")


def listing(root: bytes | str | Path, owners: bool = True) -> list[str]:
    """Everything below `root`: relative name, type, mode, (owner), file
    contents, symlink targets.  lstat only; atime is not part of it."""
    out: list[str] = []

    def rec(path: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(path)):
            p, r = path + b"/" + name, rel + name
            st = os.lstat(p)
            own = f" {st.st_uid}:{st.st_gid}" if owners else ""
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISDIR(st.st_mode):
                out.append(f"{_show(r)}/ dir {mode}{own}")
                rec(p, r + b"/")
            elif stat.S_ISLNK(st.st_mode):
                out.append(f"{_show(r)} -> {_show(os.readlink(p))}{own}")
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read(256)
                out.append(f"{_show(r)} file {mode}{own} nlink={st.st_nlink} {_show(data)!r}")
            else:
                out.append(f"{_show(r)} type={stat.S_IFMT(st.st_mode):o} {mode}{own}")

    rec(os.fsencode(root), b"")
    return out


def listing_str(lines: list[str]) -> str:
    return "[" + ", ".join(lines) + "]"


# --------------------------------------------------------------------------
# mismatch tables
# --------------------------------------------------------------------------

@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    compared: int = 0

    def add(self, *cells: str, detail: str | None = None) -> None:
        self.rows.append([str(c) for c in cells])
        if detail:
            self.details.append(f"  [{len(self.rows)}] " + detail)

    def render(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        lines = [fmt(self.columns), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in self.rows]
        if self.details:
            lines += ["", "details:"] + self.details
        return "\n".join(lines)

    def check(self, what: str) -> None:
        assert self.compared > 0, f"{what}: no case compared"
        if self.rows:
            raise AssertionError(
                f"{what}: {len(self.rows)} of {self.compared} cases differ\n" + self.render())


# --------------------------------------------------------------------------
# making directories reachable for an unprivileged uid
# --------------------------------------------------------------------------

class OpenRoot:
    """A 0711 directory directly under /tmp (pytest's temp root is 0700)
    holding bind mounts of the test's filesystems, so that another uid can
    reach them by path.  Changing the modes of pytest's shared temp
    directories instead would race with other pytest sessions.  The binds
    live in run.sh's private mount namespace; `cleanup` unmounts them and
    removes the directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xrename-open-", dir="/tmp"))
        os.chmod(self.root, 0o711)
        self.mounts = Mounts()

    def bind(self, src: Path, name: str, read_only: bool = False) -> Path:
        target = self.root / name
        self.mounts.mount(["--bind", str(src)], target, f"bind mount of {src}")
        if read_only:
            self.mounts.remount(["-o", "remount,bind,ro"], target, f"remount {target} read-only")
        return target

    def cleanup(self) -> None:
        try:
            self.mounts.cleanup()
        finally:
            for p in sorted(self.root.iterdir(), reverse=True):
                p.rmdir()
            self.root.rmdir()
