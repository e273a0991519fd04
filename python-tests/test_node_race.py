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
beside the destination (setgid directory, default ACL).

The same race, for everything else named in the destination directory
before its install (issue 11, 1): a file copied into a named temp (the
O_TMPFILE openat made to fail by strace), an unnamed copy linked at a
hidden name to be exchanged with an existing destination, the hard link a
second name of a moved file becomes (two renames in one process), and a
tree's temp directory. There the attacker (`steal`) renames a file of its
own over every hidden name and every entry it can reach in one, and where
the name is a directory renames it away (same parent: no write permission
on it is needed) and puts its own, holding a marker file, at the name. The
destination is then the source's file or tree, never the attacker's object
and never built inside its directory; or EXDEV with the source and the old
destination as they were. Nothing of ours stays under a hidden name or in
a directory the attacker took, and nothing of the attacker's is removed.
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
from cli_harness import XRENAME
from test_data_round2 import (  # noqa: F401 (child and movers are fixtures)
    calibrate, child, clear_dir, copy_done_call, cross_pair, hidden, install_call, movers, need_strace, quoted,
    run_traced, start, stop_and, stop_spec, window, without_tmpfile,
)
from xrename_harness import PRIVILEGED, child_env, need

ATTACKER = 65534
OWNER = 4321  # the source's owner: not root, so that the move makes a chown
VICTIM = b"secret\n"


