"""File contents of every shape arrive intact: sparse, empty, large."""

from __future__ import annotations

import hashlib
import os

from xrename_harness import (
    MiB, assert_ok, entries, move_with, random_bytes, sha256_file,
)

SPARSE_SIZE = 8 * MiB
BLOCK = 4096
# Two 4 KiB data blocks are 8 KiB; allow for fs bookkeeping but nowhere near
# the 8 MiB a dense copy would allocate.
SPARSE_MAX_ALLOCATED = 64 * 1024


def test_sparse_file_stays_sparse_after_move(pair):
    head = random_bytes(BLOCK, seed=20)
    tail = random_bytes(BLOCK, seed=21)
    src = pair.src_dir / "sparse.img"
    fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, head, 0)
        os.pwrite(fd, tail, SPARSE_SIZE - BLOCK)
    finally:
        os.close(fd)
    st = os.stat(src)
    assert st.st_size == SPARSE_SIZE
    assert st.st_blocks * 512 <= SPARSE_MAX_ALLOCATED, \
        f"precondition: source not sparse ({st.st_blocks * 512} bytes allocated)"

    dst = pair.dst_dir / "sparse-moved.img"
    assert_ok(move_with("os.rename", src, dst))

    assert not src.exists()
    st = os.stat(dst)
    assert st.st_size == SPARSE_SIZE, "apparent size changed"
    assert st.st_blocks * 512 <= SPARSE_MAX_ALLOCATED, (
        f"destination is no longer sparse: {st.st_blocks * 512} bytes allocated "
        f"for {SPARSE_SIZE} apparent (source had 2 data blocks)")
    expected = head + bytes(SPARSE_SIZE - 2 * BLOCK) + tail
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_empty_file_moves_and_stays_empty(pair):
    src = pair.src_dir / "empty"
    src.touch()
    dst = pair.dst_dir / "empty-moved"

    assert_ok(move_with("os.rename", src, dst))

    assert not src.exists()
    assert dst.is_file()
    assert os.stat(dst).st_size == 0
    assert entries(pair.dst_dir) == {"empty-moved"}


def test_100mib_file_moves_with_identical_sha256(pair):
    data = random_bytes(100 * MiB, seed=100)
    want = hashlib.sha256(data).hexdigest()
    src = pair.src_dir / "big.bin"
    src.write_bytes(data)
    del data
    dst = pair.dst_dir / "big-moved.bin"

    assert_ok(move_with("os.rename", src, dst))

    assert not src.exists()
    assert os.stat(dst).st_size == 100 * MiB
    assert sha256_file(dst) == want
    assert entries(pair.src_dir) == set()
    assert entries(pair.dst_dir) == {"big-moved.bin"}
