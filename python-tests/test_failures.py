"""Failed or declined moves leave everything exactly as it was."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from xrename_harness import (
    MiB, Pair, assert_cross_device, assert_errno, assert_metadata_equal, assert_ok, entries,
    move_with, random_bytes, snapshot,
)

# Fields of a file that a failed move must not touch.  atime is excluded for
# the source: the shim legitimately reads it.
UNTOUCHED = ["type", "mode", "uid", "gid", "size", "nlink", "mtime_ns", "xattrs"]


@pytest.mark.parametrize("existing_destination", [False, True], ids=["new-destination", "existing-destination"])
def test_enospc_leaves_source_and_old_destination_untouched(ext4, small_tmpfs, existing_destination):
    pair = Pair("ext4-to-small-tmpfs", ext4 / "src", small_tmpfs / "dst", same_fs=False)
    pair.src_dir.mkdir()
    pair.dst_dir.mkdir()
    assert_cross_device(pair)

    data = random_bytes(2 * MiB, seed=30)  # does not fit in a 1 MiB tmpfs
    src = pair.src_dir / "big.bin"
    src.write_bytes(data)
    src_before = snapshot(src)
    dst = pair.dst_dir / "target.bin"
    old = b"old destination\n" * 64
    if existing_destination:
        dst.write_bytes(old)
        dst_before = snapshot(dst)
        dst_ino = os.stat(dst).st_ino

    run = move_with("os.rename", src, dst)

    assert_errno(run, "ENOSPC")
    assert_metadata_equal(src_before, snapshot(src), UNTOUCHED)
    assert src.read_bytes() == data, "source content changed by a failed move"
    if existing_destination:
        assert os.stat(dst).st_ino == dst_ino, "old destination was replaced"
        assert_metadata_equal(dst_before, snapshot(dst), UNTOUCHED)
        assert dst.read_bytes() == old, "old destination content changed"
        assert entries(pair.dst_dir) == {"target.bin"}, "leftover entries in destination dir"
    else:
        assert not dst.exists()
        assert entries(pair.dst_dir) == set(), "leftover entries in destination dir"
    assert entries(pair.src_dir) == {"big.bin"}


@pytest.mark.parametrize("existing_destination", [True, False], ids=["existing-destination", "new-destination"])
def test_read_only_source_mount_fails_with_erofs_and_changes_nothing(
        mounts, ext4, tmpfs, tmp_path, existing_destination):
    origin = ext4 / "ro-origin"
    origin.mkdir()
    data = random_bytes(50_000, seed=40)
    (origin / "file.bin").write_bytes(data)
    ro_view = tmp_path / "ro-view"
    mounts.mount(["--bind", str(origin)], ro_view, "bind mount for read-only view")
    mounts.remount(["-o", "remount,bind,ro"], ro_view, "remount bind mount read-only")
    src = ro_view / "file.bin"
    with pytest.raises(OSError) as exc:
        (ro_view / "write-probe").touch()
    assert exc.value.errno == errno.EROFS, "precondition: read-only view is not read-only"

    dst_dir = tmpfs / "dst"
    dst_dir.mkdir()
    dst = dst_dir / "target.bin"
    old = b"precious old destination\n" * 10
    if existing_destination:
        dst.write_bytes(old)
        dst_before = snapshot(dst)
        dst_ino = os.stat(dst).st_ino
    # Without the shim the kernel reports EXDEV here (mounts differ), so this
    # is a case the shim has to handle.
    assert os.stat(src).st_dev != os.stat(dst_dir).st_dev
    with pytest.raises(OSError) as exc:
        os.rename(src, dst_dir / "kernel-probe")
    assert exc.value.errno == errno.EXDEV
    src_before = snapshot(src)

    run = move_with("os.rename", src, dst)

    assert_errno(run, "EROFS")
    assert_metadata_equal(src_before, snapshot(src), UNTOUCHED)
    assert src.read_bytes() == data
    assert entries(origin) == {"file.bin"}
    if existing_destination:
        assert os.stat(dst).st_ino == dst_ino, "old destination was replaced"
        assert_metadata_equal(dst_before, snapshot(dst), UNTOUCHED)
        assert dst.read_bytes() == old
        assert entries(dst_dir) == {"target.bin"}, "leftover entries in destination dir"
    else:
        assert entries(dst_dir) == set(), "leftover entries in destination dir"


def test_xrename_disable_keeps_exdev_and_moves_nothing(pair):
    data = random_bytes(10_000, seed=50)
    src = pair.src_dir / "stay.bin"
    src.write_bytes(data)
    dst = pair.dst_dir / "never.bin"

    run = move_with("os.rename", src, dst, env={"XRENAME_DISABLE": "1"})

    assert_errno(run, "EXDEV")
    assert src.read_bytes() == data
    assert entries(pair.src_dir) == {"stay.bin"}
    assert entries(pair.dst_dir) == set()


def test_directory_symlink_and_fifo_sources_are_moved_instead_of_failing_with_exdev(pair):
    """Directories, symlinks and fifos used to be refused with EXDEV; now the
    shim moves them (details in test_tree_moves.py and test_tree_parity.py)."""
    d = pair.src_dir / "a-dir"
    d.mkdir()
    (d / "inner.txt").write_bytes(b"inside")
    link = pair.src_dir / "a-symlink"
    os.symlink("a-dir/inner.txt", link)
    fifo = pair.src_dir / "a-fifo"
    os.mkfifo(fifo)

    for name in ["a-dir", "a-symlink", "a-fifo"]:
        assert_ok(move_with("os.rename", pair.src_dir / name, pair.dst_dir / name))

    assert entries(pair.src_dir) == set(), "a source is still there"
    assert entries(pair.dst_dir) == {"a-dir", "a-symlink", "a-fifo"}
    moved = pair.dst_dir
    assert stat.S_ISDIR(os.lstat(moved / "a-dir").st_mode)
    assert (moved / "a-dir" / "inner.txt").read_bytes() == b"inside"
    assert stat.S_ISLNK(os.lstat(moved / "a-symlink").st_mode)
    assert os.readlink(moved / "a-symlink") == "a-dir/inner.txt"
    assert (moved / "a-symlink").read_bytes() == b"inside", "relative link no longer resolves"
    assert stat.S_ISFIFO(os.lstat(moved / "a-fifo").st_mode)
