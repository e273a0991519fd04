"""Hostile arguments and permission parity (the Python side of c-tests/
hostile.c, perms.c and landlock.c, where Python can express them).

Every answer is compared with the kernel's own: the same calls made by a
child WITHOUT the shim on ONE filesystem (same identity, same sandbox).  The
shimmed child works across devices.  A refused call must change nothing
(recursive listing of the parents of both directories: no leftovers); a
successful one must leave what the kernel's rename leaves on one fs.

Unprivileged runs use uid/gid 65534 with no supplementary groups
(subprocess user=/group=/extra_groups=[]); they reach the test's
filesystems through bind mounts in a 0711 directory under /tmp (the pytest
temp root is 0700).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from oracle_harness import (
    ERRNO_SENTINEL, NOBODY, OTHER_UID, RENAME_EXCHANGE, RENAME_NOREPLACE, OpenRoot, Table,
    errno_res, listing, listing_str, op, res_eq, res_str, run_ops,
)
from xrename_harness import PRIVILEGED, Pair, assert_cross_device, need, run_child

NAME_MAX = 255
PATH_MAX = 4096


def _j(d: Path | bytes, name: str | bytes) -> bytes:
    return os.fsencode(d) + b"/" + os.fsencode(name)


def snap(*dirs: Path) -> list[str]:
    out = []
    for d in dirs:
        out += [f"{os.fsencode(d).rsplit(b'/', 1)[-1].decode()}:"] + listing(d)
    return out


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture
def opened(tmpfs, ext4):
    """The tmpfs and the ext4 fixture, reachable by path for uid 65534."""
    o = OpenRoot()
    try:
        o.tmpfs = o.bind(tmpfs, "tmpfs")
        o.ext4 = o.bind(ext4, "ext4")
        yield o
    finally:
        o.cleanup()


@dataclass
class Dirs:
    """same: S and D on one tmpfs; cross: S on tmpfs, D on ext4."""
    sS: Path
    sD: Path
    xS: Path
    xD: Path


@pytest.fixture
def dirs(tmpfs, ext4) -> Dirs:
    d = Dirs(tmpfs / "same" / "S", tmpfs / "same" / "D", tmpfs / "cross" / "S", ext4 / "cross" / "D")
    for p in (d.sS, d.sD, d.xS, d.xD):
        p.mkdir(parents=True)
    assert_cross_device(Pair("tmpfs-to-ext4", d.xS, d.xD, same_fs=False))
    return d


COLUMNS = ["call", "as", "expected", "got", "problem"]


def _must_stay(d: Dirs) -> None:
    """The source S/a of calls that must fail, on both sides."""
    for S in (d.sS, d.xS):
        (S / "a").write_text("must stay\n")


def failing_parity(build: Callable[[Path, Path], list[tuple[str, dict]]], d: Dirs,
                   documented: str | None, what: str, uid: int | None = None) -> None:
    """Calls that must all fail: the kernel (one fs) and xrename (across
    devices) must give the same errno, `documented` if given, and change
    nothing on either side.  Mismatches are the rows of table `what`."""
    table = Table(COLUMNS)
    same_ops, cross_ops = build(d.sS, d.sD), build(d.xS, d.xD)
    pre_same, pre_cross = snap(d.sS.parent, d.sD.parent), snap(d.xS.parent, d.xD.parent)
    want = run_ops([o for _, o in same_ops], preload=False, uid=uid).results
    got = run_ops([o for _, o in cross_ops], preload=True, uid=uid).results
    who = "root" if uid is None else str(uid)
    for (label, _), w, g in zip(same_ops, want, got):
        table.compared += 1
        if documented is not None and not res_eq(w, errno_res(documented)):
            table.add(label, who, f"-1 {documented}", res_str(w), "test assumption: same-fs kernel")
        if "bad_rc" in g:
            table.add(label, who, res_str(w), f"rc={g['bad_rc']}", "return value is not 0 or -1")
        elif not res_eq(g, w):
            table.add(label, who, res_str(w), res_str(g), "differs from the same-fs kernel")
    post_cross = snap(d.xS.parent, d.xD.parent)
    if post_cross != pre_cross:
        table.add("(all calls)", who, "no change", "changed", "directories changed",
                  detail=f"before: {listing_str(pre_cross)}\n      after:  {listing_str(post_cross)}")
    assert snap(d.sS.parent, d.sD.parent) == pre_same, "test assumption: the kernel changed the same-fs side"
    table.check(what)


def succeeding_parity(build: Callable[[Path, Path], list[tuple[str, dict]]], d: Dirs, what: str,
                      differ: str, check_errno: bool = False) -> None:
    """Calls that must all succeed: the kernel (one fs) must succeed, xrename
    (across devices) must give the same result (and, with `check_errno`,
    leave errno alone), and both sides must end up alike (else `differ`).
    Mismatches are the rows of table `what`."""
    table = Table(COLUMNS)
    same_ops, cross_ops = build(d.sS, d.sD), build(d.xS, d.xD)
    want = run_ops([o for _, o in same_ops], preload=False).results
    got = run_ops([o for _, o in cross_ops], preload=True).results
    for (label, _), w, g in zip(same_ops, want, got):
        table.compared += 1
        if not w["ok"]:
            table.add(label, "root", "0", res_str(w), "test assumption: same-fs kernel failed")
        elif not res_eq(g, w):
            table.add(label, "root", res_str(w), res_str(g), "differs from the same-fs kernel")
        elif check_errno and g["errno_after"] not in (None, ERRNO_SENTINEL):
            table.add(label, "root", "0", "0", f"errno changed on success to {g['errno_after']}")
    a, b = snap(d.sS, d.sD), snap(d.xS, d.xD)
    if a != b:
        table.add("(result)", "root", "same-fs tree", "differs", differ,
                  detail=f"same-fs: {listing_str(a)}\n      cross:   {listing_str(b)}")
    table.check(what)


def calls_on(S: Path, sname, D: Path, dname, flags_too: bool = True) -> list[tuple[str, dict]]:
    """The same rename through every entry point."""
    s, t = _j(S, sname), _j(D, dname)
    out = [
        ("os.rename", op("os.rename", s, t)),
        ("os.replace", op("os.replace", s, t)),
        ("os.rename(dir_fd)", op("os.rename", sname, dname, sdir=S, ddir=D)),
        ("libc rename", op("libc.rename", s, t)),
        ("libc renameat(AT_FDCWD)", op("libc.renameat", s, t)),
        ("libc renameat2(dirfds, 0)", op("libc.renameat2", sname, dname, sdir=S, ddir=D)),
    ]
    if flags_too:
        out.append(("libc renameat2(dirfds, NOREPLACE)",
                    op("libc.renameat2", sname, dname, sdir=S, ddir=D, flags=RENAME_NOREPLACE)))
    return out


# --------------------------------------------------------------------------
# hostile arguments
# --------------------------------------------------------------------------

def test_empty_paths_give_enoent_like_the_kernel(dirs):
    _must_stay(dirs)

    def build(S, D):
        out = []
        for src, dst, what in [(b"", _j(D, "b"), '("", dst)'), (_j(S, "a"), b"", '(src, "")'),
                               (b"", b"", '("", "")')]:
            out += [(f"os.rename{what}", op("os.rename", src, dst)),
                    (f"os.replace{what}", op("os.replace", src, dst)),
                    (f"libc rename{what}", op("libc.rename", src, dst)),
                    (f"libc renameat{what}", op("libc.renameat", src, dst)),
                    (f"libc renameat2 NOREPLACE{what}",
                     op("libc.renameat2", src, dst, flags=RENAME_NOREPLACE))]
        out += [('os.rename(dirfd, "", dirfd, "b")', op("os.rename", b"", b"b", sdir=S, ddir=D)),
                ('renameat(dirfd, "a", dirfd, "")', op("libc.renameat", b"a", b"", sdir=S, ddir=D)),
                ('renameat2(dirfd, "", dirfd, "b", 0)', op("libc.renameat2", b"", b"b", sdir=S, ddir=D)),
                ('renameat2(dirfd, "a", dirfd, "", NOREPLACE)',
                 op("libc.renameat2", b"a", b"", sdir=S, ddir=D, flags=RENAME_NOREPLACE))]
        return out

    failing_parity(build, dirs, "ENOENT", "empty paths")


def test_names_longer_than_name_max_give_enametoolong_like_the_kernel(dirs):
    long = "L" * (NAME_MAX + 1)
    for S in (dirs.sS, dirs.xS):
        (S / "f").write_text("f\n")
        (S / "t").mkdir()
        (S / "t" / "inner").write_text("inner\n")

    def build(S, D):
        out = []
        for src in ("f", "t"):
            for c, o in calls_on(S, long, D, "b"):
                out.append((f"{c}: {NAME_MAX + 1}-byte source name", o))
            for c, o in calls_on(S, src, D, long):
                out.append((f"{c}: {src} -> {NAME_MAX + 1}-byte destination name", o))
            for c, o in calls_on(S, src, D, f"{long}/x"):
                out.append((f"{c}: {src} -> {NAME_MAX + 1}-byte middle component", o))
        return out

    failing_parity(build, dirs, "ENAMETOOLONG", "over-long names")


def test_paths_longer_than_path_max_give_enametoolong_like_the_kernel(dirs):
    _must_stay(dirs)

    def padded(d: Path, name: str) -> bytes:
        p = os.fsencode(d)
        while len(p) < PATH_MAX + 4:
            p += b"/."
        return p + b"/" + name.encode()

    def build(S, D):
        out = []
        for what, src, dst in [("long source", padded(S, "a"), _j(D, "b")),
                               ("long destination", _j(S, "a"), padded(D, "b")),
                               ("both long", padded(S, "a"), padded(D, "b"))]:
            out += [(f"os.rename({what})", op("os.rename", src, dst)),
                    (f"os.replace({what})", op("os.replace", src, dst)),
                    (f"libc rename({what})", op("libc.rename", src, dst)),
                    (f"libc renameat2 NOREPLACE({what})",
                     op("libc.renameat2", src, dst, flags=RENAME_NOREPLACE))]
        return out

    failing_parity(build, dirs, "ENAMETOOLONG", "paths longer than PATH_MAX")


def test_null_path_pointers_give_efault_without_crashing(dirs):
    _must_stay(dirs)

    def build(S, D):
        out = []
        for what, src, dst in [("NULL, dst", None, _j(D, "b")), ("src, NULL", _j(S, "a"), None),
                               ("NULL, NULL", None, None)]:
            out += [(f"rename({what})", op("libc.rename", src, dst)),
                    (f"renameat(AT_FDCWD, {what})", op("libc.renameat", src, dst)),
                    (f"renameat2(AT_FDCWD, {what}, 0)", op("libc.renameat2", src, dst)),
                    (f"renameat2(AT_FDCWD, {what}, NOREPLACE)",
                     op("libc.renameat2", src, dst, flags=RENAME_NOREPLACE))]
        out += [("renameat(dirfd, NULL, dirfd, \"b\")", op("libc.renameat", None, b"b", sdir=S, ddir=D)),
                ("renameat2(dirfd, \"a\", dirfd, NULL, NOREPLACE)",
                 op("libc.renameat2", b"a", None, sdir=S, ddir=D, flags=RENAME_NOREPLACE))]
        return out

    failing_parity(build, dirs, "EFAULT", "NULL pointers")  # run_ops asserts the children exited 0


ODD_NAMES = [b"\xff\xfe", b"new\nline", b"tab\there", b"\x01\x7f", b" lead space", b"-dash",
             b"\xc3\x28", b"trailing\n", b"\n"]


def test_non_utf8_and_newline_names_move_like_the_kernel_moves_them(dirs):
    """Files, a symlink and a directory tree with names that are not UTF-8 or
    hold newlines, moved with bytes paths through every entry point: every
    call succeeds and the result equals the kernel's same-fs rename."""
    calls = ["os.rename", "os.replace", "os.rename(dir_fd)", "renameat2(NOREPLACE)"]

    def setup(S: Path) -> None:
        Sb = os.fsencode(S)
        for i, n in enumerate(ODD_NAMES):
            for k in range(len(calls)):
                with open(Sb + b"/" + n + b".%d" % k, "wb") as f:
                    f.write(n + b" #%d" % i)
        tree = Sb + b"/\xff\ntree"
        os.mkdir(tree)
        for n in ODD_NAMES:
            with open(tree + b"/" + n, "wb") as f:
                f.write(n)
        os.symlink(b"\xff\xfe", tree + b"/link\n")
        os.symlink(b"\xfe\n\xff", Sb + b"/sym\xff\n")

    def build(S: Path, D: Path) -> list[tuple[str, dict]]:
        Sb, Db = os.fsencode(S), os.fsencode(D)
        out = []
        for n in ODD_NAMES:
            for k, c in enumerate(calls):
                s, t = n + b".%d" % k, b"moved." + n + b".%d" % k
                if c == "os.rename(dir_fd)":
                    o = op("os.rename", s, t, sdir=S, ddir=D)
                elif c == "renameat2(NOREPLACE)":
                    o = op("libc.renameat2", s, t, sdir=S, ddir=D, flags=RENAME_NOREPLACE)
                else:
                    o = op(c, Sb + b"/" + s, Db + b"/" + t)
                out.append((f"{c} {n!r}", o))
        out.append(("renameat2(NOREPLACE) tree b'\\xff\\ntree'",
                    op("libc.renameat2", Sb + b"/\xff\ntree", Db + b"/\xfe\ntree", flags=RENAME_NOREPLACE)))
        out.append(("os.rename symlink b'sym\\xff\\n'", op("os.rename", Sb + b"/sym\xff\n", Db + b"/\n\xfe")))
        return out

    setup(dirs.sS)
    setup(dirs.xS)
    succeeding_parity(build, dirs, "odd names", "moved trees differ", check_errno=True)
    assert os.listdir(dirs.xS) == [], "sources left behind"
    assert os.readlink(os.fsencode(dirs.xD) + b"/\xfe\ntree/link\n") == b"\xff\xfe"


