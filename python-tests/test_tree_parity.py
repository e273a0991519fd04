"""Differential test: a directory tree moved across devices by the shim is
indistinguishable from the same tree moved by GNU `mv`.

The same seeded tree (every object type, hard links, a sparse file, xattrs,
ACLs, odd modes, foreign owners, odd names, ns times in the past) is built
twice on the source filesystem. Copy A is moved with `mv` (no preload), copy B
with os.rename() under the shim; the two results are compared field by field.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import make_pair
from tree_harness import (
    SPARSE_SIZE, assert_same_listing, build_full_tree, listing,
)
from xrename_harness import (
    CHILD_TIMEOUT_S, IN_CI, PRIVILEGED, assert_ok, child_env, entries, move_with, need,
)

SEED = 20240611


@pytest.fixture(params=["tmpfs-to-ext4", "ext4-to-tmpfs"])
def fs_dirs(request):
    return make_pair(request, request.param)


def check_sparse(lst: dict, rel: bytes, who: str) -> None:
    r = lst[rel]
    assert r["size"] == SPARSE_SIZE, f"{who}: sparse file apparent size {r['size']}"
    assert r["sparse"], (f"{who}: {rel!r} is no longer sparse: {r['_alloc']} bytes allocated "
                         f"for {r['size']} apparent")


def test_tree_moved_by_shim_equals_tree_moved_by_gnu_mv(fs_dirs):
    # CI runs as root and must cover the root-only parts (device node,
    # foreign owners, foreign-uid ACLs); locally they are left out.
    need(PRIVILEGED or not IN_CI, "full tree needs real root (mknod, lchown, setfacl)")
    pair = fs_dirs
    for d in ("mv", "shim"):
        (pair.src_dir / d).mkdir()
        (pair.dst_dir / d).mkdir()
    src_mv, src_shim = pair.src_dir / "mv" / "tree", pair.src_dir / "shim" / "tree"
    dst_mv, dst_shim = pair.dst_dir / "mv" / "tree", pair.dst_dir / "shim" / "tree"

    tree_mv = build_full_tree(src_mv, SEED)
    tree_shim = build_full_tree(src_shim, SEED)
    before_mv, before_shim = listing(src_mv), listing(src_shim)
    assert_same_listing(before_mv, before_shim, "build A", "build B",
                        "test bug: the two seeded builds differ")
    types = {r["type"] for r in before_shim.values()}
    want = {"dir", "file", "symlink", "fifo", "sock"} | ({"chr"} if PRIVILEGED else set())
    assert want <= types, f"test bug: tree lacks {want - types}"
    check_sparse(before_shim, tree_shim.sparse, "source (precondition)")
    assert sum(1 for r in before_shim.values() if r.get("hardlinks")) == 2

    proc = subprocess.run(["mv", os.fsencode(src_mv), os.fsencode(dst_mv)], capture_output=True,
                          text=True, env=child_env(preload=False), timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, f"GNU mv failed: {proc.stderr}"
    assert_ok(move_with("os.rename", src_shim, dst_shim))

    after_mv = listing(dst_mv)
    after_shim = listing(dst_shim)
    assert_same_listing(after_mv, after_shim, "GNU mv", "xrename",
                        f"{pair.name}: the shim's tree differs from GNU mv's")
    check_sparse(after_mv, tree_mv.sparse, "GNU mv")
    check_sparse(after_shim, tree_shim.sparse, "xrename")
    # Independently of mv: the shim's tree is the source tree.
    assert_same_listing(before_shim, after_shim, "source before", "xrename after",
                        f"{pair.name}: the shim's tree differs from its source")

    assert not os.path.lexists(src_mv) and not os.path.lexists(src_shim)
    assert entries(pair.src_dir / "shim") == set(), "leftovers next to the moved-away source"
    assert entries(pair.src_dir / "mv") == set()
    assert entries(pair.dst_dir / "shim") == {"tree"}, "leftovers next to the destination"
    assert entries(pair.dst_dir / "mv") == {"tree"}


def test_multi_operand_mv_of_hard_linked_files_under_the_shim_keeps_them_linked_as_mv_does(fs_dirs):
    """`mv x y z w p dir/` across devices, where x, y, z are one inode and p
    shares its inode with q, which stays: GNU mv alone keeps x, y, z one
    inode with 3 links at the destination, p a file with 1 link and q
    untouched. With the shim preloaded, mv's own renameat2 is emulated first
    (each call moves one name), and the result must be the same."""
    pair = fs_dirs
    results = {}
    for who, preload in (("mv", False), ("shim", True)):
        src, dst = pair.src_dir / who, pair.dst_dir / who
        src.mkdir()
        dst.mkdir()
        (src / "x").write_bytes(b"one inode, three names\n" * 100)
        os.link(src / "x", src / "y")
        os.link(src / "x", src / "z")
        (src / "w").write_bytes(b"alone\n")
        (src / "p").write_bytes(b"p and q\n")
        os.link(src / "p", src / "q")
        for n in ("x", "w", "p"):
            os.utime(src / n, ns=(1_500_000_000_123_456_789, 1_400_000_000_987_654_321))
        q_atime = os.lstat(src / "q").st_atime_ns
        names = [os.fsencode(src / n) for n in ("x", "y", "z", "w", "p")]
        proc = subprocess.run(["mv", *names, os.fsencode(dst)], capture_output=True, text=True,
                              env=child_env(preload=preload), timeout=CHILD_TIMEOUT_S)
        assert proc.returncode == 0, f"{who}: mv failed: {proc.stderr}"
        st = {n: os.lstat(dst / n) for n in ("x", "y", "z", "w", "p")}
        results[who] = {k: v for k, v in listing(dst).items() if k != b"."}  # dir times: when it ran
        assert st["x"].st_ino == st["y"].st_ino == st["z"].st_ino, f"{who}: x, y, z are no longer one inode"
        assert st["x"].st_nlink == 3, f"{who}: x has {st['x'].st_nlink} links, want 3"
        assert st["p"].st_nlink == 1 and st["w"].st_nlink == 1
        assert entries(src) == {"q"}, f"{who}: left at the source: {entries(src)}"
        assert os.lstat(src / "q").st_nlink == 1
        if preload:
            # Reading p kept q's atime (O_NOATIME), as a rename would; GNU
            # mv's read changes it.
            assert os.lstat(src / "q").st_atime_ns == q_atime, f"{who}: moving p changed q's atime"
        assert entries(dst) == {"x", "y", "z", "w", "p"}, f"{who}: leftovers: {entries(dst)}"
    assert_same_listing(results["mv"], results["shim"], "GNU mv", "mv under xrename",
                        f"{pair.name}: multi-operand mv of hard-linked files differs under the shim")