def as_attacker(dst_dir: Path, act):
    """Runs `act(dfd)` as user ATTACKER in a forked child, `dfd` a
    descriptor of `dst_dir` opened before dropping root; returns what it
    returned (through JSON). A failure of the child fails the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            dfd = os.open(dst_dir, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setgid(ATTACKER)
            os.setuid(ATTACKER)
            os.write(w, json.dumps({"result": act(dfd)}).encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 (report anything to the parent)
            os.write(w, json.dumps({"error": f"attacker failed: {e!r}"}).encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and "error" not in out, out
    return out["result"]


def hidden_names(dfd: int):
    """The hidden names of ours in the directory `dfd` (not a source set
    aside), each with a descriptor of the directory it names (None if it is
    none), open until the next name is asked for."""
    for name in sorted(os.listdir(dfd)):
        if not name.startswith(".xrename-") or name.startswith(".xrename-src-"):
            continue
        try:
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        except OSError:
            inner = None
        try:
            yield name, inner
        finally:
            if inner is not None:
                os.close(inner)


def attack(dst_dir: Path, victim: Path) -> list[str]:
    """As user ATTACKER (in a forked child, through a descriptor of
    `dst_dir` opened before dropping root): for every hidden name in
    `dst_dir`, tries to rename a symlink to `victim` over every entry in it
    and over the name itself, and its own empty directory over the name.
    Returns what succeeded."""

    def act(dfd: int) -> list[str]:
        done = []
        n = 0

        def fresh_link() -> str:
            nonlocal n
            n += 1
            os.symlink(str(victim), f"attack-link-{n}", dir_fd=dfd)
            return f"attack-link-{n}"

        link = fresh_link()
        for name, inner in hidden_names(dfd):
            for entry in os.listdir(inner) if inner is not None else ():
                try:
                    os.rename(link, entry, src_dir_fd=dfd, dst_dir_fd=inner)
                    done.append(f"symlink over {name}/{entry}")
                    link = fresh_link()
                except OSError:
                    pass
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
        return done

    return as_attacker(dst_dir, act)


def make_source(src: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(src)
        os.chmod(src, 0o640)
    else:
        os.symlink("some/target", src)
    os.lchown(src, OWNER, OWNER)


def is_the_source(path: Path, kind: str, owner: int = None) -> bool:
    st = os.lstat(path)
    owner = OWNER if owner is None else owner
    if (st.st_uid, st.st_gid) != (owner, owner):
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
@pytest.mark.parametrize("where", ["shared", "sticky-theirs"])
def test_an_attacker_in_a_shared_destination_never_gets_a_node_move_to_touch_or_install_their_symlink(
        child, tmpfs, ext4, tmp_path, movers, kind, stop, where):
    need(PRIVILEGED, "needs real root (a second user, chown)")
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    # Shared, not sticky; or sticky and root's, as /tmp, with the source
    # node the attacker's own: once the copy is chowned to them, the sticky
    # rule lets them replace it (a sticky exception once let root chmod a
    # hard link of another file renamed over the node's hidden name).
    os.chmod(p.dst_dir, 0o777 if where == "shared" else 0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    os.chmod(victim, 0o600)
    before = os.lstat(victim)
    src, dst = p.src_dir / "node", p.dst_dir / "node"

    theirs = ATTACKER if where == "sticky-theirs" else None

    def source():
        make_source(src, kind)
        if theirs is not None:
            os.lchown(src, theirs, theirs)
    source()
    out = run_traced(child, src, dst, tmp_path / "calibrate.trace")
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls, first, end = window(out)
    target = stop_point(calls, first, end, install_call(calls, first, end, dst.name), stop)
    os.unlink(dst)

    source()
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
        assert is_the_source(dst, kind, theirs), (
            f"rename returned 0, but the destination is not the moved {kind}: "
            f"{os.readlink(dst) if dst.is_symlink() else oct(os.lstat(dst).st_mode)}; attacker: {done}")
        assert not os.path.lexists(src), "rename returned 0, but the source is still there"
    else:
        assert out.kind == "error" and out.errno == errno.EXDEV, f"{out.describe()}; attacker: {done}"
        assert is_the_source(src, kind, theirs), "the move failed, but the source is not intact"
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


# --------------------------------------------------------------------------
# files, hard links and trees bound for a shared directory (issue 11, 1)
# --------------------------------------------------------------------------

SRC_DATA = b"the source, to be moved\n" * 64
OLD_DATA = b"the old destination\n" * 32
ATTACK_DATA = b"the attacker's file\n"
MARKER = "attacker-was-here"


def steal(dst_dir: Path) -> tuple[list[str], set[int]]:
    """As user ATTACKER (in a forked child, through a descriptor of `dst_dir`
    opened before dropping root), for every hidden name in `dst_dir`:
    renames a regular file of its own over every entry inside it that it can
    reach and over the name itself; where the name is a directory, renames
    it away (to `attack-stolen-N`, in the same directory: no write permission
    on it is needed) and puts a directory of its own, holding MARKER, at the
    name. Returns what succeeded and the inode numbers of the attacker's
    objects now at a hidden name or inside one."""

    def act(dfd: int) -> list:
        done: list[str] = []
        placed: list[int] = []
        n = 0

        def own(kind: str) -> tuple[str, int]:
            nonlocal n
            n += 1
            name = f"attack-{kind}-{n}"
            if kind == "file":
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                os.write(fd, ATTACK_DATA)
                os.close(fd)
            else:
                os.mkdir(name, 0o755, dir_fd=dfd)
                inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
                os.close(os.open(MARKER, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=inner))
                os.close(inner)
            return name, os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino

        def put(obj: tuple[str, int], to: str, at: int, what: str) -> bool:
            try:
                os.rename(obj[0], to, src_dir_fd=dfd, dst_dir_fd=at)
            except OSError:
                return False
            done.append(what)
            placed.append(obj[1])
            return True

        for name, inner in hidden_names(dfd):
            for entry in os.listdir(inner) if inner is not None else ():
                f = own("file")
                if not put(f, entry, inner, f"file over {name}/{entry}"):
                    os.unlink(f[0], dir_fd=dfd)
            f = own("file")
            if put(f, name, dfd, f"file over {name}"):
                continue
            os.unlink(f[0], dir_fd=dfd)
            n += 1
            try:
                os.rename(name, f"attack-stolen-{n}", src_dir_fd=dfd, dst_dir_fd=dfd)
                done.append(f"{name} renamed to attack-stolen-{n}")
            except OSError:
                pass
            d = own("dir")
            if not put(d, name, dfd, f"directory over {name}"):
                os.unlink(f"{d[0]}/{MARKER}", dir_fd=dfd)
                os.rmdir(d[0], dir_fd=dfd)
        return [done, placed]

    done, placed = as_attacker(dst_dir, act)
    return done, set(placed)


def leftovers_of_ours(*dirs: Path) -> list[str]:
    """Hidden names in `dirs` that are not the attacker's, and anything left
    in a directory the attacker stole (renamed away from a hidden name)."""
    out = [h for h in hidden(*dirs) if os.lstat(h).st_uid != ATTACKER]
    for d in dirs:
        for n in os.listdir(d):
            p = d / n
            if n.startswith("attack-stolen-") and os.lstat(p).st_uid != ATTACKER and os.listdir(p):
                out.append(f"{p}: {sorted(os.listdir(p))}")
    return out


def make_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chown(path, OWNER, OWNER)
    os.chmod(path, 0o640)


def is_file_of(path: Path, data: bytes) -> bool:
    st = os.lstat(path)
    return (stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) == (OWNER, OWNER)
            and stat.S_IMODE(st.st_mode) == 0o640 and path.read_bytes() == data)


def assert_attackers_objects_kept(d: Path, placed: set[int], done: list[str]) -> None:
    """Every object the attacker put at a hidden name is still somewhere in
    `d`: never removed, as one of ours, by the mover."""
    found = {os.lstat(os.path.join(top, n)).st_ino for top, dirs, files in os.walk(d) for n in [*dirs, *files]}
    assert placed <= found, f"the mover removed the attacker's objects {placed - found}; attacker: {done}"


def after_steps(calls: list[fh.Call], first: int, upto: int, pick) -> fh.Call:
    """The first successful call in calls[first:upto] that `pick` accepts."""
    found = [c for c in calls[first:upto] if c.ret != "?" and not c.ret.startswith("-") and pick(c)]
    assert found, "calibration: no such call before the install:\n" + "\n".join(c.text for c in calls[first:upto])
    return found[0]


def resetter(p, fill):
    """What puts the pair `p` back as a move starts: both directories
    emptied, `fill()` run, everything aged past a clock tick (same calls in
    every run: no racy compare)."""
    def reset():
        clear_dir(p.src_dir)
        clear_dir(p.dst_dir)
        fill()
        fh.age(p.src_dir, p.dst_dir)
    return reset


def shared_pair(tmpfs: Path, ext4: Path):
    """A tmpfs-to-ext4 pair for an attacked move (skipped without real root
    or strace)."""
    need(PRIVILEGED, "needs real root (a second user, chown)")
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    os.chmod(p.dst_dir, 0o777)  # shared, not sticky
    return p


def assert_outcome(out, src: Path, dst: Path, existing: bool, done, placed, moved, intact, old_kept) -> None:
    """After an attacked move: rename returned 0 and `dst` is what was moved
    (`moved()`), the source gone; or EXDEV with the source intact
    (`intact()`) and the old destination as it was (`old_kept()`) or none;
    nothing of ours left under a hidden name or in a directory the attacker
    stole, and the attacker's own objects where they put them."""
    if out.kind == "ok":
        assert moved(), (f"rename returned 0, but {dst} is not what was moved "
                         f"(inode {os.lstat(dst).st_ino}); attacker: {done}")
        assert not os.path.lexists(src), "rename returned 0, but the source is still there"
    else:
        assert out.kind == "error" and out.errno == errno.EXDEV, f"{out.describe()}; attacker: {done}"
        assert intact(), "the move failed, but the source is not intact"
        if existing:
            assert old_kept(), f"the move failed, and the old destination changed; {done}"
        else:
            assert not os.path.lexists(dst), f"the move failed, but {dst} exists; attacker: {done}"
    left = leftovers_of_ours(src.parent, dst.parent)
    assert not left, f"left: {left}; attacker: {done}"
    assert_attackers_objects_kept(dst.parent, placed, done)