def test_name_max_names_move_across_devices_like_the_kernel(dirs):
    """A 255-byte name is valid: a file (new and over an existing one) and a
    directory holding a 255-byte name move (temporary names must not be
    derived from the name)."""
    name = "n" * NAME_MAX

    def setup(S: Path, D: Path) -> None:
        for k in range(4):
            (S / f"{k}").mkdir()
            (S / f"{k}" / name).write_text(f"long name {k}\n")
            (D / f"{k}").mkdir()
        (D / "1" / name).write_text("old\n")
        (S / "t").mkdir()
        (S / "t" / name).mkdir()
        (S / "t" / name / name).write_text("inner\n")

    def build(S: Path, D: Path):
        return [("os.rename new", op("os.rename", _j(S, f"0/{name}"), _j(D, f"0/{name}"))),
                ("os.replace over a file", op("os.replace", _j(S, f"1/{name}"), _j(D, f"1/{name}"))),
                ("renameat2(dirfds, 0)", op("libc.renameat2", name, name, sdir=S / "2", ddir=D / "2")),
                ("renameat2(dirfds, NOREPLACE)",
                 op("libc.renameat2", name, name, sdir=S / "3", ddir=D / "3", flags=RENAME_NOREPLACE)),
                ("os.rename directory", op("os.rename", _j(S, f"t/{name}"), _j(D, name)))]

    setup(dirs.sS, dirs.sD)
    setup(dirs.xS, dirs.xD)
    succeeding_parity(build, dirs, "NAME_MAX names", "results differ")


