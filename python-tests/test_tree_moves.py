"""Cross-device moves of directories and other non-regular objects.

Directory semantics follow rename(2): an absent destination is created, an
empty directory replaced; a non-empty directory gives ENOTEMPTY, a
non-directory ENOTDIR, a destination inside the source EINVAL, a source that
is a mount point EBUSY. A failed move changes nothing and leaves no
`.xrename-*` (or any other) entry behind.
"""

from __future__ import annotations

import errno
import socket
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tree_harness import (
    FOREIGN_GID, FOREIGN_UID, assert_same_listing, bind_socket, build_small_tree,
    leftovers, listing,
)
from xrename_harness import (
    CHILD_TIMEOUT_S, IN_CI, MiB, PAST_ATIME_NS, PAST_MTIME_NS, PRIVILEGED, Pair,
    assert_cross_device, assert_errno, assert_ok, child_env, entries, move_with, need,
    random_bytes, run_child,
)

# A failed move must leave every entry as it was, the directories holding
# source and destination included (their mtimes too: a hidden temp entry
# created and removed again is a change). Not compared: atime (the shim may
# legitimately read the source, and must look into a destination directory to
# see whether it is empty).
FAILED_MOVE_IGNORE = dict(ignore=("atime_ns",))


def kernel_errno(src, dst) -> int:
    """The errno of a plain rename in this (never preloaded) process."""
    try:
        os.rename(src, dst)
    except OSError as e:
        return e.errno
    pytest.fail(f"precondition: plain rename {src} -> {dst} succeeded without the shim")


def assert_exdev_without_shim(src, dst) -> None:
    e = kernel_errno(src, dst)
    assert e == errno.EXDEV, f"precondition: kernel gave {errno.errorcode.get(e)}, want EXDEV"


def assert_failed_move_changed_nothing(before: dict, roots, run, errname: str) -> None:
    assert_errno(run, errname)
    for root in roots:
        assert_same_listing(before[root], listing(root), "before", "after",
                            f"{root}: the failed move changed something", **FAILED_MOVE_IGNORE)
    left = leftovers(*roots)
    assert not left, f"temp entries left behind: {left}"


# --------------------------------------------------------------------------
# directories: success
# --------------------------------------------------------------------------

def test_directory_moves_into_absent_destination_with_tree_intact(pair):
    src, dst = pair.src_dir / "tree", pair.dst_dir / "tree-moved"
    build_small_tree(src, seed=1)
    before = listing(src)

    assert_ok(move_with("os.rename", src, dst))

    assert not os.path.lexists(src)
    assert_same_listing(before, listing(dst), "source", "destination", "moved tree differs")
    assert entries(pair.src_dir) == set(), "leftovers next to the source"
    assert entries(pair.dst_dir) == {"tree-moved"}, "leftovers next to the destination"