def stop_attack_check_file(child, movers, tmp_path, reset, src: Path, dst: Path, existing: bool,
                           injects: tuple[str, ...], target: fh.Call, stop: str, env_extra=None) -> None:
    """Runs the move stopped after `target`, lets the attacker at the hidden
    names, goes on, and checks: the destination is the source's file or, with
    EXDEV, the source and the old destination are as they were; nothing of
    ours is left under a hidden name or in a directory the attacker stole."""
    reset()
    m = start(movers, child, src, dst, tmp_path / "move.trace", (*injects, stop_spec(target)), env_extra=env_extra)
    stop_and(m, target, stop)
    done, placed = steal(dst.parent)
    m.cont()
    out = m.finish()
    assert_outcome(out, src, dst, existing, done, placed,
                   moved=lambda: is_file_of(dst, SRC_DATA), intact=lambda: is_file_of(src, SRC_DATA),
                   old_kept=lambda: is_file_of(dst, OLD_DATA))


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("stop", ["temp-made", "before-install"])
def test_an_attacker_in_a_shared_destination_never_gets_a_named_temp_file_installed(
        child, tmpfs, ext4, tmp_path, movers, stop, existing):
    """A file copied into a named temp (O_TMPFILE made to fail, as on a
    filesystem without it or without /proc) in a shared directory: the
    attacker renames its own file over the hidden name, or the directory
    holding it away, right after the temp is made (at its chown) and just
    before the install."""
    p = shared_pair(tmpfs, ext4)
    src, dst = p.src_dir / "file", p.dst_dir / "file"

    def fill():
        make_file(src, SRC_DATA)
        if existing:
            make_file(dst, OLD_DATA)
    reset = resetter(p, fill)

    no_tmpfile = without_tmpfile(child, src, dst, tmp_path / "plain.trace", reset)

    calls, first, end, install = calibrate(child, src, dst, tmp_path, reset, no_tmpfile)
    if stop == "before-install":
        target = calls[install.index - 1]
    else:
        made = after_steps(calls, first, install.index, lambda c: c.name == "openat" and "O_EXCL" in c.text)
        # The first metadata call after it (data calls may be interrupted by the stop).
        target = after_steps(calls, made.index + 1, install.index, lambda c: c.name in ("fchown", "fchmod"))
    stop_attack_check_file(child, movers, tmp_path, reset, src, dst, existing, no_tmpfile, target, stop)