# --------------------------------------------------------------------------
# permission parity, as root and as nobody
# --------------------------------------------------------------------------

IDENTITIES = {"root": None, "nobody": NOBODY}

# dirfds are O_PATH: a 0333 directory cannot be opened for reading by nobody
PERM_CALLS: dict[str, Callable[[Path, Path], dict]] = {
    "os.rename": lambda S, D: op("os.rename", _j(S, "a"), _j(D, "b")),
    "os.rename(dir_fd)": lambda S, D: op("os.rename", "a", "b", sdir=S, ddir=D, o_path=True),
    "renameat2(0)": lambda S, D: op("libc.renameat2", "a", "b", sdir=S, ddir=D, o_path=True),
    "renameat2(NOREPLACE)": lambda S, D: op("libc.renameat2", "a", "b", sdir=S, ddir=D,
                                            flags=RENAME_NOREPLACE, o_path=True),
}


def own(p: Path, uid: int, mode: int) -> None:
    os.lchown(p, uid, uid)
    os.chmod(p, mode)


def file_for(S: Path, uid: int, mode: int = 0o644) -> None:
    (S / "a").write_text("source content\n")
    own(S / "a", uid, mode)


def chattr(p: Path, flags: str) -> None:
    r = subprocess.run(["chattr", flags, str(p)], capture_output=True, text=True)
    assert r.returncode == 0, f"chattr {flags} {p}: {r.stderr}"