def test_directory_replaces_empty_destination_directory(pair):
    src, dst = pair.src_dir / "tree", pair.dst_dir / "empty-target"
    build_small_tree(src, seed=2)
    dst.mkdir(mode=0o700)
    os.utime(dst, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    before = listing(src)

    assert_ok(move_with("os.rename", src, dst))

    assert not os.path.lexists(src)
    assert_same_listing(before, listing(dst), "source", "destination",
                        "the empty destination was not replaced by the source tree")
    assert entries(pair.src_dir) == set()
    assert entries(pair.dst_dir) == {"empty-target"}


# --------------------------------------------------------------------------
# directories: failures
# --------------------------------------------------------------------------

def _occupy(dst, kind: str) -> None:
    if kind == "non-empty-dir":
        dst.mkdir()
        (dst / "keep.txt").write_bytes(b"must survive")
        (dst / "sub").mkdir()
    elif kind == "file":
        dst.write_bytes(b"a regular file in the way")
    elif kind == "symlink-to-empty-dir":
        (dst.parent / "real-empty-dir").mkdir()
        os.symlink("real-empty-dir", dst)
    elif kind == "symlink-to-file":
        (dst.parent / "real-file").write_bytes(b"x")
        os.symlink("real-file", dst)
    elif kind == "dangling-symlink":
        os.symlink("nowhere", dst)
    else:
        raise ValueError(kind)
    os.utime(dst, ns=(PAST_ATIME_NS, PAST_MTIME_NS), follow_symlinks=False)


@pytest.mark.parametrize("kind,errname", [
    ("non-empty-dir", "ENOTEMPTY"),
    ("file", "ENOTDIR"),
    ("symlink-to-empty-dir", "ENOTDIR"),
    ("symlink-to-file", "ENOTDIR"),
    ("dangling-symlink", "ENOTDIR"),
])
def test_directory_onto_occupied_destination_fails_like_the_kernel_and_changes_nothing(pair, kind, errname):
    src, dst = pair.src_dir / "tree", pair.dst_dir / "occupied"
    build_small_tree(src, seed=3)
    _occupy(dst, kind)
    before = {r: listing(r) for r in (pair.src_dir, pair.dst_dir)}

    run = move_with("os.rename", src, dst)

    assert_failed_move_changed_nothing(before, (pair.src_dir, pair.dst_dir), run, errname)


def test_directory_into_mount_point_inside_itself_fails_einval_and_changes_nothing(mounts, ext4, tmp_path):
    """X/tree -> X/tree/m/new where a tmpfs is mounted at X/tree/m: the
    destination is inside the source; the kernel says EXDEV (two mounts)."""
    top = ext4 / "top"
    top.mkdir()
    src = top / "tree"
    build_small_tree(src, seed=4)
    mp = src / "m"
    mounts.mount(["-t", "tmpfs", "-o", "size=16m", "inner-tmpfs"], mp, "tmpfs inside the source")
    (mp / "on-inner-mount").write_bytes(b"inner")
    dst = mp / "new"
    assert_exdev_without_shim(src, dst)
    before = {r: listing(r) for r in (top,)}

    run = move_with("os.rename", src, dst)

    assert_failed_move_changed_nothing(before, (top,), run, "EINVAL")
    assert os.path.ismount(mp), "the mount inside the source is gone"


def test_directory_into_bind_mount_of_its_own_subdirectory_fails_einval_and_changes_nothing(
        mounts, ext4, tmp_path):
    """X/tree -> B/new where B is a bind mount of X/tree/sub: the destination
    is inside the source, reached through another mount (EXDEV in the kernel)."""
    top = ext4 / "top"
    top.mkdir()
    src = top / "tree"
    build_small_tree(src, seed=5)
    view = tmp_path / "sub-view"
    mounts.mount(["--bind", str(src / "sub")], view, "bind mount of a source subdirectory")
    dst = view / "new"
    assert os.path.samefile(view, src / "sub")
    assert_exdev_without_shim(src, dst)
    before = {r: listing(r) for r in (top,)}

    run = move_with("os.rename", src, dst)

    assert_failed_move_changed_nothing(before, (top,), run, "EINVAL")
    assert not os.path.lexists(dst)


def test_directory_that_is_a_mount_point_fails_ebusy_and_changes_nothing(mounts, ext4, tmpfs):
    top = ext4 / "top"
    top.mkdir()
    src = top / "mounted"
    mounts.mount(["-t", "tmpfs", "-o", "size=16m", "source-tmpfs"], src, "tmpfs as the source")
    build_small_tree(src / "content", seed=6)
    dst_dir = tmpfs / "dst"
    dst_dir.mkdir()
    dst = dst_dir / "new"
    assert_exdev_without_shim(src, dst)
    before = {r: listing(r) for r in (top, dst_dir)}

    run = move_with("os.rename", src, dst)

    assert_failed_move_changed_nothing(before, (top, dst_dir), run, "EBUSY")
    assert os.path.ismount(src), "the source mount is gone"


# --------------------------------------------------------------------------
# symlinks, fifos, sockets, device nodes
# --------------------------------------------------------------------------

SYMLINKS = {"to-file": "real-file", "to-dir": "real-dir", "dangling": "no/such/target"}


@pytest.mark.parametrize("kind", list(SYMLINKS))
def test_symlink_moves_as_a_link_with_target_owner_and_ns_times(pair, kind):
    need(PRIVILEGED or not IN_CI, "lchown to a foreign owner needs real root")
    (pair.src_dir / "real-file").write_bytes(b"the link must not be followed")
    (pair.src_dir / "real-dir").mkdir()
    (pair.src_dir / "real-dir" / "inside").write_bytes(b"x")
    src, dst = pair.src_dir / "link", pair.dst_dir / "link-moved"
    target = SYMLINKS[kind]
    os.symlink(target, src)
    if PRIVILEGED:
        os.lchown(src, FOREIGN_UID, FOREIGN_GID)
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS), follow_symlinks=False)
    before = os.lstat(src)  # never readlink the source: it would update atime

    assert_ok(move_with("os.rename", src, dst))

    assert not os.path.lexists(src)
    after = os.lstat(dst)  # lstat before readlink
    assert stat.S_ISLNK(after.st_mode), f"destination is not a symlink: {oct(after.st_mode)}"
    got = {k: getattr(after, k) for k in ("st_uid", "st_gid", "st_atime_ns", "st_mtime_ns", "st_size")}
    want = {k: getattr(before, k) for k in got}
    assert got == want, f"symlink metadata changed: before={want} after={got}"
    assert os.readlink(dst) == target
    # what the link pointed to is untouched and still in the source dir
    assert entries(pair.src_dir) == {"real-file", "real-dir"}
    assert (pair.src_dir / "real-file").read_bytes() == b"the link must not be followed"
    assert entries(pair.src_dir / "real-dir") == {"inside"}
    assert entries(pair.dst_dir) == {"link-moved"}


