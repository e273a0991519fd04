"""System calls per file of a tree move (issue 15's diet), counted with
`strace -c -f` so that they cannot silently grow: a 1,000-file tree (0-1
KiB files in 10 directories) moves tmpfs -> ext4 under the shim (a small C
program calling rename()). The counts are printed (`pytest -s`, and in the
failure message)."""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

import fault_harness as fh
from xrename_harness import LIBRARY, child_env, need

PER_DIR = 100  # files in each directory
# Issue 15's target is 15 on the 1,000-file tree; measured 14.8 (the writer
# probe: open, two F_SETLEASE, and one close_range a batch). Also under a
# descriptor limit of 64, where the probe takes few files at a time (more
# children): measured 15.2, not the case.
CASES = {"1000-files": (1000, None, 15.0), "1000-files-nofile-64": (1000, 64, 15.6)}



def traced(child: Path, src: Path, dst: Path, strace_args: list[str], env: dict[str, str] | None = None,
           nofile: int | None = None) -> subprocess.CompletedProcess:
    """The C child moving `src` to `dst` under `strace -f` with
    `strace_args`, the library preloaded in the child only (not in strace),
    with `env` added and at most `nofile` descriptors."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))) if nofile else None
    return subprocess.run(["strace", "-f", *strace_args, "-E", f"LD_PRELOAD={LIBRARY}", "--",
                           str(child), str(src), str(dst)],
                          capture_output=True, text=True, env=child_env(env, preload=False), preexec_fn=limit)

def make_tree(root: Path, files: int) -> None:
    rng = random.Random(15)
    for d in range(files // PER_DIR):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(PER_DIR):
            (root / f"d{d}" / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 1024)))


def counts(summary: str) -> dict[str, int]:
    out = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            out[parts[-1]] = int(parts[3])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_tree_move_makes_few_system_calls_per_file(tmpfs, ext4, tmp_path, case):
    files, nofile, most = CASES[case]
    need(shutil.which("strace") is not None, "strace missing")
    child = fh.build_child()
    src, dst = tmpfs / "tree", ext4 / "tree"
    make_tree(src, files)
    fh.age(tmpfs)  # no racy compares: the calls every move makes
    summary = tmp_path / "summary.txt"
    proc = traced(child, src, dst, ["-c", "-o", str(summary)], nofile=nofile)
    assert proc.returncode == 0, proc.stderr
    assert not src.exists() and sum(1 for _ in dst.rglob("f*")) == files
    c = counts(summary.read_text())
    total = sum(c.values())
    table = "\n".join(f"  {n:>7} {n / files:6.2f}/file  {name}" for name, n in sorted(c.items(), key=lambda x: -x[1]))
    report = f"{total} calls, {total / files:.2f} per file ({files} files):\n{table}"
    print(report)
    assert total / files <= most, report
    # The decisions made once per move, not per file:
    assert c.get("copy_file_range", 0) <= 8, report  # the data route (once per thread at most)
    assert c.get("lseek", 0) <= 2 * files // PER_DIR, report  # no SEEK_DATA/SEEK_HOLE for files without holes
    assert c.get("fremovexattr", 0) == 0, report  # the destination has no default ACL
    assert c.get("fchmod", 0) + c.get("fchown", 0) <= 4 * files // PER_DIR, report  # created as they must end


def test_a_tree_moved_into_a_default_acl_directory_inherits_nothing(fs_pair):
    """The diet asks once per move whether the destination directory has a
    default ACL; when it has, every new object of the copy is cleared of
    what it inherited: each entry ends with exactly the source's ACLs."""
    from xrename_harness import PRIVILEGED, run_child
    need(shutil.which("setfacl") is not None and shutil.which("getfacl") is not None, "acl tools missing")
    p = fs_pair
    acl = subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(p.dst_dir)], capture_output=True, text=True)
    need(acl.returncode == 0, f"no ACLs on {p.name}: {acl.stderr.strip()}")
    tree = p.src_dir / "tree"
    (tree / "sub" / "own").mkdir(parents=True)
    (tree / "f").write_text("f")
    (tree / "sub" / "g").write_text("g")
    os.mkfifo(tree / "sub" / "fifo")
    subprocess.run(["setfacl", "-d", "-m", "u:4321:r", str(tree / "sub" / "own")], check=True)
    (tree / "sub" / "own" / "h").write_text("h")  # inherits u:4321 in the source: kept

    def acls(root: Path) -> dict[str, str]:
        out = {}
        for q in sorted([root, *root.rglob("*")]):
            text = subprocess.run(["getfacl", "-c", "-p", str(q)], capture_output=True, text=True).stdout
            out[str(q.relative_to(root))] = text
        return out

    before = acls(tree)
    run = run_child("RESULTS.append(attempt(os.rename, ARGS['src'], ARGS['dst']))",
                    {"src": str(tree), "dst": str(p.dst_dir / "tree")})
    assert run.result["ok"], run.result
    after = acls(p.dst_dir / "tree")
    assert after == before, {k: (before.get(k), after.get(k)) for k in after if after.get(k) != before.get(k)}