@dataclass
class PermSide:
    """Case (identity, call) lives in base/<n>/s/S and base/<n>/d/D; `w`
    bases are where root writes the setup, `c` bases where the call is made
    (they differ only behind a read-only mount)."""
    src_w: Path
    dst_w: Path
    src_c: Path
    dst_c: Path

    def paths(self, n: int, write: bool) -> tuple[Path, Path]:
        s, d = (self.src_w, self.dst_w) if write else (self.src_c, self.dst_c)
        return s / f"{n:02d}" / "s" / "S", d / f"{n:02d}" / "d" / "D"

    def snap(self, n: int) -> list[str]:
        S, D = self.paths(n, write=False)
        return ["S:"] + listing(S.parent) + ["D:"] + listing(D.parent)


@dataclass
class PermCase:
    label: str
    setup: Callable[[Path, Path], None]
    want_nobody: str | None   # documented errno name, None = success
    want_root: str | None
    want_noreplace: str | None = None  # for NOREPLACE, if it differs (EEXIST)


def run_perm_case(pc: PermCase, same: PermSide, cross: PermSide,
                  chattr_paths: Callable[[Path, Path], list[Path]] | None = None) -> None:
    table = Table(["case", "as", "call", "expected", "got", "problem"])
    n = 0
    plan = []  # (who, uid, call, n)
    for who, uid in IDENTITIES.items():
        for call in PERM_CALLS:
            plan.append((who, uid, call, n))
            for side in (same, cross):
                S, D = side.paths(n, write=True)
                S.mkdir(parents=True)
                D.mkdir(parents=True)
                pc.setup(S, D)
            n += 1
    pre_cross = {i: cross.snap(i) for *_, i in plan}
    results = {}
    try:
        for who, uid in IDENTITIES.items():
            mine = [(call, i) for w, _, call, i in plan if w == who]
            want = run_ops([PERM_CALLS[c](*same.paths(i, False)) for c, i in mine], preload=False, uid=uid).results
            got = run_ops([PERM_CALLS[c](*cross.paths(i, False)) for c, i in mine], preload=True, uid=uid).results
            for (c, i), w, g in zip(mine, want, got):
                results[i] = (w, g)
        for who, uid, call, i in plan:
            w, g = results[i]
            table.compared += 1
            doc = pc.want_nobody if uid else pc.want_root
            if call == "renameat2(NOREPLACE)" and pc.want_noreplace:
                doc = pc.want_noreplace
            cells = [pc.label, who, call]
            if not res_eq(w, errno_res(doc)):
                table.add(*cells, res_str(errno_res(doc)), res_str(w),
                          "test assumption: the same-fs kernel differs from the documented errno")
            post = cross.snap(i)
            if not res_eq(g, w):
                table.add(*cells, res_str(w), res_str(g), "differs from the same-fs kernel")
            elif not g["ok"] and post != pre_cross[i]:
                table.add(*cells, res_str(w), res_str(g), "failed call changed the directories",
                          detail=f"before: {listing_str(pre_cross[i])}\n      after:  {listing_str(post)}")
            elif g["ok"] and post != same.snap(i):
                table.add(*cells, res_str(w), res_str(g), "result differs from the same-fs rename",
                          detail=f"same-fs: {listing_str(same.snap(i))}\n      cross:   {listing_str(post)}")
    finally:
        if chattr_paths:
            for side in (same, cross):
                for i in range(n):
                    for p in chattr_paths(*side.paths(i, write=True)):
                        if os.path.lexists(p):
                            chattr(p, "-ia")
    table.check(pc.label)


