"""Fixtures: every test gets its own private mounts, removed at teardown.

Run through python-tests/run.sh, which puts pytest in a private mount
namespace (root: `unshare -m --propagation private`, else `unshare -Urm`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from xrename_harness import (
    IN_CI, LIBRARY, PRIVILEGED, Mounts, Pair, assert_cross_device,
    loop_devices_usable, need,
)

EXT4_IMAGE_SIZE = "400M"  # sparse; must hold a 100 MiB file twice (bind pair)


def pytest_sessionstart(session):
    # The pytest process must never run with the shim: the cross-device probes
    # in the fixtures rely on the kernel's own EXDEV.
    with open("/proc/self/maps") as f:
        if "libxrename" in f.read():
            pytest.exit("pytest itself has libxrename.so preloaded; unset LD_PRELOAD", returncode=3)
    if not LIBRARY.is_file():
        pytest.exit(
            f"shim library not found at {LIBRARY}; build it first: "
            f"(cd {LIBRARY.parent.parent.parent} && cargo build --release)",
            returncode=4,
        )


@pytest.fixture
def mounts(tmp_path):
    # Depends on tmp_path so that it is torn down first: pytest removes a
    # passed test's tmp_path in that fixture's teardown, and must never
    # descend into a mount that is still there (a bind of a real directory).
    m = Mounts()
    yield m
    m.cleanup()


@pytest.fixture
def tmpfs(mounts, tmp_path) -> Path:
    """A private tmpfs (big enough for the 100 MiB test)."""
    mp = tmp_path / "tmpfs"
    mounts.mount(["-t", "tmpfs", "-o", "size=512m,mode=0755", "xrename-tmpfs"], mp, "tmpfs")
    return mp


@pytest.fixture
def small_tmpfs(mounts, tmp_path) -> Path:
    """A 1 MiB tmpfs to provoke ENOSPC."""
    mp = tmp_path / "small-tmpfs"
    mounts.mount(["-t", "tmpfs", "-o", "size=1m,mode=0755", "xrename-small"], mp, "tmpfs size=1m")
    return mp


@pytest.fixture
def ext4(mounts, tmp_path, tmpfs) -> Path:
    """An ext4 filesystem: a loop-mounted image when root, else a directory on
    the disk filesystem holding the temp root (a different device from the
    tmpfs).  Under CI=true the fallback is not allowed."""
    why = "loop-mounted ext4 needs real root, mkfs.ext4 and /dev/loop-control"
    if loop_devices_usable():
        image = tmp_path / "ext4.img"
        subprocess.run(["truncate", "-s", EXT4_IMAGE_SIZE, str(image)], check=True)
        mk = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)],
            capture_output=True, text=True)
        assert mk.returncode == 0, f"mkfs.ext4 failed: {mk.stderr}"
        mounts.after_umount.append(image)
        ok, err = mounts.try_mount(["-t", "ext4", "-o", "loop", str(image)], tmp_path / "ext4")
        if ok:
            return tmp_path / "ext4"
        why = f"loop mount of the ext4 image failed: {err}"
    # Fallback is only for unprivileged local runs; CI must use a real ext4.
    need(not IN_CI, why)
    d = tmp_path / "disk"
    d.mkdir()
    assert os.stat(d).st_dev != os.stat(tmpfs).st_dev, "fallback disk dir is on the tmpfs device"
    return d


@pytest.fixture
def bind_pair(mounts, ext4, tmp_path) -> tuple[Path, Path]:
    """Directory D (on the ext4 fs) bind-mounted at B: D/x -> B/y is EXDEV."""
    d = ext4 / "bind-origin"
    d.mkdir()
    b = tmp_path / "bind-view"
    mounts.mount(["--bind", str(d)], b, "bind mount")
    return d, b


PAIRS = ["tmpfs-to-ext4", "ext4-to-tmpfs", "bind-mount"]


def make_pair(request, name: str) -> Pair:
    if name == "tmpfs-to-ext4":
        src_root, dst_root, same = request.getfixturevalue("tmpfs"), request.getfixturevalue("ext4"), False
        src_dir, dst_dir = src_root / "src", dst_root / "dst"
        src_dir.mkdir(); dst_dir.mkdir()
    elif name == "ext4-to-tmpfs":
        src_root, dst_root, same = request.getfixturevalue("ext4"), request.getfixturevalue("tmpfs"), False
        src_dir, dst_dir = src_root / "src", dst_root / "dst"
        src_dir.mkdir(); dst_dir.mkdir()
    elif name == "bind-mount":
        d, b = request.getfixturevalue("bind_pair")
        (d / "src").mkdir(); (d / "dst").mkdir()
        src_dir, dst_dir, same = d / "src", b / "dst", True
    else:
        raise ValueError(name)
    pair = Pair(name, src_dir, dst_dir, same)
    assert_cross_device(pair)
    return pair


@pytest.fixture(params=PAIRS)
def pair(request) -> Pair:
    """Every cross-device pair in turn, each verified to give EXDEV unshimmed."""
    return make_pair(request, request.param)


@pytest.fixture
def fs_pair(request) -> Pair:
    """The single tmpfs -> ext4 pair (for tests that need just one)."""
    return make_pair(request, "tmpfs-to-ext4")


@pytest.fixture
def root_only():
    need(PRIVILEGED, "needs real root (chown to arbitrary ids / foreign-uid ACL entries)")


# Filesystems made from a loop image, for the differential tests: (mkfs
# command, mount type, what it stands for). Under CI=true a filesystem that
# cannot be made fails the test; nothing is skipped there.
LOOP_FILESYSTEMS = {
    "ext2": (["mkfs.ext2", "-q", "-F"], "ext2"),
    "ext4-128": (["mkfs.ext4", "-q", "-F", "-I", "128"], "ext4"),  # 1-second timestamps
    "xfs": (["mkfs.xfs", "-q", "-f"], "xfs"),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], "btrfs"),
}


def loop_fs(mounts, tmp_path: Path, kind: str) -> Path:
    """A fresh filesystem of `kind` (see LOOP_FILESYSTEMS), loop-mounted."""
    need(loop_devices_usable(), f"a loop-mounted {kind} needs real root and /dev/loop-control")
    mkfs, fstype = LOOP_FILESYSTEMS[kind]
    need(shutil.which(mkfs[0]) is not None, f"{mkfs[0]} missing")
    image = tmp_path / f"{kind}.img"
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    mk = subprocess.run([*mkfs, str(image)], capture_output=True, text=True)
    need(mk.returncode == 0, f"{mkfs[0]} failed: {mk.stderr.strip()}")
    mounts.after_umount.append(image)
    mp = tmp_path / kind
    mounts.mount(["-t", fstype, "-o", "loop", str(image)], mp, f"{kind} (loop)")
    return mp


def bindfs_over(mounts, tmpfs: Path, tmp_path: Path) -> Path:
    """A FUSE bindfs mount of a new directory of `tmpfs` (no O_TMPFILE, no
    renameat2 flags), unmounted at teardown."""
    need(shutil.which("bindfs") is not None, "bindfs not installed (apt-get install bindfs)")
    need(os.path.exists("/dev/fuse"), "/dev/fuse missing")
    backing = tmpfs / "backing"
    backing.mkdir()
    mp = tmp_path / "bindfs"
    mp.mkdir()
    proc = subprocess.run(["bindfs", str(backing), str(mp)], capture_output=True, text=True)
    need(proc.returncode == 0, f"cannot mount bindfs: {proc.stderr.strip()}")
    mounts.points.append(mp)
    return mp


def fuse2fs_fs(mounts, tmp_path: Path) -> Path:
    """An ext4 image served by fuse2fs (FUSE: no O_TMPFILE, its own xattr
    and ACL handling), unmounted at teardown."""
    need(shutil.which("fuse2fs") is not None, "fuse2fs not installed (apt-get install fuse2fs)")
    need(os.path.exists("/dev/fuse"), "/dev/fuse missing")
    image = tmp_path / "fuse2fs.img"
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    mk = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    need(mk.returncode == 0, f"mkfs.ext4 failed: {mk.stderr.strip()}")
    mounts.after_umount.append(image)
    mp = tmp_path / "fuse2fs"
    mp.mkdir()
    proc = subprocess.run(["fuse2fs", "-o", "fakeroot", str(image), str(mp)], capture_output=True, text=True)
    need(proc.returncode == 0, f"cannot mount fuse2fs: {(proc.stderr or proc.stdout).strip()}")
    mounts.points.append(mp)
    return mp


def chroot_without_proc(mounts, tmp_path: Path) -> Path:
    """A root directory to chroot into that has the system's /usr (read-only
    bind), the library's directory at its own path, two fresh tmpfs at /a
    and /b, and no /proc."""
    need(PRIVILEGED, "chroot needs real root")
    need(shutil.which("chroot") is not None, "chroot missing")
    root = tmp_path / "chroot"
    root.mkdir()
    mounts.mount(["--bind", "/usr"], root / "usr", "bind of /usr")
    mounts.remount(["-o", "remount,bind,ro"], root / "usr", "make the /usr bind read-only")
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), root / name)
    # A copy of the library at its own path (a copy, not a bind: nothing
    # outside tmp_path is ever writable from the root).
    inside = root / str(LIBRARY).lstrip("/")
    inside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(LIBRARY, inside)
    for d in ("a", "b"):
        mounts.mount(["-t", "tmpfs", "-o", "size=256m,mode=0755", f"xrename-chroot-{d}"], root / d, "tmpfs")
    assert not (root / "proc").exists()
    return root