def _make_special(path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        bind_socket(os.fsencode(path))
    elif kind == "char-device":
        need(PRIVILEGED, "mknod of a device node needs real root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind,mode", [("fifo", 0o640), ("socket", 0o751), ("char-device", 0o604)])
def test_special_file_moves_with_type_mode_owner_and_ns_times(pair, kind, mode):
    need(PRIVILEGED or not IN_CI, "chown to a foreign owner needs real root")
    src, dst = pair.src_dir / kind, pair.dst_dir / f"{kind}-moved"
    _make_special(src, kind)
    if PRIVILEGED:
        os.lchown(src, FOREIGN_UID, FOREIGN_GID)
    os.chmod(src, mode)
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS), follow_symlinks=False)
    before = os.lstat(src)

    assert_ok(move_with("os.rename", src, dst))  # a hang here means the shim opened the fifo

    assert not os.path.lexists(src)
    after = os.lstat(dst)
    fields = ("st_mode", "st_uid", "st_gid", "st_atime_ns", "st_mtime_ns", "st_rdev")
    got = {k: (oct(getattr(after, k)) if k == "st_mode" else getattr(after, k)) for k in fields}
    want = {k: (oct(getattr(before, k)) if k == "st_mode" else getattr(before, k)) for k in fields}
    assert got == want, f"{kind} metadata changed: before={want} after={got}"
    assert entries(pair.src_dir) == set()
    assert entries(pair.dst_dir) == {f"{kind}-moved"}


# --------------------------------------------------------------------------
# overlayfs: a directory from the lower layer
# --------------------------------------------------------------------------

@pytest.mark.parametrize("layers", ["lower-only", "lower-and-upper"])
def test_overlay_lower_layer_directory_renames_within_the_merged_view(mounts, ext4, tmpfs, tmp_path, layers):
    lower = ext4 / "lower"
    lower.mkdir()
    build_small_tree(lower / "d", seed=7)
    (lower / "d" / "sub" / "deeper" / "nested-lower.txt").write_bytes(random_bytes(12_345, seed=8))
    (lower / "other").write_bytes(b"unrelated lower file")
    upper, work = tmpfs / "upper", tmpfs / "work"
    upper.mkdir()
    work.mkdir()
    merged = tmp_path / "merged"
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    ok, err = mounts.try_mount(["-t", "overlay", "-o", opts + ",redirect_dir=off", "xrename-ovl"], merged)
    if not ok:
        mounts.mount(["-t", "overlay", "-o", opts, "xrename-ovl"], merged, f"overlayfs ({err})")
    if layers == "lower-and-upper":  # d becomes a merge dir: entries in both layers
        (merged / "d" / "sub" / "added-in-upper.txt").write_bytes(b"upper layer content")
    src, dst = merged / "d", merged / "e"
    assert os.stat(src).st_dev == os.stat(merged).st_dev
    assert_exdev_without_shim(src, dst)
    before = listing(src)
    lower_before = listing(lower)

    assert_ok(move_with("os.rename", src, dst))

    assert not os.path.lexists(src), "merged/d still visible after the move"
    assert sorted(entries(merged)) == ["e", "other"]
    assert_same_listing(before, listing(dst), "merged/d before", "merged/e after",
                        "the tree at the new name differs")
    assert (dst / "sub" / "deeper" / "nested-lower.txt").read_bytes() == random_bytes(12_345, seed=8)
    assert_same_listing(lower_before, listing(lower), "lower before", "lower after",
                        "the lower layer was modified", ignore=("atime_ns",))