def test_an_attacker_in_a_shared_destination_never_gets_a_file_installed_in_place_of_an_unnamed_temp(
        child, tmpfs, ext4, tmp_path, movers):
    """An unnamed (O_TMPFILE) copy replacing a destination is first linked
    at a hidden name, to be exchanged with it: the attacker acts right after
    that link."""
    p = shared_pair(tmpfs, ext4)
    src, dst = p.src_dir / "file", p.dst_dir / "file"

    def fill():
        make_file(src, SRC_DATA)
        make_file(dst, OLD_DATA)
    reset = resetter(p, fill)

    calls, first, end, install = calibrate(child, src, dst, tmp_path, reset)
    target = after_steps(calls, first, install.index, lambda c: c.name == "linkat" and "/proc/" in c.text)
    stop_attack_check_file(child, movers, tmp_path, reset, src, dst, True, (), target, "named")


RENAME2_SOURCE = fh.CHILD_REPORT + r'''
/* rename2 SRC DST: rename(3) FIRST_SRC to FIRST_DST (from the environment;
   it must succeed), then SRC to DST, then report() for the second. */
int main(int argc, char **argv) {
    const char *a = getenv("FIRST_SRC"), *b = getenv("FIRST_DST");
    if (argc != 3 || !a || !b) {
        fprintf(stderr, "usage: FIRST_SRC=.. FIRST_DST=.. rename2 SRC DST\n");
        return 2;
    }
    if (rename(a, b) != 0) {
        perror("first rename");
        return 4;
    }
    int r = rename(argv[1], argv[2]);
    return report(r == 0 ? 0 : errno);
}
'''


@pytest.fixture(scope="module")
def child2() -> Path:
    """`rename2 SRC DST`: two renames in one process (the memory of files
    with several names lives as long as the process)."""
    need(shutil.which("cc") is not None, "no C compiler (cc)")
    return fh.build_child("rename2", RENAME2_SOURCE)


