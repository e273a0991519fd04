"""rename(2) of a file onto itself is a successful no-op, even when the two
names reach it through different mounts (where the kernel says EXDEV)."""

from __future__ import annotations

import errno
import os

import pytest

from xrename_harness import assert_ok, entries, move_with, random_bytes


@pytest.mark.parametrize("direction", ["origin-to-bind", "bind-to-origin"])
def test_rename_of_same_file_through_bind_mount_is_a_noop(bind_pair, direction):
    origin, view = bind_pair
    data = random_bytes(40_000, seed=60)
    (origin / "same.bin").write_bytes(data)
    ino = os.stat(origin / "same.bin").st_ino
    a, b = origin / "same.bin", view / "same.bin"
    if direction == "bind-to-origin":
        a, b = b, a
    assert os.path.samefile(a, b)
    with pytest.raises(OSError) as exc:  # the kernel alone refuses
        os.rename(a, b)
    assert exc.value.errno == errno.EXDEV

    assert_ok(move_with("os.rename", a, b))

    assert a.exists() and b.exists(), "the file disappeared"
    assert os.stat(a).st_ino == ino and os.stat(b).st_ino == ino
    assert os.stat(a).st_nlink == 1
    assert b.read_bytes() == data
    assert entries(origin) == {"same.bin"}


def test_rename_between_hard_links_of_one_file_through_bind_mount_is_a_noop(bind_pair):
    """POSIX: if old and new are links to the same file, rename does nothing."""
    origin, view = bind_pair
    data = random_bytes(20_000, seed=61)
    (origin / "one").write_bytes(data)
    os.link(origin / "one", origin / "two")
    ino = os.stat(origin / "one").st_ino

    assert_ok(move_with("os.rename", origin / "one", view / "two"))

    assert entries(origin) == {"one", "two"}
    assert os.stat(origin / "one").st_ino == ino
    assert os.stat(origin / "two").st_ino == ino
    assert os.stat(origin / "one").st_nlink == 2
    assert (origin / "two").read_bytes() == data