def simple_sides(same_fs: Path, src_fs: Path, dst_fs: Path) -> tuple[PermSide, PermSide]:
    same = PermSide(same_fs / "p-same", same_fs / "p-same", same_fs / "p-same", same_fs / "p-same")
    cross = PermSide(src_fs / "p-src", dst_fs / "p-dst", src_fs / "p-src", dst_fs / "p-dst")
    for p in (same.src_w, cross.src_w, cross.dst_w):
        p.mkdir(exist_ok=True)
    assert_cross_device(Pair("perm", cross.src_w, cross.dst_w, same_fs=False))
    return same, cross


@pytest.fixture
def privileged():
    need(PRIVILEGED, "needs real root to chown and to drop to uid 65534")


def _file_case(S, D, s_mode=0o777, d_mode=0o777, uid=NOBODY, target=None):
    """S/a of `uid` in root's S (s_mode), for root's D (d_mode); `target`
    (text, uid, mode): an existing D/b."""
    file_for(S, uid)
    own(S, 0, s_mode)
    if target:
        text, t_uid, t_mode = target
        (D / "b").write_text(text)
        own(D / "b", t_uid, t_mode)
    own(D, 0, d_mode)


def _dir_case(S, D, uid, mode, inner_uid=None):
    """Directory S/a (holding `inner`, of inner_uid if given) of `uid`, mode
    `mode`, in root's S for root's D (both 0777)."""
    (S / "a").mkdir()
    (S / "a" / "inner").write_text("inner\n")
    if inner_uid is not None:
        own(S / "a" / "inner", inner_uid, 0o644)
    own(S / "a", uid, mode)
    own(S, 0, 0o777)
    own(D, 0, 0o777)


def _sticky_source(S, D):
    _file_case(S, D, s_mode=0o1777, uid=OTHER_UID)


def _source_not_writable(S, D):
    _file_case(S, D, s_mode=0o555)


def _dest_not_writable(S, D):
    _file_case(S, D, d_mode=0o555)


def _sticky_dest(S, D):
    _file_case(S, D, d_mode=0o1777, target=("someone else's file\n", OTHER_UID, 0o644))


def _dir_not_writable(S, D):
    _dir_case(S, D, 0, 0o555, inner_uid=NOBODY)  # a new ".." needs write permission on the directory itself


def _write_search_only(S, D):
    _file_case(S, D, s_mode=0o333, d_mode=0o333)


def _sticky_own_file(S, D):
    _file_case(S, D, s_mode=0o1777)


def _foreign_readonly_target(S, D):
    _file_case(S, D, target=("root's read-only file\n", 0, 0o444))


def _plain(S, D):
    _file_case(S, D)


TMPFS_CASES = {
    "sticky_source_dir_refuses_other_users_file_with_eperm":
        PermCase("sticky 01777 source dir, file of uid 1234", _sticky_source, "EPERM", None),
    "source_dir_without_write_permission_gives_eacces":
        PermCase("source dir 0555", _source_not_writable, "EACCES", None),
    "destination_dir_without_write_permission_gives_eacces":
        PermCase("destination dir 0555", _dest_not_writable, "EACCES", None),
    "sticky_destination_refuses_replacing_other_users_file_with_eperm":
        PermCase("sticky 01777 dest dir, target of uid 1234", _sticky_dest, "EPERM", None, "EEXIST"),
    "directory_without_write_permission_cannot_change_parent":
        PermCase("directory 0555 moved to another parent", _dir_not_writable, "EACCES", None),
    "write_and_search_only_directories_allow_the_move":
        PermCase("source and destination dirs 0333", _write_search_only, None, None),
    "sticky_source_dir_allows_moving_own_file":
        PermCase("sticky 01777 source dir, own file", _sticky_own_file, None, None),
    "replacing_other_users_read_only_file_needs_only_directory_permission":
        PermCase("target 0444 of root in a 0777 dir", _foreign_readonly_target, None, None, "EEXIST"),
}


@pytest.mark.parametrize("case", list(TMPFS_CASES))
def test_permission_errors_match_the_kernel_as_root_and_nobody(privileged, opened, case):
    same, cross = simple_sides(opened.tmpfs, opened.tmpfs, opened.ext4)
    run_perm_case(TMPFS_CASES[case], same, cross)


