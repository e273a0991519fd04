"""A symlink or special file moved into a shared directory (issue 11, 0).

A FIFO or symlink is made, and given its metadata, by name. If it were made
under a hidden name right in the destination directory, another user with
write access there could rename a symlink of theirs over that name at any
moment up to the install: xrename would chmod the symlink's target, or
install the attacker's symlink at the destination and delete the source.

Here the moving process is stopped (strace `inject=SYSCALL:signal=SIGSTOP`,
the helpers of test_data_round2) at one precise call: right after it made
its private directory, right after it made the node, inside the metadata
steps (after the chown), and just before the install rename. While it is
stopped, user 65534 in a forked child (the destination directory is 0777,
not sticky) does the worst it can to every hidden name there: renames a
symlink to a root-owned 0600 victim file over it, renames its own empty
directory over it, renames the symlink over every entry inside it. Then the
mover goes on. The victim never changes, the destination is the moved
object with the source's metadata or, with EXDEV, absent with the source
intact; never the attacker's symlink; and no hidden name is left. (A build
that makes no private directory has no first stop: that case fails at
its calibration.)

Made in a private directory, a node still gets the group and ACLs it got
beside the destination (setgid directory, default ACL): the last test.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import fault_harness as fh
from test_data_round2 import (  # noqa: F401 (child and movers are fixtures)
    child, cross_pair, hidden, install_call, movers, need_strace, run_traced, start, stop_and, stop_spec, window,
)
from xrename_harness import PRIVILEGED, child_env, need

ATTACKER = 65534
OWNER = 4321  # the source's owner: not root, so that the move makes a chown
VICTIM = b"secret\n"


def attack(dst_dir: Path, victim: Path) -> list[str]:
    """As user ATTACKER (in a forked child, through a descriptor of
    `dst_dir` opened before dropping root): for every hidden name in
    `dst_dir`, tries to rename a symlink to `victim` over every entry in it
    and over the name itself, and its own empty directory over the name.
    Returns what succeeded."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            dfd = os.open(dst_dir, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setgid(ATTACKER)
            os.setuid(ATTACKER)
            done = []
            n = 0

            def fresh_link() -> str:
                nonlocal n
                n += 1
                os.symlink(str(victim), f"attack-link-{n}", dir_fd=dfd)
                return f"attack-link-{n}"

            link = fresh_link()
            for name in sorted(os.listdir(dfd)):
                if not name.startswith(".xrename-") or name.startswith(".xrename-src-"):
                    continue
                try:
                    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                except OSError:
                    inner = None
                if inner is not None:
                    for entry in os.listdir(inner):
                        try:
                            os.rename(link, entry, src_dir_fd=dfd, dst_dir_fd=inner)
                            done.append(f"symlink over {name}/{entry}")
                            link = fresh_link()
                        except OSError:
                            pass
                    os.close(inner)
                try:
                    os.rename(link, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                    done.append(f"symlink over {name}")
                    link = fresh_link()
                except OSError:
                    os.mkdir("attack-dir", 0o777, dir_fd=dfd)
                    try:
                        os.rename("attack-dir", name, src_dir_fd=dfd, dst_dir_fd=dfd)
                        done.append(f"directory over {name}")
                    except OSError:
                        os.rmdir("attack-dir", dir_fd=dfd)
            os.write(w, json.dumps(done).encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 (report anything to the parent)
            os.write(w, json.dumps([f"attacker failed: {e!r}"]).encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    done = json.loads(out)
    assert os.waitstatus_to_exitcode(status) == 0, done
    return done


def make_source(src: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(src)
        os.chmod(src, 0o640)
    else:
        os.symlink("some/target", src)
    os.lchown(src, OWNER, OWNER)


def is_the_source(path: Path, kind: str) -> bool:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (OWNER, OWNER):
        return False
    if kind == "fifo":
        return stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    return stat.S_ISLNK(st.st_mode) and os.readlink(path) == "some/target"


def stop_point(calls: list[fh.Call], first: int, end: int, install: fh.Call, stop: str) -> fh.Call:
    """The call of the calibrated move to stop after."""
    if stop == "before-install":
        return calls[install.index - 1]
    name = {"dir-made": "mkdirat", "node-made": None, "chowned": "fchownat"}[stop]
    made = [c for c in calls[first:install.index] if c.ret == "0"
            and (c.name == name if name else c.name in ("mknodat", "symlinkat"))]
    assert made, (f"calibration: no successful {name or 'mknodat/symlinkat'} before the install:\n"
                  + "\n".join(c.text for c in calls[first:end]))
    return made[0]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
@pytest.mark.parametrize("stop", ["dir-made", "node-made", "chowned", "before-install"])
def test_an_attacker_in_a_shared_destination_never_gets_a_node_move_to_touch_or_install_their_symlink(
        child, tmpfs, ext4, tmp_path, movers, kind, stop):
    need(PRIVILEGED, "needs real root (a second user, chown)")
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    os.chmod(p.dst_dir, 0o777)  # shared, not sticky
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    os.chmod(victim, 0o600)
    before = os.lstat(victim)
    src, dst = p.src_dir / "node", p.dst_dir / "node"

    make_source(src, kind)
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls, first, end = window(out)
    target = stop_point(calls, first, end, install_call(calls, first, end, dst.name), stop)
    os.unlink(dst)

    make_source(src, kind)
    m = start(movers, child, src, dst, tmp_path / "move.trace", (stop_spec(target),))
    stop_and(m, target, stop)
    done = attack(p.dst_dir, victim)
    m.cont()
    out = m.finish()

    after = os.lstat(victim)
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == \
        (stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid), f"the victim changed; attacker: {done}"
    assert victim.read_bytes() == VICTIM
    if out.kind == "ok":
        assert is_the_source(dst, kind), (
            f"rename returned 0, but the destination is not the moved {kind}: "
            f"{os.readlink(dst) if dst.is_symlink() else oct(os.lstat(dst).st_mode)}; attacker: {done}")
        assert not os.path.lexists(src), "rename returned 0, but the source is still there"
    else:
        assert out.kind == "error" and out.errno == errno.EXDEV, f"{out.describe()}; attacker: {done}"
        assert is_the_source(src, kind), "the move failed, but the source is not intact"
        assert not os.path.lexists(dst), f"the move failed, but {dst} exists; attacker: {done}"
    assert not hidden(p.dst_dir, p.src_dir), f"hidden names left: {hidden(p.dst_dir, p.src_dir)}; attacker: {done}"


def test_a_node_made_in_a_private_directory_gets_the_group_and_acls_it_would_get_beside_the_destination(
        child, tmpfs, ext4, tmp_path):
    """User OWNER moves FIFOs into a shared (0777) setgid directory with a
    default ACL, so they are made in a private directory. One's group is
    not one of the mover's (chown to it is refused): like mv, it keeps the
    group it was made with, the directory's (setgid). Neither keeps an ACL
    it inherited from the default ACL: the one without an ACL has none, the
    one with an ACL has exactly its own."""
    need(PRIVILEGED, "needs real root (a second user, chown)")
    need(shutil.which("setfacl") is not None and shutil.which("setpriv") is not None, "setfacl or setpriv missing")
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    os.chown(p.dst_dir, 0, 5000)
    os.chmod(p.dst_dir, 0o2777)
    subprocess.run(["setfacl", "-d", "-m", "u:4444:rwx", str(p.dst_dir)], check=True)
    os.chmod(p.src_dir, 0o777)
    os.chmod(tmp_path, 0o711)  # the mover reaches both through its working directory
    plain, with_acl = p.src_dir / "plain", p.src_dir / "with-acl"
    for f, group in ((plain, 6000), (with_acl, OWNER)):
        os.mkfifo(f)
        os.chown(f, OWNER, group)
        os.chmod(f, 0o640)
    subprocess.run(["setfacl", "-m", "u:4445:r", str(with_acl)], check=True)
    acl = os.getxattr(with_acl, "system.posix_acl_access")
    for f in (plain, with_acl):
        rel = lambda q: os.path.relpath(q, tmp_path)  # noqa: E731
        proc = subprocess.run(["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--clear-groups", str(child),
                               rel(f), rel(p.dst_dir / f.name)],
                              capture_output=True, text=True, cwd=tmp_path, env=child_env())
        assert proc.stdout == "0 1\n", (f.name, proc.stdout, proc.stderr)
    st = os.lstat(p.dst_dir / "plain")
    assert (stat.S_ISFIFO(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (True, 0o640, OWNER, 5000)
    with pytest.raises(OSError) as e:
        os.getxattr(p.dst_dir / "plain", "system.posix_acl_access")
    assert e.value.errno == errno.ENODATA, "the FIFO kept an ACL inherited from the default ACL"
    st = os.lstat(p.dst_dir / "with-acl")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, OWNER, OWNER)
    assert os.getxattr(p.dst_dir / "with-acl", "system.posix_acl_access") == acl
    assert not hidden(p.dst_dir, p.src_dir), hidden(p.dst_dir, p.src_dir)