# --------------------------------------------------------------------------
# a chain of directories deeper than PATH_MAX
# --------------------------------------------------------------------------

DEPTH = 10_000
BOTTOM = b"at depth 10000\n"


def _build_chain(root) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(wfd, BOTTOM)
        os.close(wfd)
    finally:
        os.close(fd)


def _check_chain(root) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(DEPTH):
            names = os.listdir(fd)
            assert names == ["d"], f"level {level}: expected only 'd', found {names}"
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.listdir(fd) == ["bottom.txt"], f"bottom level holds {os.listdir(fd)}"
        rfd = os.open("bottom.txt", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(rfd, 1000) == BOTTOM
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


def _remove_chain(root) -> None:
    """Delete a deep chain with O(1) work per level (no recursion, no long
    paths): pull d/d up to the top, remove the emptied d, repeat."""
    if not os.path.isdir(root):
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while "d" in os.listdir(fd):
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                for name in os.listdir(sub):
                    if name == "d":
                        os.rename("d", ".pulled", src_dir_fd=sub, dst_dir_fd=fd)
                    else:
                        os.unlink(name, dir_fd=sub)
            finally:
                os.close(sub)
            os.rmdir("d", dir_fd=fd)
            if os.path.lexists(f"/proc/self/fd/{fd}/.pulled"):
                os.rename(".pulled", "d", src_dir_fd=fd, dst_dir_fd=fd)
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(root)


def test_ten_thousand_nested_directories_move_with_file_at_the_bottom(fs_pair):
    src, dst = fs_pair.src_dir / "chain", fs_pair.dst_dir / "chain-moved"
    src.mkdir()
    try:
        _build_chain(src)

        assert_ok(move_with("os.rename", src, dst))

        assert not os.path.lexists(src)
        _check_chain(dst)
        assert entries(fs_pair.src_dir) == set()
        assert entries(fs_pair.dst_dir) == {"chain-moved"}
    finally:  # pytest's own cleanup would recurse 10,000 levels deep
        _remove_chain(src)
        _remove_chain(dst)


# --------------------------------------------------------------------------
# a subdirectory swapped for a symlink while the tree is being moved
# --------------------------------------------------------------------------

RACER = r'''
import os, select, sys
victim, sentinel, ready_fd, stop_fd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
real, lnk = victim + ".real", victim + ".lnk"
cycles = failures = 0
ready = False
while True:
    try:
        os.rename(victim, real)                # the directory goes away ...
        try:
            os.symlink(sentinel, lnk)
            os.rename(lnk, victim)             # ... a symlink to the sentinel takes its name
            os.rename(victim, lnk)             # ... and leaves again
            os.unlink(lnk)
        finally:
            os.rename(real, victim)            # the directory comes back
        cycles += 1
    except OSError:
        failures += 1                          # the tree moved away meanwhile: keep trying
    if cycles and not ready:
        os.write(ready_fd, b"r")
        os.close(ready_fd)
        ready = True
    if select.select([stop_fd], [], [], 0)[0]:  # stop pipe closed by the test
        break
    if not ready and failures > 1000:
        sys.exit("racer could not complete one swap cycle")
print(cycles, failures)
'''

RACE_ROUNDS = 5


def _build_race_tree(src, round_no: int) -> None:
    victim = src / "victim"
    victim.mkdir(parents=True)
    for i in range(2000):
        (victim / f"small-{i:04d}").write_bytes(b"%d\n" % i)
    for i in range(4):
        (victim / f"big-{i}").write_bytes(random_bytes(MiB, seed=100 * round_no + i))
    (src / "before-victim").mkdir()
    (src / "before-victim" / "f").write_bytes(b"f")
    (src / "zz-after-victim").write_bytes(b"z")


def test_subdirectory_swapped_for_symlink_during_move_never_touches_the_symlink_target(ext4, tmpfs):
    """A racer (no shim) keeps replacing src/victim with a symlink to a
    sentinel directory outside the tree, and back, while the shim moves the
    tree across devices. Whatever the move's outcome, the sentinel keeps its
    entries, contents, modes and mtimes."""
    sentinel = ext4 / "sentinel"
    sentinel.mkdir()
    for i in range(5):
        (sentinel / f"precious-{i}").write_bytes(random_bytes(1000 + i, seed=200 + i))
    (sentinel / "inner").mkdir()
    (sentinel / "inner" / "deep-precious").write_bytes(b"deep")
    for p in [sentinel / "inner", sentinel]:
        os.utime(p, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    sentinel_before = listing(sentinel)

    outcomes = []
    for round_no in range(RACE_ROUNDS):
        pair = Pair(f"race-{round_no}", ext4 / f"src-{round_no}", tmpfs / f"dst-{round_no}", same_fs=False)
        pair.src_dir.mkdir()
        pair.dst_dir.mkdir()
        assert_cross_device(pair)
        src, dst = pair.src_dir / "tree", pair.dst_dir / "tree"
        _build_race_tree(src, round_no)

        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        racer = subprocess.Popen(
            [sys.executable, "-c", RACER, str(src / "victim"), str(sentinel), str(ready_w), str(stop_r)],
            pass_fds=(ready_w, stop_r), env=child_env(preload=False),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(ready_w)
        os.close(stop_r)
        try:
            assert os.read(ready_r, 1) == b"r", "racer died before completing a swap cycle"
            run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                            {"src": str(src), "dst": str(dst)})
        finally:
            os.close(stop_w)
            os.close(ready_r)
            out, err = racer.communicate(timeout=CHILD_TIMEOUT_S)
        assert racer.returncode == 0, f"racer failed: {err}"
        outcomes.append((run.result.get("errname") or "ok", out.strip()))

        # A symlink met in the tree is copied as a symlink: the sentinel's
        # files must never turn up in the destination as copies.
        copied = [p for p in listing(pair.dst_dir, contents=False) if b"precious" in p]
        assert not copied, (f"round {round_no}: the shim copied the symlink's target into the "
                            f"destination (followed the symlink): {copied}")

        assert_same_listing(sentinel_before, listing(sentinel), "sentinel before", "sentinel after",
                            f"round {round_no} (move result {run.result}): the sentinel was modified",
                            ignore=("atime_ns",))
    print("race outcomes (result, racer cycles/failures):", outcomes)


CWD_BODY = r'''
os.chdir(ARGS["cwd"])
r = attempt(os.rename, ARGS["src"], ARGS["dst"])
try:
    r["cwd"] = os.getcwd()
except OSError as e:
    r["cwd"] = "error: " + e.strerror
try:
    with open("probe.txt") as f:
        r["read"] = f.read()
except OSError as e:
    r["read"] = "error: " + e.strerror
try:
    with open("new.txt", "w") as f:
        f.write("written after the move")
    r["wrote"] = True
except OSError as e:
    r["wrote"] = "error: " + e.strerror
RESULTS.append(r)
'''


@pytest.mark.parametrize("where", ["root", "subdirectory", "outside"])
def test_the_movers_working_directory_follows_the_moved_tree_as_with_the_kernel(pair: Pair, where):
    """The kernel's rename keeps a working directory on the moved directory.
    The copy is elsewhere, so the shim takes the calling process's working
    directory there after the move (before, it was left in the deleted
    source: getcwd failed with ENOENT, relative opens failed); one outside
    the tree stays where it is."""
    src, dst = pair.src_dir / "tree", pair.dst_dir / "tree"
    (src / "a" / "b").mkdir(parents=True)
    rel = {"root": ".", "subdirectory": "a/b", "outside": ".."}[where]
    (src / rel / "probe.txt").write_text(f"probe in {where}")
    assert_exdev_without_shim(src, dst)
    r = run_child(CWD_BODY, {"src": str(src), "dst": str(dst), "cwd": str(src / rel)}).result
    assert r["ok"], r
    want = os.path.normpath(dst / rel) if where != "outside" else os.path.normpath(src / rel)
    assert r["cwd"] == want, r
    assert r["read"] == f"probe in {where}" and r["wrote"] is True, r
    assert (Path(want) / "new.txt").read_text() == "written after the move"
    assert not src.exists()


def test_a_failed_tree_move_leaves_the_working_directory_in_the_source(small_tmpfs, tmpfs):
    """ENOSPC on a 1 MiB destination: nothing moved, the working directory
    (inside the source) untouched."""
    src, dst = tmpfs / "tree", small_tmpfs / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "probe.txt").write_text("probe")
    (src / "big").write_bytes(random_bytes(2 * MiB, 7))
    r = run_child(CWD_BODY, {"src": str(src), "dst": str(dst), "cwd": str(src / "sub")}).result
    assert not r["ok"] and r["errname"] == "ENOSPC", r
    assert r["cwd"] == str(src / "sub") and r["read"] == "probe", r
    assert not dst.exists() and not leftovers(small_tmpfs)


LISTEN = r'''
import socket, sys, time
servers = []
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen()
    servers.append(s)
print("ready", flush=True)
sys.stdin.read()
'''


def test_a_socket_a_server_listens_on_is_never_moved_away_from_it(pair: Pair):
    """The kernel's rename keeps a server reachable at the new name; a copy
    is a new socket file no one listens on. So a socket file bound by a
    live server (alone, or inside a tree) gives EXDEV and nothing changes;
    once the server is gone, the stale socket files move as `mv` moves them
    (recreated as sockets)."""
    tree, single = pair.src_dir / "run", pair.src_dir / "single.sock"
    (tree / "sub").mkdir(parents=True)
    (tree / "data").write_text("data")
    sock = tree / "server.sock"
    server = subprocess.Popen([sys.executable, "-c", LISTEN, str(sock), str(single)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "ready\n"
        before = listing(pair.src_dir)
        for src in (tree, single):
            dst = pair.dst_dir / src.name
            assert_exdev_without_shim(src, dst)
            r = move_with("os.rename", src, dst)
            assert_errno(r, "EXDEV")
            assert not dst.exists() and not leftovers(pair.src_dir, pair.dst_dir)
        assert_same_listing(before, listing(pair.src_dir), "before", "after", "a refused move changed the source",
                            **FAILED_MOVE_IGNORE)
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock))  # still listening where it was
        c.close()
    finally:
        server.stdin.close()
        server.wait(timeout=CHILD_TIMEOUT_S)
    for src in (tree, single):
        assert_ok(move_with("os.rename", src, pair.dst_dir / src.name))
    assert stat.S_ISSOCK(os.lstat(pair.dst_dir / "run" / "server.sock").st_mode)
    assert stat.S_ISSOCK(os.lstat(pair.dst_dir / "single.sock").st_mode)
    assert (pair.dst_dir / "run" / "data").read_text() == "data" and not tree.exists()


ACCEPT_THEN_CLOSE_LISTENER = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[1])
conn, _ = s.accept()
s.close()  # no one listens any more; the accepted socket keeps the name
print("ready", flush=True)
sys.stdin.read()
'''


def test_a_socket_whose_listener_closed_moves_though_a_connection_it_accepted_lives_on(fs_pair: Pair):
    """An accepted connection carries its listener's name in the kernel's
    list, but no one can connect there any more: the stale socket file
    moves (session 10's hostile review found it refused)."""
    sock = fs_pair.src_dir / "s.sock"
    server = subprocess.Popen([sys.executable, "-c", ACCEPT_THEN_CLOSE_LISTENER, str(sock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "ready\n"
        assert_ok(move_with("os.rename", sock, fs_pair.dst_dir / "s.sock"))
        assert stat.S_ISSOCK(os.lstat(fs_pair.dst_dir / "s.sock").st_mode) and not sock.exists()
    finally:
        server.stdin.close()
        server.wait(timeout=CHILD_TIMEOUT_S)


def test_a_socket_a_server_listens_on_in_an_overlay_is_never_moved_away_from_it(mounts, tmpfs, ext4, tmp_path):
    """On overlayfs statx gives a file the device of its layer, while the
    kernel names a bound socket by the overlay's own device (as on btrfs,
    by the filesystem's rather than the subvolume's): the inode decides
    there (the review moved a bound socket out of an overlay whose upper
    layer is on another filesystem than its lower one)."""
    lower, upper, work, merged = tmpfs / "lower", ext4 / "upper", ext4 / "work", tmp_path / "merged"
    for d in (lower, upper, work):
        d.mkdir()
    ok, err = mounts.try_mount(["-t", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                                "xrename-ovl"], merged)
    need(ok, f"overlayfs mount failed: {err}")
    sock, dst = merged / "s.sock", tmpfs / "s.sock"
    server = subprocess.Popen([sys.executable, "-c", LISTEN, str(sock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "ready\n"
        assert_exdev_without_shim(sock, dst)
        assert_errno(move_with("os.rename", sock, dst), "EXDEV")
        assert not dst.exists()
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(sock))
        c.close()
    finally:
        server.stdin.close()
        server.wait(timeout=CHILD_TIMEOUT_S)
    assert_ok(move_with("os.rename", sock, dst))
    assert stat.S_ISSOCK(os.lstat(dst).st_mode)
