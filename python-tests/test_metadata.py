"""Metadata survives a cross-device move, compared field by field.

Destination metadata is always read with lstat *before* the content is read,
so reading cannot disturb st_atime_ns.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from xrename_harness import (
    PAST_ATIME_NS, PAST_MTIME_NS, assert_metadata_equal, assert_ok, move_with,
    need, random_bytes, snapshot,
)

USER_XATTRS = {
    "user.alpha": b"first value",
    "user.binary": bytes(range(256)),
    "user.empty": b"",
    "user.xrename.test": b"x" * 1000,
}


def set_user_xattrs(path):
    for name, value in USER_XATTRS.items():
        try:
            os.setxattr(path, name, value)
        except OSError as e:
            need(e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP),
                 f"filesystem of {path} does not support user.* xattrs")
            raise


def set_acl(path):
    proc = subprocess.run(["setfacl", "-m", "u:1234:rw", str(path)], capture_output=True, text=True)
    need(proc.returncode == 0, f"setfacl failed on {path}: {proc.stderr.strip()}")
    assert os.getxattr(path, "system.posix_acl_access"), "setfacl left no system.posix_acl_access"


def make_source(pair, name="meta.bin"):
    src = pair.src_dir / name
    src.write_bytes(random_bytes(33_333, seed=10))
    return src


def do_move(pair, src, data, before, fields):
    dst = pair.dst_dir / "meta-moved.bin"
    assert snapshot(src) == before
    run = move_with("os.rename", src, dst)
    assert_ok(run)
    assert not src.exists()
    after = snapshot(dst)  # metadata first ...
    assert_metadata_equal(before, after, fields)
    assert dst.read_bytes() == data  # ... content last


def test_move_preserves_owner_uid_and_gid(pair, root_only):
    src = make_source(pair)
    data = src.read_bytes()
    os.chown(src, 1234, 5678)
    os.chmod(src, 0o640)
    before = snapshot(src)
    assert (before["uid"], before["gid"]) == (1234, 5678)
    do_move(pair, src, data, before, ["uid", "gid", "mode", "size", "type"])


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o600], ids=["4755-setuid", "2755-setgid", "600"])
def test_move_preserves_mode_bits_including_setuid_and_setgid(pair, mode):
    src = make_source(pair)
    data = src.read_bytes()
    os.chmod(src, mode)
    before = snapshot(src)
    assert before["mode"] == mode, f"precondition: chmod gave {oct(before['mode'])}"
    do_move(pair, src, data, before, ["mode", "size", "type"])


def test_move_preserves_atime_and_mtime_to_the_nanosecond(pair):
    src = make_source(pair)
    data = src.read_bytes()
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    before = snapshot(src)
    assert (before["atime_ns"], before["mtime_ns"]) == (PAST_ATIME_NS, PAST_MTIME_NS)
    do_move(pair, src, data, before, ["atime_ns", "mtime_ns", "size"])


def test_move_preserves_user_xattrs(pair):
    src = make_source(pair)
    data = src.read_bytes()
    set_user_xattrs(src)
    before = snapshot(src)
    for name, value in USER_XATTRS.items():
        assert before["xattrs"][name] == value
    do_move(pair, src, data, before, ["xattrs", "size"])


def test_move_preserves_posix_acl_bytes(pair, root_only):
    src = make_source(pair)
    data = src.read_bytes()
    set_acl(src)
    acl = os.getxattr(src, "system.posix_acl_access")
    before = snapshot(src)
    dst = pair.dst_dir / "meta-moved.bin"
    run = move_with("os.rename", src, dst)
    assert_ok(run)
    after = snapshot(dst)
    assert_metadata_equal(before, after, ["mode", "xattrs"])
    assert os.getxattr(dst, "system.posix_acl_access") == acl
    assert dst.read_bytes() == data


def test_move_preserves_owner_setuid_times_xattrs_and_acl_together(pair, root_only):
    """Order matters in the copy (chown clears setuid; ACL and chmod share
    group bits; writing data bumps mtime): all fields must come out right."""
    src = make_source(pair)
    data = src.read_bytes()
    os.chown(src, 1234, 5678)
    os.chmod(src, 0o4755)
    set_user_xattrs(src)
    set_acl(src)
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    before = snapshot(src)
    assert before["mode"] & 0o4000, "precondition: setuid bit set"
    do_move(pair, src, data, before, list(before))


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo", "socket", "chardev"])
def test_one_metadata_policy_for_every_object_type(pair, root_only, kind):
    """The same metadata arrives whatever the object is (one policy in
    meta.rs): a foreign owner, setgid, a trusted.* xattr, an ACL denying
    the group (not on a symlink, which takes neither ACLs nor a mode), and
    nanosecond times. A user.* attribute goes wherever the kernel takes one
    (files and directories)."""
    import socket
    import stat as st_
    src = pair.src_dir / f"obj-{kind}"
    if kind == "file":
        src.write_bytes(b"data")
    elif kind == "dir":
        src.mkdir()
    elif kind == "symlink":
        os.symlink("some/target", src)
    elif kind == "fifo":
        os.mkfifo(src)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(src))
        s.close()
    else:
        os.mknod(src, 0o600 | st_.S_IFCHR, os.makedev(1, 3))
    os.lchown(src, 1234, 5678)
    if kind != "symlink":
        os.chmod(src, 0o2750)
        proc = subprocess.run(["setfacl", "-m", "g::---,u:4321:rw", str(src)], capture_output=True, text=True)
        need(proc.returncode == 0, f"setfacl failed: {proc.stderr.strip()}")
    os.setxattr(src, "trusted.xrename", kind.encode(), follow_symlinks=False)
    if kind in ("file", "dir"):
        os.setxattr(src, "user.xrename", b"u", follow_symlinks=False)
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS), follow_symlinks=False)
    before = snapshot(src)
    dst = pair.dst_dir / f"moved-{kind}"
    assert_ok(move_with("os.rename", src, dst))
    assert not os.path.lexists(src)
    after = snapshot(dst)
    assert_metadata_equal(before, after, ["type", "mode", "uid", "gid", "atime_ns", "mtime_ns", "xattrs"])
    if kind != "symlink":
        assert "system.posix_acl_access" in after["xattrs"], f"{kind}: the ACL was dropped"
