"""`xrename explain` against the kernel's own answer, on real mounts of
every kind that gives EXDEV: for each case the verdict is read, then the
same rename is made (by this process, without the shim) and its errno
compared. EXDEV in the verdict if and only if the kernel gives EXDEV."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cli_harness import XRENAME, describe, run
from conftest import loop_fs
from xrename_harness import PRIVILEGED, loop_devices_usable, need


def verdict(src: Path, dst: Path) -> str:
    proc = run([XRENAME, "explain", src, dst])
    assert proc.returncode == 0, describe(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("verdict:"))
    return line


def kernel(src: Path, dst: Path) -> int:
    """The kernel's answer: 0, or the errno (the rename is undone after)."""
    try:
        os.rename(src, dst)
    except OSError as e:
        return e.errno
    os.rename(dst, src)
    return 0


def check(src: Path, dst: Path, want_exdev: bool, why: str) -> None:
    v = verdict(src, dst)
    k = kernel(src, dst)
    assert (k == errno.EXDEV) == want_exdev, f"test setup: the kernel gave {errno.errorcode.get(k, k)} for {why}"
    says_exdev = "verdict:     EXDEV" in v
    assert says_exdev == want_exdev, f"{why}: explain says {v!r}, the kernel {errno.errorcode.get(k, 'ok')}"


def test_btrfs_subvolumes(mounts, tmp_path):
    need(shutil.which("btrfs") is not None, "btrfs-progs missing")
    m = loop_fs(mounts, tmp_path, "btrfs")
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(m / "sv")], check=True)
    (m / "f").write_text("f")
    (m / "d").mkdir()
    (m / "sv" / "g").write_text("g")
    check(m / "f", m / "sv" / "f", True, "a file into another subvolume")
    check(m / "sv" / "g", m / "g", True, "a file out of a subvolume")
    check(m / "f", m / "d" / "f", False, "a file within one subvolume")
    check(m / "sv", m / "d" / "sv", False, "a subvolume itself")
    assert "subvolume" in verdict(m / "f", m / "sv" / "f")


