"""Real, unmodified programs that die with EXDEV today, run with the shim.

Each case first runs the program without the library and checks that it
really fails with "Invalid cross-device link" (so the case is a real one,
on real mounts), then runs it again, preloaded, on a fresh copy of the same
setup and checks what the program itself says about the result: git's own
view of a moved worktree or git directory, a Perl or Node.js rename of a
file and of a tree (also a directory of an overlayfs lower layer: the
Docker image case), Java's `Files.move` of a file with ATOMIC_MOVE and of a
non-empty directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from xrename_harness import Pair, child_env, need

EXDEV_TEXT = "cross-device link"


def run(argv, cwd=None, preload=True, env=None):
    e = child_env(env, preload=preload)
    return subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


def require(tool: str) -> str:
    path = shutil.which(tool)
    need(path is not None, f"{tool} is not installed (scripts/deps.sh installs it)")
    return path


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git(args, cwd, preload=False):
    return run([require("git"), *args], cwd=cwd, preload=preload, env=GIT_ENV)


def repo(at: Path) -> Path:
    """A repository with two commits and a nested tree of files."""
    at.mkdir()
    assert git(["init", "-q", "-b", "main"], at).returncode == 0
    (at / "src" / "deep").mkdir(parents=True)
    for i in range(30):
        (at / "src" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (at / "src" / "deep" / "x").write_text("x\n")
    assert git(["add", "-A"], at).returncode == 0
    assert git(["commit", "-qm", "one"], at).returncode == 0
    (at / "src" / "f0.txt").write_text("changed\n")
    assert git(["commit", "-qam", "two"], at).returncode == 0
    return at


def test_git_worktree_move_to_another_filesystem(pair: Pair):
    for attempt, preload in (("plain", False), ("shim", True)):
        main = repo(pair.src_dir / f"repo-{attempt}")
        wt, new = pair.src_dir / f"wt-{attempt}", pair.dst_dir / f"wt-{attempt}"
        assert git(["worktree", "add", "-q", str(wt)], main).returncode == 0
        moved = git(["worktree", "move", str(wt), str(new)], main, preload=preload)
        if not preload:
            assert moved.returncode != 0 and EXDEV_TEXT in moved.stderr, moved
            assert wt.is_dir() and not new.exists()
            continue
        assert moved.returncode == 0, moved.stderr
        assert not wt.exists()
        listed = git(["worktree", "list", "--porcelain"], main).stdout
        assert f"worktree {new}\n" in listed and f"worktree {wt}\n" not in listed
        status = git(["status", "--porcelain", "--untracked-files=all"], new)
        assert status.returncode == 0 and status.stdout == ""
        assert (new / "src" / "f0.txt").read_text() == "changed\n"
        assert git(["fsck", "--strict"], main).returncode == 0


def test_git_init_separate_git_dir_moves_the_repository_to_another_filesystem(pair: Pair):
    for attempt, preload in (("plain", False), ("shim", True)):
        work = repo(pair.src_dir / f"repo-{attempt}")
        head = git(["rev-parse", "HEAD"], work).stdout
        gitdir = pair.dst_dir / f"repo-{attempt}.git"
        r = git(["init", "-q", f"--separate-git-dir={gitdir}"], work, preload=preload)
        if not preload:
            assert r.returncode != 0 and EXDEV_TEXT in r.stderr, r
            assert (work / ".git").is_dir() and not gitdir.exists()
            continue
        assert r.returncode == 0, r.stderr
        assert (work / ".git").read_text() == f"gitdir: {gitdir}\n"
        assert git(["rev-parse", "HEAD"], work).stdout == head
        assert git(["status", "--porcelain"], work).stdout == ""
        assert git(["fsck", "--strict"], work).returncode == 0


def tree(at: Path) -> dict[str, bytes]:
    (at / "a" / "b").mkdir(parents=True)
    (at / "top").write_bytes(b"top\n")
    (at / "a" / "b" / "leaf").write_bytes(os.urandom(70_000))
    os.symlink("../top", at / "a" / "up")
    return contents(at)


def contents(at: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(at.rglob("*")):
        rel = str(p.relative_to(at))
        out[rel] = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"<dir>")
    return out


# Each prints "ok" or the error its language gives, for a file then a tree.
SCRIPTS = {
    "perl": (["perl", "-e", 'for my $i (0, 2) { if (rename($ARGV[$i], $ARGV[$i + 1])) { print "ok\\n" } '
              'else { print "$!\\n" } }']),
    "node": (["node", "-e", 'const fs = require("fs"); const a = process.argv.slice(1);'
              'try { fs.renameSync(a[0], a[1]); console.log("ok"); } catch (e) { console.log(e.message); }'
              'fs.promises.rename(a[2], a[3]).then(() => console.log("ok"), (e) => console.log(e.message));']),
}


@pytest.mark.parametrize("lang", list(SCRIPTS))
def test_perl_and_node_rename_a_file_and_a_tree_across_filesystems(pair: Pair, lang):
    argv = SCRIPTS[lang]
    require(argv[0])
    for attempt, preload in (("plain", False), ("shim", True)):
        f, t = pair.src_dir / f"file-{attempt}", pair.src_dir / f"tree-{attempt}"
        f.write_bytes(b"data\n" * 1000)
        want = tree(t)
        nf, nt = pair.dst_dir / f"file-{attempt}", pair.dst_dir / f"tree-{attempt}"
        r = run(argv + [str(f), str(nf), str(t), str(nt)], preload=preload)
        lines = r.stdout.split("\n")[:2]
        if not preload:
            assert all(EXDEV_TEXT in line for line in lines), r
            assert f.exists() and t.exists() and not nf.exists() and not nt.exists()
            continue
        assert r.returncode == 0 and lines == ["ok", "ok"], r
        assert not f.exists() and not t.exists()
        assert nf.read_bytes() == b"data\n" * 1000
        assert contents(nt) == want


@pytest.fixture
def overlay(mounts, ext4, tmp_path):
    """An overlayfs whose lower layer holds a directory tree (an image's
    layer); renaming that directory gives EXDEV (no redirect_dir)."""
    lower, upper, work, merged = (ext4 / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off"
    ok, err = mounts.try_mount(["-t", "overlay", "-o", opts, "xrename-ovl"], merged)
    need(ok, f"overlayfs mount failed: {err}")
    return lower, merged


@pytest.mark.parametrize("lang", list(SCRIPTS))
def test_perl_and_node_rename_a_directory_of_an_overlay_lower_layer(overlay, lang):
    lower, merged = overlay
    argv = SCRIPTS[lang]
    require(argv[0])
    for attempt, preload in (("plain", False), ("shim", True)):
        want = tree(lower / f"pkg-{attempt}")
        (lower / f"conf-{attempt}").write_bytes(b"conf\n")
        src, dst = merged / f"pkg-{attempt}", merged / f"pkg-{attempt}.old"
        # A lower-layer file is copied up by overlayfs itself: "ok" either way.
        fsrc, fdst = merged / f"conf-{attempt}", merged / f"conf-{attempt}.old"
        r = run(argv + [str(fsrc), str(fdst), str(src), str(dst)], preload=preload)
        lines = r.stdout.split("\n")[:2]
        if not preload:
            assert lines[0] == "ok" and EXDEV_TEXT in lines[1], r
            assert src.is_dir() and not dst.exists()
            continue
        assert r.returncode == 0 and lines == ["ok", "ok"], r
        assert not src.exists() and contents(dst) == want
        assert fdst.read_bytes() == b"conf\n"


JAVA = """
import java.nio.file.*;
public class Move {
    public static void main(String[] a) throws Exception {
        try {
            if (a[2].equals("atomic")) {
                Files.move(Paths.get(a[0]), Paths.get(a[1]), StandardCopyOption.ATOMIC_MOVE);
            } else {
                Files.move(Paths.get(a[0]), Paths.get(a[1]));
            }
            System.out.println("ok");
        } catch (AtomicMoveNotSupportedException e) {
            System.out.println("atomic move not supported: " + e.getReason());
        } catch (DirectoryNotEmptyException e) {
            System.out.println("directory not empty");
        }
    }
}
"""


@pytest.mark.parametrize("what", ["file, ATOMIC_MOVE", "tree"])
def test_java_files_move_across_filesystems(fs_pair: Pair, tmp_path, what):
    """A file with ATOMIC_MOVE (refused on EXDEV), and a non-empty directory
    without options (Java copies only an empty one itself on EXDEV)."""
    java = require("java")
    prog = tmp_path / "Move.java"
    prog.write_text(JAVA)
    for attempt, preload in (("plain", False), ("shim", True)):
        src, dst = fs_pair.src_dir / f"f-{attempt}", fs_pair.dst_dir / f"f-{attempt}"
        if what == "tree":
            want = tree(src)
        else:
            src.write_bytes(b"java\n" * 100)
        mode = "atomic" if what != "tree" else "plain"
        r = run([java, str(prog), str(src), str(dst), mode], preload=preload)
        if not preload:
            refusal = "directory not empty" if what == "tree" else "atomic move not supported"
            assert r.stdout.startswith(refusal), r
            assert what == "tree" or EXDEV_TEXT in r.stdout, r
            assert src.exists() and not dst.exists()
            continue
        assert r.returncode == 0 and r.stdout == "ok\n", r
        assert not src.exists()
        assert contents(dst) == want if what == "tree" else dst.read_bytes() == b"java\n" * 100