def _immutable_file(S, D):
    _plain(S, D)
    chattr(S / "a", "+i")


def _append_only_file(S, D):
    _plain(S, D)
    chattr(S / "a", "+a")


def _append_only_source_dir(S, D):
    _plain(S, D)
    chattr(S, "+a")


def _immutable_dir_object(S, D):
    _dir_case(S, D, NOBODY, 0o777)
    chattr(S / "a", "+i")


EXT4_CASES = {
    "immutable_source_file_gives_eperm":
        PermCase("immutable (+i) source file", _immutable_file, "EPERM", "EPERM"),
    "append_only_source_file_gives_eperm":
        PermCase("append-only (+a) source file", _append_only_file, "EPERM", "EPERM"),
    "append_only_source_directory_gives_eperm":
        PermCase("append-only (+a) source directory", _append_only_source_dir, "EPERM", "EPERM"),
    "immutable_directory_as_source_gives_eperm":
        PermCase("immutable (+i) directory as the source", _immutable_dir_object, "EPERM", "EPERM"),
}


@pytest.mark.parametrize("case", list(EXT4_CASES))
def test_chattr_flags_on_an_ext4_source_give_eperm_like_the_kernel(privileged, ext4, opened, case):
    need(os.statvfs(ext4).f_fsid != 0 and subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", str(ext4)], capture_output=True, text=True).stdout.strip() == "ext4",
        "the ext4 fixture is not a real ext4 mount: no chattr flags")
    same, cross = simple_sides(opened.ext4, opened.ext4, opened.tmpfs)
    run_perm_case(EXT4_CASES[case], same, cross,
                  chattr_paths=lambda S, D: [S, S / "a"])


def test_moves_into_an_append_only_directory_leave_no_hidden_name(privileged, tmpfs, ext4):
    """Two names of one file moved into an ext4 directory that is
    append-only (+a: entries may be added, never renamed or removed).
    The second move would reuse the first one's copy through a hidden hard
    link, which could never be renamed to its name there (EPERM, and the
    link stuck for good): it is copied like the first instead. A file
    replacing one there is refused without leaving a hidden name."""
    need(subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(ext4)], capture_output=True,
                        text=True).stdout.strip() == "ext4", "the ext4 fixture is not a real ext4 mount: no chattr flags")
    src, dst = tmpfs / "s", ext4 / "d"
    src.mkdir()
    dst.mkdir()
    (src / "a").write_bytes(b"one file, two names")
    os.link(src / "a", src / "b")
    chattr(dst, "+a")
    try:
        run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"] + "/a", ARGS["dst"] + "/a"))\n'
                        'RESULTS.append(attempt(os.rename, ARGS["src"] + "/b", ARGS["dst"] + "/b"))',
                        {"src": str(src), "dst": str(dst)})
        assert [r["ok"] for r in run.results] == [True, True], run.results
        assert sorted(os.listdir(dst)) == ["a", "b"]
        assert (dst / "a").read_bytes() == (dst / "b").read_bytes() == b"one file, two names"
        assert os.listdir(src) == []
        # Replacing a name there: the old file could never leave it (the
        # kernel says EPERM on one filesystem); nothing hidden is left.
        (src / "c").write_bytes(b"new")
        run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                        {"src": str(src / "c"), "dst": str(dst / "a")})
        assert run.result["errname"] in ("EXDEV", "EPERM"), run.result
        assert sorted(os.listdir(dst)) == ["a", "b"] and (dst / "a").read_bytes() == b"one file, two names"
        assert (src / "c").read_bytes() == b"new"
    finally:
        chattr(dst, "-a")


def _read_only_view(ext4: Path, opened: OpenRoot) -> tuple[Path, Path]:
    """(origin on ext4, read-only bind view of it); both hold same/ and cross/."""
    origin = ext4 / "ro-origin"
    (origin / "same").mkdir(parents=True)
    (origin / "cross").mkdir()
    return origin, opened.bind(origin, "ro-view", read_only=True)


def test_read_only_source_mount_gives_erofs_like_the_kernel(privileged, ext4, opened):
    origin, view = _read_only_view(ext4, opened)
    dst = opened.tmpfs / "ro-dst"
    dst.mkdir()
    # setup writes through origin, calls go through the read-only view
    same = PermSide(origin / "same", origin / "same", view / "same", view / "same")
    cross = PermSide(origin / "cross", dst, view / "cross", dst)
    (origin / "cross" / "probe").write_text("probe")  # the kernel says EXDEV for view -> tmpfs
    with pytest.raises(OSError) as exc:
        os.rename(view / "cross" / "probe", dst / "probe")
    assert exc.value.errno == errno.EXDEV, f"precondition: unshimmed rename gave {exc.value}"
    (origin / "cross" / "probe").unlink()
    run_perm_case(PermCase("source on a read-only mount", _plain, "EROFS", "EROFS"), same, cross)