def segments(path: Path) -> list[tuple[int, int]]:
    """The data segments of a file, as SEEK_DATA/SEEK_HOLE report them."""
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def test_holes_are_kept_when_blocks_are_no_proof(ext4, tmpfs):
    """A file may have as many blocks as its size and still holes: space
    reserved past its end (fallocate --keep-size), or an xattr block
    counted with its data (ext4). Its holes are kept all the same."""
    from xrename_harness import run_child
    a = ext4 / "reserved"
    with open(a, "wb") as f:
        f.truncate(1 << 20)
        f.seek(255 * 4096)
        f.write(os.urandom(4096))
    r = subprocess.run(["fallocate", "-n", "-o", str(1 << 20), "-l", str(2 << 20), str(a)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    b = ext4 / "xattr-block"
    with open(b, "wb") as f:
        f.truncate(8192)
        f.seek(4096)
        f.write(os.urandom(4096))
    os.setxattr(b, "user.big", b"x" * 900)
    for src in (a, b):
        st = os.stat(src)
        assert st.st_blocks * 512 >= st.st_size, f"test setup: {src.name} must not look sparse"
        want, data = segments(src), src.read_bytes()
        dst = tmpfs / src.name
        run = run_child("RESULTS.append(attempt(os.rename, ARGS['src'], ARGS['dst']))",
                        {"src": str(src), "dst": str(dst)})
        assert run.result["ok"], run.result
        assert dst.read_bytes() == data and segments(dst) == want, (src.name, segments(dst), want)


def test_raw_xfs_acl_attributes_are_not_copied(mounts, tmp_path, tmpfs):
    """As root, XFS lists its ACLs also as trusted.SGI_ACL_*; mv skips
    those (/etc/xattr.conf). Copied to tmpfs and back, a revoked ACL would
    come back on XFS and grant access again."""
    from conftest import loop_fs
    from xrename_harness import PRIVILEGED, run_child
    need(PRIVILEGED, "trusted.* needs root")
    need(shutil.which("setfacl") is not None, "acl tools missing")
    xfs = loop_fs(mounts, tmp_path, "xfs")
    f = xfs / "f"
    f.write_bytes(b"secret")
    subprocess.run(["setfacl", "-m", "u:65534:rw", str(f)], check=True)

    def move(src: Path, dst: Path) -> None:
        run = run_child("RESULTS.append(attempt(os.rename, ARGS['src'], ARGS['dst']))", {"src": str(src), "dst": str(dst)})
        assert run.result["ok"], run.result

    move(f, tmpfs / "f")
    assert not [n for n in os.listxattr(tmpfs / "f") if n.startswith("trusted.SGI_")], os.listxattr(tmpfs / "f")
    subprocess.run(["setfacl", "-b", str(tmpfs / "f")], check=True)
    os.chmod(tmpfs / "f", 0o640)
    move(tmpfs / "f", xfs / "back")
    facl = subprocess.run(["getfacl", "-c", "-p", str(xfs / "back")], capture_output=True, text=True).stdout
    assert "65534" not in facl and "nobody" not in facl and "mask" not in facl, facl


def test_a_setgid_destination_gives_its_group_where_the_owner_cannot_keep_his_own(fs_pair, tmp_path):
    """A user (uid/gid 1000, not in group 65534) moves a tree whose files
    belong to group 65534 into a setgid directory of group 65534. mv's
    files take the directory's group (the user cannot chown to a group he
    is not in); xrename's copy must too, not the user's own group: its
    private temp directory keeps the set-group-ID bit it inherited."""
    from xrename_harness import LIBRARY, PRIVILEGED
    need(PRIVILEGED, "needs root to set up other users' files")
    need(shutil.which("setpriv") is not None, "setpriv missing")
    p = fs_pair
    for d in (p.src_dir, p.dst_dir):
        os.chown(d, 1000, 1000)
    target = p.dst_dir / "sgid"
    target.mkdir()
    os.chown(target, 1000, 65534)
    os.chmod(target, 0o2775)

    def make(root: Path) -> None:
        (root / "sub").mkdir(parents=True)
        for q in (root / "f", root / "sub" / "g"):
            q.write_text(q.name)
        for q in (root, root / "sub", root / "f", root / "sub" / "g"):
            os.chown(q, 1000, 65534)

    def groups(root: Path) -> dict[str, int]:
        return {str(q.relative_to(root)): os.lstat(q).st_gid for q in sorted(root.rglob("*")) if not q.is_dir()}

    from test_trace import searchable_for_all
    as_user = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--"]
    child = fh.build_child()
    with searchable_for_all(p.src_dir, p.dst_dir, child):
        make(p.src_dir / "by-mv")
        r = subprocess.run([*as_user, "mv", str(p.src_dir / "by-mv"), str(target / "by-mv")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        make(p.src_dir / "by-xrename")
        r = subprocess.run([*as_user, str(child), str(p.src_dir / "by-xrename"), str(target / "by-xrename")],
                           capture_output=True, text=True, env=child_env())
        assert r.returncode == 0 and r.stdout.split() == ["0", "1"], (r.stdout, r.stderr)
    want, got = groups(target / "by-mv"), groups(target / "by-xrename")
    assert want == {"f": 65534, "sub/g": 65534}, want
    assert got == want, f"mv: {want}, xrename: {got}"


def test_a_tree_move_holds_few_descriptors_in_the_programs_table(tmpfs, ext4, tmp_path):
    """However many files a tree has and however many descriptors the
    program may open, the move holds few of them at once: the copying
    threads two files each, the walk its directories, the writer probe's
    child up to 64 files (closed in runs by `close_range`) and the
    directories of one batch (up to 32). A program thread opening a file
    meanwhile gets a low number (glibc aborts a `select` given one of 1,024
    or more). `strace -f` reports every descriptor the program's threads
    and the probe's child (sharing their table) are given."""
    need(shutil.which("strace") is not None, "strace missing")
    files, nofile = 600, 8192
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need(hard >= nofile, f"a descriptor limit of {nofile} cannot be had (hard limit {hard})")
    child = fh.build_child()
    src, dst = tmpfs / "tree", ext4 / "tree"
    make_tree(src, files)
    trace = tmp_path / "trace"
    proc = traced(child, src, dst, ["-e", "trace=openat,close_range", "-o", str(trace)], nofile=nofile)
    assert proc.returncode == 0, proc.stderr
    assert not src.exists() and sum(1 for _ in dst.rglob("f*")) == files
    text = trace.read_text()
    given = [re.search(r"= (\d+)$", line) for line in text.splitlines() if "openat" in line]
    highest = max(int(m.group(1)) for m in given if m)
    ranges = len(re.findall(r"close_range\(", text))
    print(f"highest descriptor {highest}, {ranges} close_range calls")
    assert highest < 128 + 64, highest
    assert ranges >= files // 64, "the probe's child closes its files in runs with close_range"


def test_the_probes_descriptors_are_closed_where_close_range_is_refused(tmpfs, ext4, tmp_path):
    """An older kernel or a seccomp filter refuses close_range (ENOSYS
    injected here): the probe's batches are closed one by one, none is
    left open. Each file is opened three times (copy, new file, probe) and
    so closed three times."""
    need(shutil.which("strace") is not None, "strace missing")
    files = 300
    child = fh.build_child()
    src, dst = tmpfs / "tree", ext4 / "tree"
    make_tree(src, files)
    summary = tmp_path / "summary.txt"
    proc = traced(child, src, dst, ["-c", "-o", str(summary), "-e", "inject=close_range:error=ENOSYS"])
    assert proc.returncode == 0, proc.stderr
    assert not src.exists() and sum(1 for _ in dst.rglob("f*")) == files
    c = counts(summary.read_text())
    assert c.get("close_range", 0) >= 1, c
    assert c.get("close", 0) >= 3 * files, c


def _small_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        (root / f"f{i}").write_bytes(b"f%d" % i)
        (root / "sub" / f"g{i}").write_bytes(b"g%d" % i)


def test_the_probe_waits_for_a_descriptor_after_the_install(tmpfs, ext4, tmp_path):
    """The writer probe opens the taken tree's directories after the copy
    was installed (and its child the files in them): a moment without free
    descriptors there (another thread of the program holding them all;
    EMFILE injected into the walk's first six opens after the take) is
    waited out, and the move completes (before, the probe gave up after
    three tries and the move failed half undone: the withdrawal had no
    descriptors either; a hostile review saw EXDEV with the source put back
    and the whole copy left at the destination). One thread, so that
    strace's count of openat calls finds that open in a second, identical
    run. (strace counts calls per process: the injection cannot single out
    the probe child's opens of the files, whose EMFILE the walk waits out
    the same way, `probe_one`.)"""
    need(shutil.which("strace") is not None, "strace missing")
    child = fh.build_child()

    def run(tag: str, inject: list[str]) -> tuple[subprocess.CompletedProcess, str]:
        src, dst = tmpfs / tag, ext4 / tag
        _small_tree(src)
        trace = tmp_path / f"{tag}.trace"
        proc = traced(child, src, dst, ["-e", "trace=openat,renameat2", *inject, "-o", str(trace)],
                      {"XRENAME_THREADS": "1"})
        return proc, trace.read_text()

    proc, text = run("plain", [])
    assert proc.returncode == 0, proc.stderr
    opens = 0
    for line in text.splitlines():
        if "openat(" in line:
            opens += 1
        if re.search(r'renameat2\(\d+, "plain", \d+, "\.xrename-', line):
            break
    else:
        pytest.fail("the take was not seen:\n" + text)
    first_after_take = opens + 1
    proc, text = run("tree", ["-e", f"inject=openat:error=EMFILE:when={first_after_take}..{first_after_take + 5}"])
    assert "EMFILE (Too many open files) (INJECTED)" in text, text
    assert proc.returncode == 0, proc.stderr
    assert not (tmpfs / "tree").exists()
    assert sorted(p.name for p in (ext4 / "tree").rglob("*")) == sorted(
        [*(f"f{i}" for i in range(10)), "sub", *(f"g{i}" for i in range(10))])
    assert not [p for p in (*tmpfs.iterdir(), *ext4.iterdir()) if p.name.startswith(".xrename-")]