def project_dir(path: Path, project: int, fs: str) -> None:
    """`path` gets project `project` and the project-inherit flag."""
    if fs == "xfs":
        cmd = ["xfs_io", "-c", f"chproj {project}", "-c", "chattr +P", str(path)]
    else:
        cmd = ["chattr", "-p", str(project), "+P", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"


# ext4's `project` feature cannot be mounted on this machine's kernel (built
# without CONFIG_QFMT_V2), so only XFS is tested; explain reads the same
# FS_IOC_FSGETXATTR for both.
@pytest.mark.parametrize("fs", ["xfs"])
def test_project_quota_directories(mounts, tmp_path, fs):
    need(loop_devices_usable(), "needs loop devices")
    image = tmp_path / f"{fs}.img"
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    mkfs = ["mkfs.xfs", "-q", "-f"] if fs == "xfs" else ["mkfs.ext4", "-q", "-F", "-O", "project,quota"]
    need(shutil.which(mkfs[0]) is not None, f"{mkfs[0]} missing")
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    mounts.after_umount.append(image)
    m = tmp_path / fs
    # Project ids and the inherit flag exist without quota accounting (some
    # kernels lack XFS quota support): the rename check does not need it.
    mounts.mount(["-t", fs, "-o", "loop", str(image)], m, f"{fs} with project ids")
    (m / "p").mkdir()
    project_dir(m / "p", 42, fs)
    (m / "f").write_text("f")
    (m / "p" / "sub").mkdir()
    (m / "p" / "in").write_text("in")
    check(m / "f", m / "p" / "f", True, "a file of project 0 into a project-42 directory")
    check(m / "p" / "in", m / "p" / "sub" / "in", False, "a file of project 42 within it")
    check(m / "p" / "in", m / "in", False, "out of it (the top directory has no project-inherit flag)")
    assert "project" in verdict(m / "f", m / "p" / "f")


FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617  # _IOWR('f', 23, struct fscrypt_add_key_arg)
FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613  # _IOR('f', 19, struct fscrypt_policy_v1)


def encrypt_dir(mountpoint: Path, directory: Path) -> None:
    """A v2 fscrypt policy (AES-256-XTS/CTS) with a fresh key on `directory`."""
    raw = os.urandom(64)
    # fscrypt_key_specifier (type 2 = identifier, reserved, 32-byte union),
    # raw_size, key_id, 8 reserved words, then the raw key.
    arg = bytearray(struct.pack("=II32sII32x", 2, 0, b"", len(raw), 0) + raw)
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    finally:
        os.close(fd)
    identifier = bytes(arg[8:24])
    policy = struct.pack("=BBBBB3s16s", 2, 1, 4, 0, 0, b"", identifier)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    finally:
        os.close(fd)


def test_fscrypt_directories(mounts, tmp_path):
    need(loop_devices_usable(), "needs loop devices")
    image = tmp_path / "enc.img"
    subprocess.run(["truncate", "-s", "400M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "encrypt", str(image)], check=True, capture_output=True)
    mounts.after_umount.append(image)
    m = tmp_path / "enc"
    mounts.mount(["-t", "ext4", "-o", "loop", str(image)], m, "ext4 with encryption")
    (m / "secret").mkdir()
    try:
        encrypt_dir(m, m / "secret")
    except OSError as e:
        need(False, f"fscrypt unavailable here: {e}")
    (m / "plain").write_text("plain")
    (m / "secret" / "sub").mkdir()
    (m / "secret" / "inside").write_text("inside")
    check(m / "plain", m / "secret" / "plain", True, "an unencrypted file into an encrypted directory")
    check(m / "secret" / "inside", m / "secret" / "sub" / "inside", False, "within one policy")
    assert "encrypted" in verdict(m / "plain", m / "secret" / "plain")


def test_overlay_lower_opaque_and_escaped_options(mounts, tmp_path):
    """A lower layer whose path has a space and a comma (shown escaped in
    mountinfo): its directory gives EXDEV; a directory made in the merged
    view, and one the upper layer made opaque, rename."""
    need(PRIVILEGED, "overlay mounts need root here")
    lower = tmp_path / "low er,x"
    upper, work, merged = tmp_path / "up", tmp_path / "wk", tmp_path / "merged"
    for d in (lower / "d", lower / "o" / "inner", lower / "p" / "q", upper / "o", upper / "p", work, merged):
        d.mkdir(parents=True, exist_ok=True)
    os.setxattr(upper / "o", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "p", "trusted.overlay.opaque", b"y")
    (upper / "p" / "q").mkdir()  # below an opaque directory: upper only
    escaped = str(lower).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
    mounts.mount(["-t", "overlay", "-o", f"lowerdir={escaped},upperdir={upper},workdir={work}", "overlay"],
                 merged, "overlay")
    (merged / "new").mkdir()
    check(merged / "d", merged / "d2", True, "a directory of the lower layer")
    check(merged / "new", merged / "new2", False, "a directory made in the merged view")
    check(merged / "o", merged / "o2", False, "an opaque directory of the upper layer")
    check(merged / "p" / "q", merged / "q", False, "a directory below an opaque one")
    assert "low er,x" in verdict(merged / "d", merged / "d2")


def test_bind_mount_and_one_filesystem(mounts, tmp_path):
    need(PRIVILEGED, "bind mounts need root here")
    base = tmp_path / "base"
    (base / "a").mkdir(parents=True)
    (base / "b").mkdir()
    (base / "a" / "f").write_text("f")
    mounts.mount(["--bind", str(base / "b")], tmp_path / "bind", "a bind mount")
    check(base / "a" / "f", tmp_path / "bind" / "f", True, "into a bind mount of the same filesystem")
    check(base / "a" / "f", base / "b" / "f", False, "within one mount")


def test_a_parent_that_is_not_a_directory_is_not_opened_and_is_enotdir(tmp_path):
    """A FIFO where the destination's parent should be: explain must not
    open it (that would release a writer blocked in open) and says the
    rename fails with ENOTDIR, as the kernel does."""
    (tmp_path / "f").write_text("f")
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    proc = run([XRENAME, "explain", tmp_path / "f", fifo / "x"])
    assert proc.returncode == 125 and "Not a directory" in proc.stderr, describe(proc)
    # Nobody opened the FIFO: a non-blocking open for writing finds no reader.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("something holds the FIFO open for reading")
    except OSError as e:
        assert e.errno == errno.ENXIO


def test_a_mount_point_is_ebusy_not_exdev(mounts, tmp_path):
    need(PRIVILEGED, "mounts need root here")
    mp = tmp_path / "mp"
    mounts.mount(["-t", "tmpfs", "t"], mp, "tmpfs")
    assert kernel(mp, tmp_path / "elsewhere") == errno.EBUSY
    proc = run([XRENAME, "explain", mp, tmp_path / "elsewhere"])
    assert proc.returncode == 125 and "EBUSY" in proc.stderr, describe(proc)


def test_an_overlay_subtree_seen_through_a_bind_mount(mounts, tmp_path):
    """A bind mount of a directory inside an overlay: the lower layer is
    looked up with the mount's root in front of the path."""
    need(PRIVILEGED, "overlay mounts need root here")
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower / "sub" / "d", upper, work, merged):
        d.mkdir(parents=True)
    mounts.mount(["-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", "overlay"],
                 merged, "overlay")
    mounts.mount(["--bind", str(merged / "sub")], tmp_path / "bm", "a bind mount of the overlay's subtree")
    bm = tmp_path / "bm"
    check(bm / "d", bm / "d2", True, "a lower-layer directory through a bind mount of a subtree")