def test_read_only_destination_mount_gives_erofs_like_the_kernel(privileged, ext4, opened):
    origin, view = _read_only_view(ext4, opened)
    src = opened.tmpfs / "rw-src"
    src.mkdir()
    same = PermSide(origin / "same", origin / "same", view / "same", view / "same")
    cross = PermSide(src, origin / "cross", src, view / "cross")
    assert_cross_device(Pair("tmpfs-to-ro", src, view / "cross", same_fs=False))
    run_perm_case(PermCase("destination on a read-only mount", _plain, "EROFS", "EROFS"), same, cross)


# --------------------------------------------------------------------------
# Landlock
# --------------------------------------------------------------------------

def landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    v = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return v if v >= 0 else -ctypes.get_errno()


LL_REMOVE_FILE = 1 << 5
LL_MAKE_REG = 1 << 8
LL_REFER = 1 << 13


def all_rights(abi: int) -> int:
    r = (1 << 13) - 1
    if abi >= 2:
        r |= LL_REFER
    if abi >= 3:
        r |= 1 << 14
    if abi >= 5:
        r |= 1 << 15
    return r


def _sibling_dirs(tmpfs: Path) -> tuple[Path, Path]:
    """Fresh sibling directories S and D of one tmpfs."""
    S, D = tmpfs / "ll" / "S", tmpfs / "ll" / "D"
    S.mkdir(parents=True)
    D.mkdir()
    return S, D


@pytest.fixture
def landlock() -> int:
    abi = landlock_abi()
    need(abi >= 2, f"Landlock with LANDLOCK_ACCESS_FS_REFER is not available (ABI/errno {abi})")
    return abi


@pytest.mark.parametrize("denied", ["MAKE_REG on the destination", "REMOVE_FILE on the source"])
def test_landlock_missing_right_gives_the_kernel_eacces_and_changes_nothing(landlock, dirs, denied):
    base = all_rights(landlock) & ~LL_REFER
    deny_s, deny_d = (0, LL_MAKE_REG) if denied.startswith("MAKE_REG") else (LL_REMOVE_FILE, 0)
    for S in (dirs.sS, dirs.xS):
        (S / "a").write_text("must stay here\n")
    pre_same = snap(dirs.sS, dirs.sD)
    pre_cross = snap(dirs.xS, dirs.xD)
    want = run_ops([op("os.rename", _j(dirs.sS, "a"), _j(dirs.sD, "b"))], preload=False,
                   landlock=[(dirs.sS, base & ~deny_s), (dirs.sD, base & ~deny_d)]).results[0]
    assert res_eq(want, errno_res("EACCES")), f"same-fs kernel under Landlock gave {res_str(want)}"
    assert snap(dirs.sS, dirs.sD) == pre_same
    table = Table(COLUMNS)
    ops = [o for _, o in calls_on(dirs.xS, "a", dirs.xD, "b")]
    got = run_ops(ops, preload=True, landlock=[(dirs.xS, base & ~deny_s), (dirs.xD, base & ~deny_d)]).results
    for (label, _), g in zip(calls_on(dirs.xS, "a", dirs.xD, "b"), got):
        table.compared += 1
        if not res_eq(g, want):
            table.add(label, f"landlock, no {denied}", res_str(want), res_str(g),
                      "differs from the same-fs kernel")
    post = snap(dirs.xS, dirs.xD)
    if post != pre_cross:
        table.add("(all calls)", f"landlock, no {denied}", "no change", "changed", "directories changed",
                  detail=f"before: {listing_str(pre_cross)}\n      after:  {listing_str(post)}")
    table.check(f"Landlock without {denied}")


def _landlock_sources(S: Path, D: Path) -> None:
    for i in range(5):
        (S / f"f{i}").write_text(f"file {i}\n")
    os.symlink("some/target", S / "l")
    (S / "t").mkdir()
    (S / "t" / "sub").mkdir()
    (S / "t" / "sub" / "g").write_text("in the tree\n")
    os.symlink("../x", S / "t" / "l")
    os.mkfifo(S / "p", 0o644)
    (S / "x").write_text("exchange me\n")
    (D / "old4").write_text("old destination\n")
    (D / "y").write_text("exchange partner\n")


def _landlock_moves(S: Path, D: Path) -> list[tuple[str, dict]]:
    return [
        ("os.rename f0", op("os.rename", _j(S, "f0"), _j(D, "f0"))),
        ("os.rename(dir_fd) f1", op("os.rename", "f1", "f1", sdir=S, ddir=D)),
        ("renameat2(0) f2", op("libc.renameat2", "f2", "f2", sdir=S, ddir=D)),
        ("renameat2(NOREPLACE) f3", op("libc.renameat2", "f3", "f3", sdir=S, ddir=D, flags=RENAME_NOREPLACE)),
        ("os.replace f4 over old4", op("os.replace", _j(S, "f4"), _j(D, "old4"))),
        ("renameat(dirfds) symlink", op("libc.renameat", "l", "l", sdir=S, ddir=D)),
        ("renameat2(0) tree", op("libc.renameat2", "t", "t", sdir=S, ddir=D)),
        ("os.rename fifo", op("os.rename", _j(S, "p"), _j(D, "p"))),
    ]


