"""Every Python rename API moves a regular file across devices under the shim."""

from __future__ import annotations

import os
import stat

import pytest

from xrename_harness import (
    METHOD_BODIES, METHODS, assert_ok, entries, move_with, random_bytes, run_child,
)


@pytest.mark.parametrize("method", METHODS)
def test_cross_device_rename_moves_regular_file_intact(pair, method):
    data = random_bytes(200_003, seed=1)
    src = pair.src_dir / "file.bin"
    dst = pair.dst_dir / "moved.bin"
    src.write_bytes(data)

    run = move_with(method, src, dst)

    assert_ok(run)
    assert not src.exists(), "source still exists after a successful move"
    assert dst.read_bytes() == data, "destination bytes differ from the source"
    assert entries(pair.src_dir) == set()
    assert entries(pair.dst_dir) == {"moved.bin"}


@pytest.mark.parametrize("method", METHODS)
def test_cross_device_rename_replaces_existing_destination(pair, method):
    data = random_bytes(70_001, seed=2)
    src = pair.src_dir / "new.bin"
    dst = pair.dst_dir / "existing.bin"
    src.write_bytes(data)
    os.chmod(src, 0o644)
    dst.write_bytes(b"old destination content that must be replaced\n" * 100)
    os.chmod(dst, 0o600)

    run = move_with(method, src, dst)

    assert_ok(run)
    assert not src.exists()
    st = os.stat(dst)
    assert stat.S_IMODE(st.st_mode) == 0o644, "destination kept the old file's mode, not the source's"
    assert dst.read_bytes() == data
    assert entries(pair.src_dir) == set()
    assert entries(pair.dst_dir) == {"existing.bin"}


def test_shutil_move_into_existing_directory_puts_file_inside_it(pair):
    data = random_bytes(12_345, seed=3)
    src = pair.src_dir / "report.txt"
    src.write_bytes(data)
    target_dir = pair.dst_dir / "inbox"
    target_dir.mkdir()

    # The shutil.move body disables shutil's copy fallback, so success proves
    # the underlying rename() was handled by the shim.
    run = run_child(METHOD_BODIES["shutil.move"], {"src": str(src), "dst": str(target_dir)})

    assert_ok(run)
    assert not src.exists()
    assert (target_dir / "report.txt").read_bytes() == data
    assert entries(target_dir) == {"report.txt"}
    assert entries(pair.dst_dir) == {"inbox"}
    assert entries(pair.src_dir) == set()