@pytest.mark.parametrize("stop", ["linked", "before-install"])
def test_an_attacker_in_a_shared_destination_never_gets_a_hard_link_reuse_installed(
        child2, tmpfs, ext4, tmp_path, movers, stop):
    """Two names of one file moved by one process: the second becomes a hard
    link to the first's copy, made under a hidden name and installed by
    name. The attacker acts right after that link, and just before the
    install."""
    p = shared_pair(tmpfs, ext4)
    first_src, first_dst = p.src_dir / "a", p.dst_dir / "a"
    src, dst = p.src_dir / "b", p.dst_dir / "b"
    env = {"FIRST_SRC": str(first_src), "FIRST_DST": str(first_dst)}

    def fill():
        make_file(first_src, SRC_DATA)
        os.link(first_src, src)
    reset = resetter(p, fill)

    reset()
    out = run_traced(child2, src, dst, tmp_path / "calibrate.trace", env_extra=env)
    assert out.kind == "ok", f"calibration move failed: {out.describe()}"
    calls = fh.parse_trace(out.trace)
    second = [c.index for c in calls if c.name in fh.RENAME_FAMILY and c.err == "EXDEV"][1] + 1
    end = next(c.index for c in calls if c.name == fh.END_MARKER)
    # The install: not the link itself, which in a private directory is
    # made under the destination's name.
    install = next(c for c in calls[second:end] if c.name in ("linkat", "renameat2") and c.ret == "0"
                   and quoted(c.text)[-1] == dst.name and quoted(c.text)[0] != first_src.name)
    linked = after_steps(calls, second, install.index, lambda c: c.name == "linkat" and '"a"' in c.text)
    target = linked if stop == "linked" else calls[install.index - 1]
    stop_attack_check_file(child2, movers, tmp_path, reset, src, dst, False, (), target, stop, env_extra=env)
    assert os.lstat(dst).st_ino == os.lstat(first_dst).st_ino, "the second name is not a link to the first's copy"


def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    make_file(root / "f", SRC_DATA)
    make_file(root / "sub" / "g", SRC_DATA[::-1])
    for d in (root / "sub", root):
        os.chown(d, OWNER, OWNER)
        os.chmod(d, 0o755)


def is_tree_of_source(root: Path, placed: set[int]) -> bool:
    st = os.lstat(root)
    return (stat.S_ISDIR(st.st_mode) and st.st_ino not in placed and (st.st_uid, st.st_gid) == (OWNER, OWNER)
            and sorted(os.listdir(root)) == ["f", "sub"] and os.listdir(root / "sub") == ["g"]
            and is_file_of(root / "f", SRC_DATA) and is_file_of(root / "sub" / "g", SRC_DATA[::-1]))


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-empty-dir"])
@pytest.mark.parametrize("stop", ["dir-made", "synced", "before-install"])
def test_an_attacker_in_a_shared_destination_never_gets_a_tree_built_in_or_installed_from_its_directory(
        child, tmpfs, ext4, tmp_path, movers, stop, existing):
    """A tree is built under a hidden name in the destination directory and
    installed from there by name. The attacker renames that directory away
    and puts its own at the name: right after the mkdirat (before the mover
    opens it), once the copy is synced, and just before the install."""
    p = shared_pair(tmpfs, ext4)
    src, dst = p.src_dir / "tree", p.dst_dir / "tree"

    def fill():
        make_tree(src)
        if existing:
            dst.mkdir()
    reset = resetter(p, fill)

    calls, first, end, install = calibrate(child, src, dst, tmp_path, reset)
    target = {
        "dir-made": lambda: after_steps(calls, first, install.index, lambda c: c.name == "mkdirat"),
        "synced": lambda: copy_done_call(calls, first, install),
        "before-install": lambda: calls[install.index - 1],
    }[stop]()

    reset()
    old = os.lstat(dst).st_ino if existing else None
    m = start(movers, child, src, dst, tmp_path / "move.trace", (stop_spec(target),))
    stop_and(m, target, stop)
    done, placed = steal(p.dst_dir)
    m.cont()
    out = m.finish()
    assert_outcome(out, src, dst, existing, done, placed,
                   moved=lambda: is_tree_of_source(dst, placed), intact=lambda: is_tree_of_source(src, set()),
                   old_kept=lambda: os.lstat(dst).st_ino == old and os.listdir(dst) == [])


