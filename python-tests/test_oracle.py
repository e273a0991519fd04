"""Error parity with the kernel: a table-driven oracle.

A program under xrename must not be able to tell from return values and
errno that a cross-device rename was emulated, except that it succeeds.

Every case is built twice, in directories of its own:
  - same:  S and D on ONE tmpfs; the call is made by a child WITHOUT the shim,
           so the answer is the kernel's;
  - cross: S on one filesystem, D on another (tmpfs -> ext4, and back); the
           call is made by a child WITH the shim.
One child makes all the calls of a table (hundreds), one call per case.

The result (success, or the errno) must agree; a failed call must leave the
parents of S and D exactly as before (recursive listing: names, types,
modes, owners, contents, link targets: so no leftovers either); a successful
one must leave the same tree as the kernel's rename on one filesystem.
A ctypes call that succeeds must leave errno untouched.

Documented exception: RENAME_EXCHANGE across devices keeps the kernel's
answer (EXDEV whenever the parents resolve).  For EXCHANGE the expected
answer is therefore the unshimmed call on the cross-device pair, and
whenever the same-fs kernel succeeds that answer must be EXDEV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from oracle_harness import (
    ERRNO_SENTINEL, RENAME_EXCHANGE, RENAME_NOREPLACE, Table, errno_res, listing,
    listing_str, op, res_eq, res_str, run_ops,
)
from xrename_harness import Pair, assert_cross_device


# --------------------------------------------------------------------------
# sources, destinations and calls
# --------------------------------------------------------------------------

def _write(p: Path, text: str) -> None:
    p.write_text(text)


# Setups of S or D: each makes one object, `name` (the source "a", the
# destination "b"), in the directory it is given.

def _nothing(d: Path) -> None:
    pass


def _file(name: str, text: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        _write(d / name, text)
    return make


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        os.symlink(target, d / name)
    return make


def _symlink_dir(name: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / "realdir").mkdir()
        os.symlink("realdir", d / name)
    return make


def _empty_dir(name: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).mkdir()
    return make


src_file = _file("a", "source file\n")
src_symlink = _symlink("a", "dangling/source/target")
src_symlink_dir = _symlink_dir("a")
src_empty_dir = _empty_dir("a")
src_missing = _nothing


def src_dir(S: Path) -> None:
    (S / "a").mkdir()
    _write(S / "a" / "f", "inner file\n")
    (S / "a" / "sub").mkdir()
    _write(S / "a" / "sub" / "g", "deeper file\n")
    os.symlink("../f", S / "a" / "sub" / "l")


SOURCES: dict[str, Callable[[Path], None]] = {
    "file": src_file,
    "symlink": src_symlink,
    "symlink->dir": src_symlink_dir,
    "dir+content": src_dir,
    "empty-dir": src_empty_dir,
    "missing": src_missing,
}


d_none = _nothing
d_file = _file("b", "old destination\n")
d_symlink = _symlink("b", "dangling/dest/target")
d_symlink_dir = _symlink_dir("b")
d_empty_dir = _empty_dir("b")
d_nondir_parent = _file("f", "a plain file\n")


def d_full_dir(D: Path) -> None:
    (D / "b").mkdir()
    _write(D / "b" / "x", "occupant\n")


# (label, last component(s) of the destination, setup of D)
DESTINATIONS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("absent", "b", d_none),
    ("file", "b", d_file),
    ("symlink", "b", d_symlink),
    ("symlink->dir", "b", d_symlink_dir),
    ("empty-dir", "b", d_empty_dir),
    ("nonempty-dir", "b", d_full_dir),
    ("absent+slash", "b/", d_none),
    ("empty-dir+slash", "b/", d_empty_dir),
    ("file+slash", "b/", d_file),
    ("symlink->dir+slash", "b/", d_symlink_dir),
    ("under-file", "f/x", d_nondir_parent),
    ("missing-dir", "nodir/x", d_none),
]
DST = {label: (name, mk) for label, name, mk in DESTINATIONS}


def _join(d: Path, name: str) -> bytes:
    return os.fsencode(d) + b"/" + os.fsencode(name)


# Each call kind builds one op from (S, sname, D, dname).
CALLS: dict[str, Callable[[Path, str, Path, str], dict]] = {
    "os.rename": lambda S, s, D, d: op("os.rename", _join(S, s), _join(D, d)),
    "os.replace": lambda S, s, D, d: op("os.replace", _join(S, s), _join(D, d)),
    "os.rename(dir_fd)": lambda S, s, D, d: op("os.rename", s, d, sdir=S, ddir=D),
    "renameat2(0)": lambda S, s, D, d: op("libc.renameat2", s, d, sdir=S, ddir=D),
    "renameat2(NOREPLACE)": lambda S, s, D, d: op("libc.renameat2", s, d, sdir=S, ddir=D,
                                                  flags=RENAME_NOREPLACE),
    "renameat2(EXCHANGE)": lambda S, s, D, d: op("libc.renameat2", s, d, sdir=S, ddir=D,
                                                 flags=RENAME_EXCHANGE),
}
EXCHANGE_CALLS = {"renameat2(EXCHANGE)"}


@dataclass
class Case:
    call: str
    source: str
    sname: str
    destination: str
    dname: str


# --------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------

@dataclass
class Side:
    """Where case i lives on one side: base/i/s/S and base/i/d/D (the
    listings cover s/ and d/, so leftovers next to S or D count too)."""
    src_base: Path
    dst_base: Path

    def dirs(self, i: int) -> tuple[Path, Path]:
        return self.src_base / f"{i:04d}" / "s" / "S", self.dst_base / f"{i:04d}" / "d" / "D"

    def build(self, i: int, c: Case) -> tuple[Path, Path]:
        S, D = self.dirs(i)
        S.mkdir(parents=True)
        D.mkdir(parents=True)
        SOURCES[c.source](S)
        DST[c.destination][1](D)
        return S, D

    def snap(self, i: int) -> list[str]:
        S, D = self.dirs(i)
        return ["S:"] + listing(S.parent) + ["D:"] + listing(D.parent)


def make_sides(tmpfs: Path, ext4: Path, direction: str) -> tuple[Side, Side]:
    same = Side(tmpfs / "same", tmpfs / "same")
    if direction == "tmpfs-to-ext4":
        cross = Side(tmpfs / "cross-src", ext4 / "cross-dst")
    else:
        cross = Side(ext4 / "cross-src", tmpfs / "cross-dst")
    cross.src_base.mkdir()
    cross.dst_base.mkdir()
    assert_cross_device(Pair(direction, cross.src_base, cross.dst_base, same_fs=False))
    return same, cross


COLUMNS = ["call", "source", "sname", "destination", "dname", "expected", "got", "problem"]


def compare(cases: list[Case], same: Side, cross: Side, table: Table, trace: bool = False) -> None:
    """Build every case on both sides, make the calls (2 children for the
    whole list), compare; mismatches become rows of `table`."""
    pre_same, pre_cross = [], []
    ops_same, ops_cross, ops_raw_cross, raw_idx = [], [], [], []
    for i, c in enumerate(cases):
        sS, sD = same.build(i, c)
        xS, xD = cross.build(i, c)
        pre_same.append(same.snap(i))
        pre_cross.append(cross.snap(i))
        assert pre_same[-1] == pre_cross[-1], (
            f"setup differs for {c}: {listing_str(pre_same[-1])} vs {listing_str(pre_cross[-1])}")
        ops_same.append(CALLS[c.call](sS, c.sname, sD, c.dname))
        ops_cross.append(CALLS[c.call](xS, c.sname, xD, c.dname))
        if c.call in EXCHANGE_CALLS:
            ops_raw_cross.append(ops_cross[-1])
            raw_idx.append(i)

    # The kernel alone: every case on one fs, and EXCHANGE on the cross pair.
    kernel = run_ops(ops_same + ops_raw_cross, preload=False).results
    want, raw = kernel[:len(cases)], dict(zip(raw_idx, kernel[len(cases):]))
    for i in raw_idx:
        assert not raw[i]["ok"], f"unshimmed cross-device EXCHANGE succeeded for {cases[i]}"
        assert cross.snap(i) == pre_cross[i], f"unshimmed failing EXCHANGE changed {cases[i]}"
    # xrename across devices.
    got = run_ops(ops_cross, preload=not trace, trace=trace).results

    for i, c in enumerate(cases):
        table.compared += 1
        post_same, post_cross = same.snap(i), cross.snap(i)
        w, g = want[i], got[i]
        exchange = c.call in EXCHANGE_CALLS
        expect = raw[i] if exchange else w
        cells = [c.call, c.source, c.sname, c.destination, c.dname]
        if exchange and w["ok"] and not (not raw[i]["ok"] and raw[i]["errname"] == "EXDEV"):
            table.add(*cells, "EXDEV", res_str(raw[i]),
                      "test assumption: unshimmed cross EXCHANGE is not EXDEV")
        if "bad_rc" in g:
            table.add(*cells, res_str(expect), f"rc={g['bad_rc']}", "return value is not 0 or -1")
        elif not res_eq(g, expect):
            table.add(*cells, res_str(expect), res_str(g),
                      "differs from the unshimmed cross-device call" if exchange
                      else "differs from the same-fs kernel")
        elif exchange and w["ok"] and g["ok"]:
            table.add(*cells, "-1 EXDEV", "0", "EXCHANGE across devices must keep EXDEV")
        elif g["ok"] and g["errno_after"] not in (None, ERRNO_SENTINEL):
            table.add(*cells, res_str(expect), res_str(g),
                      f"errno changed on success: {ERRNO_SENTINEL} -> {g['errno_after']}")
        elif not g["ok"] and post_cross != pre_cross[i]:
            table.add(*cells, res_str(expect), res_str(g), "failed call changed the directories",
                      detail=f"before: {listing_str(pre_cross[i])}\n      after:  "
                             f"{listing_str(post_cross)}")
        elif g["ok"] and post_cross != post_same:
            table.add(*cells, res_str(expect), res_str(g), "result differs from the same-fs rename",
                      detail=f"same-fs: {listing_str(post_same)}\n      cross:   "
                             f"{listing_str(post_cross)}")


# --------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------

def full_table(call: str, snames_for: Callable[[str], list[str]]) -> list[Case]:
    return [Case(call, src, sname, dlabel, dname)
            for src in SOURCES
            for sname in snames_for(src)
            for dlabel, dname, _ in DESTINATIONS]


@pytest.mark.parametrize("way", ["preload", "trace"])
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("direction", ["tmpfs-to-ext4", "ext4-to-tmpfs"])
def test_every_source_and_destination_kind_gives_the_same_fs_kernel_result(
        tmpfs, ext4, direction, call, way):
    """source {file, symlink, symlink->dir, dir+content, empty dir, missing}
    x destination {absent, file, symlink, symlink->dir, empty dir, non-empty
    dir, trailing slashes, under a file, in a missing dir}; tmpfs -> ext4
    also with a trailing slash on the source (and 'nodir/a' when missing).
    Through both ways in: the preload, and the supervisor of --trace."""
    same, cross = make_sides(tmpfs, ext4, direction)
    if direction == "tmpfs-to-ext4":
        snames = lambda src: ["a", "a/", "nodir/a"] if src == "missing" else ["a", "a/"]
    else:
        snames = lambda src: ["a"]
    table = Table(COLUMNS)
    compare(full_table(call, snames), same, cross, table, trace=way == "trace")
    table.check(f"{call} {direction} ({way})")


@pytest.mark.parametrize("call", list(CALLS))
def test_dot_and_dotdot_last_components_give_the_same_fs_kernel_result(tmpfs, ext4, call):
    """'.', '..', 'a/.', 'a/..', './', '../' as the source, the destination,
    or both."""
    same, cross = make_sides(tmpfs, ext4, "tmpfs-to-ext4")
    dots = [".", "..", "a/.", "a/..", "./", "../"]
    cases = []
    for d in dots:
        for dlabel in ("absent", "empty-dir", "file+slash"):
            cases.append(Case(call, "dir+content", d, dlabel, DST[dlabel][0]))
        for src in SOURCES:
            cases.append(Case(call, src, "a", "empty-dir", d))
        cases.append(Case(call, "dir+content", d, "empty-dir", d))
    table = Table(COLUMNS)
    compare(cases, same, cross, table)
    table.check(f"{call} with dot components")


@pytest.mark.parametrize("call", list(CALLS))
def test_trailing_slashes_and_dot_segments_resolve_like_the_kernel(tmpfs, ext4, call):
    """'a/', './a', 'a//', './/a/', '../S/a', 'a/./' on the source and the
    same shapes on the destination, for a file, a directory and a symlink."""
    same, cross = make_sides(tmpfs, ext4, "tmpfs-to-ext4")
    snames = ["a/", "./a", "a//", ".//a/", "../S/a", "a/./"]
    dnames = ["b/", "./b", "b//", ".//b/", "../D/b", "b/./"]
    cases = []
    for src in ("file", "dir+content", "symlink", "symlink->dir"):
        for dlabel in ("absent", "file", "empty-dir"):
            for sn in snames:
                cases.append(Case(call, src, sn, dlabel, "b"))
            for dn in dnames:
                cases.append(Case(call, src, "a", dlabel, dn))
    table = Table(COLUMNS)
    compare(cases, same, cross, table)
    table.check(f"{call} with slashes and dot segments")


def test_source_below_a_non_directory_gives_the_same_fs_kernel_result(tmpfs, ext4):
    """'a/x' and 'a/.' with a a file, 'a/f/x' with a/f a file: ENOTDIR."""
    same, cross = make_sides(tmpfs, ext4, "tmpfs-to-ext4")
    cases = []
    for call in CALLS:
        cases += [Case(call, "file", "a/x", "absent", "b"),
                  Case(call, "file", "a/.", "absent", "b"),
                  Case(call, "dir+content", "a/f/x", "absent", "b"),
                  Case(call, "symlink", "a/x", "absent", "b")]
    table = Table(COLUMNS)
    compare(cases, same, cross, table)
    table.check("source below a non-directory")


def test_rename_exchange_across_devices_gives_exdev_and_changes_nothing(tmpfs, ext4):
    """Whenever EXCHANGE succeeds on one filesystem, across devices (through
    AT_FDCWD with absolute paths and through dirfds) it is -1 EXDEV and both
    directories are exactly as before."""
    same, cross = make_sides(tmpfs, ext4, "tmpfs-to-ext4")
    kinds = ["file", "symlink", "symlink->dir", "dir+content", "empty-dir"]
    dsts = ["file", "symlink", "symlink->dir", "empty-dir", "nonempty-dir"]
    forms = {
        "renameat2(AT_FDCWD, EXCHANGE)": lambda S, D: op(
            "libc.renameat2", _join(S, "a"), _join(D, "b"), flags=RENAME_EXCHANGE),
        "renameat2(dirfds, EXCHANGE)": lambda S, D: op(
            "libc.renameat2", "a", "b", sdir=S, ddir=D, flags=RENAME_EXCHANGE),
    }
    cases, ops_same, ops_cross, pre = [], [], [], []
    for form, mk in forms.items():
        for k in kinds:
            for d in dsts:
                i = len(cases)
                c = Case(form, k, "a", d, "b")
                cases.append(c)
                sS, sD = same.build(i, c)
                xS, xD = cross.build(i, c)
                pre.append(cross.snap(i))
                ops_same.append(mk(sS, sD))
                ops_cross.append(mk(xS, xD))
    want = run_ops(ops_same, preload=False).results
    got = run_ops(ops_cross, preload=True).results
    table = Table(COLUMNS)
    for i, c in enumerate(cases):
        table.compared += 1
        cells = [c.call, c.source, c.sname, c.destination, c.dname]
        if not want[i]["ok"]:
            table.add(*cells, "0 (same fs)", res_str(want[i]), "test assumption: same-fs EXCHANGE failed")
        elif not res_eq(got[i], errno_res("EXDEV")):
            table.add(*cells, "-1 EXDEV", res_str(got[i]), "EXCHANGE across devices must keep EXDEV")
        elif cross.snap(i) != pre[i]:
            table.add(*cells, "-1 EXDEV", res_str(got[i]), "failed EXCHANGE changed the directories",
                      detail=f"before: {listing_str(pre[i])}\n      after:  {listing_str(cross.snap(i))}")
    table.check("RENAME_EXCHANGE across devices")


def test_invalid_renameat2_flags_give_the_kernel_einval_and_change_nothing(tmpfs, ext4):
    same, cross = make_sides(tmpfs, ext4, "tmpfs-to-ext4")
    bad = [RENAME_NOREPLACE | RENAME_EXCHANGE, 1 << 20, 0x80000000, RENAME_EXCHANGE | (1 << 2),
           RENAME_NOREPLACE | (1 << 2) | RENAME_EXCHANGE]
    table = Table(COLUMNS)
    ops_same, ops_cross, pre = [], [], []
    for i, flags in enumerate(bad):
        c = Case(f"renameat2({flags:#x})", "file", "a", "absent", "b")
        sS, sD = same.build(i, c)
        xS, xD = cross.build(i, c)
        pre.append(cross.snap(i))
        ops_same.append(op("libc.renameat2", _join(sS, "a"), _join(sD, "b"), flags=flags))
        ops_cross.append(op("libc.renameat2", _join(xS, "a"), _join(xD, "b"), flags=flags))
    want = run_ops(ops_same, preload=False).results
    got = run_ops(ops_cross, preload=True).results
    for i, flags in enumerate(bad):
        table.compared += 1
        cells = [f"renameat2({flags:#x})", "file", "a", "absent", "b"]
        if not res_eq(want[i], errno_res("EINVAL")):
            table.add(*cells, "-1 EINVAL", res_str(want[i]), "test assumption: kernel answer")
        if not res_eq(got[i], want[i]):
            table.add(*cells, res_str(want[i]), res_str(got[i]), "differs from the same-fs kernel")
        elif cross.snap(i) != pre[i]:
            table.add(*cells, res_str(want[i]), res_str(got[i]), "failed call changed the directories")
    table.check("invalid renameat2 flags")