@pytest.mark.parametrize("where", ["sibling dirs of one tmpfs", "tmpfs to ext4"])
def test_landlock_exdev_without_refer_is_emulated_and_exchange_keeps_exdev(landlock, tmpfs, dirs, where):
    """Every right but REFER on S and D: the kernel answers EXDEV (Landlock,
    not mounts); under xrename the moves succeed and leave what an
    unsandboxed same-fs rename leaves; RENAME_EXCHANGE keeps EXDEV."""
    rights = all_rights(landlock) & ~LL_REFER
    if where.startswith("sibling"):
        S, D = _sibling_dirs(tmpfs)
    else:
        S, D = dirs.xS, dirs.xD
    _landlock_sources(S, D)
    _landlock_sources(dirs.sS, dirs.sD)
    # Reference: the same moves, unsandboxed, on one fs.
    ref = run_ops([o for _, o in _landlock_moves(dirs.sS, dirs.sD)], preload=False).results
    assert all(r["ok"] for r in ref), ref
    probe = op("libc.renameat2", _j(S, "f0"), _j(D, "probe"))
    xchg = op("libc.renameat2", "x", "y", sdir=S, ddir=D, flags=RENAME_EXCHANGE)
    kernel = run_ops([probe, xchg], preload=False, landlock=[(S, rights), (D, rights)]).results
    assert res_eq(kernel[0], errno_res("EXDEV")), f"kernel under Landlock without REFER: {res_str(kernel[0])}"
    assert res_eq(kernel[1], errno_res("EXDEV")), f"kernel EXCHANGE under Landlock: {res_str(kernel[1])}"
    moves = _landlock_moves(S, D)
    got = run_ops([o for _, o in moves] + [xchg], preload=True, landlock=[(S, rights), (D, rights)]).results
    table = Table(COLUMNS)
    for (label, _), g in zip(moves, got):
        table.compared += 1
        if not g["ok"]:
            table.add(label, "landlock, no REFER", "0", res_str(g), "EXDEV from Landlock not emulated")
    table.compared += 1
    if not res_eq(got[-1], errno_res("EXDEV")):
        table.add("renameat2(EXCHANGE) x <-> y", "landlock, no REFER", "-1 EXDEV", res_str(got[-1]),
                  "EXCHANGE must keep the kernel's EXDEV")
    a, b = snap(dirs.sS, dirs.sD), snap(S, D)
    if a != b:
        table.add("(result)", "landlock, no REFER", "unsandboxed same-fs result", "differs", "results differ",
                  detail=f"same-fs: {listing_str(a)}\n      sandboxed: {listing_str(b)}")
    table.check(f"Landlock without REFER, {where}")


def test_landlock_without_refer_leaves_exdev_for_a_node_into_a_directory_others_may_write(landlock, dirs):
    """A FIFO and a symlink into a directory others may write (0777) are
    made in a private directory in it (test_node_race.py), and Landlock
    without REFER refuses the rename out of it: the kernel's EXDEV, and
    nothing changed on either side."""
    rights = all_rights(landlock) & ~LL_REFER
    S, D = dirs.xS, dirs.xD
    os.mkfifo(S / "p")
    os.symlink("some/target", S / "l")
    os.chmod(D, 0o777)
    pre = snap(S, D)
    moves = [op("os.rename", _j(S, n), _j(D, n)) for n in ("p", "l")]
    got = run_ops(moves, preload=True, landlock=[(S, rights), (D, rights)]).results
    for g in got:
        assert res_eq(g, errno_res("EXDEV")), f"a node into a shared directory under Landlock: {res_str(g)}"
    assert snap(S, D) == pre, f"refused moves changed {listing_str(pre)} into {listing_str(snap(S, D))}"


def test_landlock_tree_move_needing_a_denied_right_is_refused_and_leaves_nothing(landlock, tmpfs):
    """Every right but REFER, and no MAKE_REG on D: a tree holding a file
    cannot be created there; EACCES and nothing left behind."""
    S, D = _sibling_dirs(tmpfs)
    (S / "t").mkdir()
    (S / "t" / "g").write_text("needs MAKE_REG\n")
    base = all_rights(landlock) & ~LL_REFER
    rules = [(S, base), (D, base & ~LL_MAKE_REG)]
    pre = snap(S, D)
    got = run_ops([op("os.rename", _j(S, "t"), _j(D, "t")),
                   op("libc.renameat2", "t", "t", sdir=S, ddir=D, flags=RENAME_NOREPLACE)],
                  preload=True, landlock=rules).results
    for g in got:
        assert res_eq(g, errno_res("EACCES")), f"tree into a dir without MAKE_REG: {res_str(g)}, want -1 EACCES"
    assert snap(S, D) == pre, f"refused move changed {listing_str(pre)} into {listing_str(snap(S, D))}"