def test_an_attacker_removing_the_tree_temp_before_it_is_opened_gives_exdev(child, tmpfs, ext4, tmp_path, movers):
    """The attacker removes the (empty) hidden directory a tree is to be
    built in right after its mkdirat: the mover cannot open it. Nothing is
    missing that rename itself would look for, so the program gets EXDEV,
    never that open's ENOENT (a review found it leaking)."""
    p = shared_pair(tmpfs, ext4)
    src, dst = p.src_dir / "tree", p.dst_dir / "tree"
    reset = resetter(p, lambda: make_tree(src))
    calls, first, end, install = calibrate(child, src, dst, tmp_path, reset)
    target = after_steps(calls, first, install.index, lambda c: c.name == "mkdirat")

    def remove(dfd: int) -> list:
        removed = []
        for name, _ in hidden_names(dfd):  # not ours to open: 0700
            if stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode):
                os.rmdir(name, dir_fd=dfd)
                removed.append(name)
        return removed

    reset()
    m = start(movers, child, src, dst, tmp_path / "move.trace", (stop_spec(target),))
    stop_and(m, target, "dir-made")
    removed = as_attacker(p.dst_dir, remove)
    m.cont()
    out = m.finish()
    assert removed, "the attacker found no temp directory to remove"
    assert out.kind == "error" and out.errno == errno.EXDEV, out.describe()
    assert is_tree_of_source(src, set()) and not os.path.lexists(dst)


def test_a_failed_look_at_an_installed_tree_is_tried_again_not_undone(child, tmpfs, ext4, tmp_path):
    """Right after a tree is placed, its name is looked at once more (was
    it ours that went there?). An I/O error of that look (EIO injected
    once) is tried again, as every step after the install is, instead of
    undoing the placement and failing the move (a review found it undone:
    the program got EIO, and had the look failed for good, the tree others
    may already have written to would have been emptied)."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    src, dst = p.src_dir / "tree", p.dst_dir / "tree"
    reset = resetter(p, lambda: make_tree(src))
    calls, first, end, install = calibrate(child, src, dst, tmp_path, reset)
    look = next(c for c in calls[install.index + 1:end]
                if c.name == "statx" and c.tid == install.tid and quoted(c.text)[:1] == [dst.name])
    reset()
    out = run_traced(child, src, dst, tmp_path / "move.trace", (f"statx:error=EIO:when={look.ordinal}",))
    assert "EIO (Input/output error) (INJECTED)" in out.trace, fh.move_trace_excerpt(out.trace)
    assert out.kind == "ok", out.describe()
    assert is_tree_of_source(dst, set()) and not os.path.lexists(src)


def test_an_old_destination_filled_after_the_check_survives_a_crash_and_clean(child, tmpfs, ext4, tmp_path, movers):
    """A tree replacing an empty directory: someone puts a file in that
    directory after the check, and the mover is killed right after the
    exchange. The old destination, with the file, then sits under the name
    the copy had: it must be an old destination's name, which `xrename
    clean --remove` reports and never deletes (it was a temp's name, which
    clean --remove deleted with the file in it)."""
    need_strace()
    p = cross_pair(tmpfs, ext4, "tmpfs-to-ext4")
    src, dst = p.src_dir / "tree", p.dst_dir / "tree"

    def fill():
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f").write_text("copy")
        dst.mkdir()
    reset = resetter(p, fill)
    calls, first, end, _ = calibrate(child, src, dst, tmp_path, reset)
    exchange = next(c for c in calls[first:end] if c.name == "renameat2" and "RENAME_EXCHANGE" in c.text)
    before = calls[exchange.index - 1]
    reset()
    # A signal is injected as a call starts, and one syscall takes one
    # injection: the kill goes to the first later call of another name.
    after = next(c for c in calls[exchange.index + 1:end] if c.name != before.name)
    kill = f"{after.name}:signal=SIGKILL:when={after.ordinal}"
    m = start(movers, child, src, dst, tmp_path / "move.trace", (stop_spec(before), kill))
    stop_and(m, before, "before-exchange")
    (dst / "precious").write_text("theirs")
    m.cont()
    out = m.finish()
    assert out.kind == "killed", out.describe()
    proc = subprocess.run([str(XRENAME), "clean", "--remove", str(p.dst_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = [d for d in p.dst_dir.rglob("precious")]
    assert [f.read_text() for f in found] == ["theirs"], (proc.stdout, proc.stderr, sorted(os.listdir(p.dst_dir)))
    assert found[0].parent.name.startswith(".xrename-old-") or found[0].parent == dst, found
