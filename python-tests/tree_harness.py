"""Helpers for directory-tree tests: a seeded tree builder and a canonical,
atime-safe listing of a tree, with a readable diff between two listings.

Paths are bytes throughout (the trees contain a newline and non-UTF-8 names).

atime safety: directories are listed through fds opened with O_NOATIME, every
entry is lstat'ed in a first pass, and only then are symlinks read and file
contents hashed (readlink and read update atime): files are read with
O_NOATIME, and a symlink's times are put back after readlink.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import stat
import subprocess
from dataclasses import dataclass, field

from xrename_harness import MiB, PRIVILEGED, need

# The allocated size of a sparse file may differ a little between two copies
# (fs bookkeeping); anything more means a hole was filled.
SPARSE_ALLOC_TOLERANCE = 64 * 1024

FOREIGN_UID, FOREIGN_GID = 1234, 5678
TEMP_PREFIX = b".xrename-"

_TYPES = {
    stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock",
}


def make_chain(tree, depth: int, files: int, prefix: str = "level") -> None:
    """A chain of `depth` nested directories under `tree`, each with
    `files` small files (for the descriptor-limit tests)."""
    d = tree
    for i in range(depth):
        d = d / f"{prefix}{i}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"f{j}").write_bytes(b"%d/%d" % (i, j))


def type_name(st: os.stat_result) -> str:
    return _TYPES.get(stat.S_IFMT(st.st_mode), f"?{stat.S_IFMT(st.st_mode):o}")


def b(p) -> bytes:
    return os.fsencode(p)


def join(root: bytes, rel: bytes) -> bytes:
    return root if rel == b"." else root + b"/" + rel


# --------------------------------------------------------------------------
# atime-safe opening
# --------------------------------------------------------------------------

def open_noatime(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
        return os.open(path, flags)


def list_dir_noatime(path: bytes) -> list[bytes]:
    fd = open_noatime(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return sorted(os.fsencode(n) for n in os.listdir(fd))
    finally:
        os.close(fd)


def sha256_noatime(path: bytes) -> str:
    h = hashlib.sha256()
    fd = open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, 4 * MiB):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def read_xattrs(path: bytes):
    """All xattrs (name -> hex value) without following symlinks, or a
    marker string when the filesystem refuses to list them on this object."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        return f"<listxattr: {errno.errorcode.get(e.errno, e.errno)}>"
    return {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in sorted(names)}


# --------------------------------------------------------------------------
# canonical listing
# --------------------------------------------------------------------------

def walk_paths(root: bytes) -> list[bytes]:
    """Every relative path under root (b"." for root), listed via O_NOATIME."""
    out = [b"."]
    stack = [b"."]
    while stack:
        rel = stack.pop()
        for name in list_dir_noatime(join(root, rel)):
            child = name if rel == b"." else rel + b"/" + name
            out.append(child)
            if stat.S_ISDIR(os.lstat(join(root, child)).st_mode):
                stack.append(child)
    return sorted(out)


def listing(root, *, contents: bool = True) -> dict[bytes, dict]:
    """Canonical listing of the tree at root: relpath -> comparable record.

    Records hold type, mode, uid, gid, nlink (non-directories), size (regular
    files and symlinks), mtime_ns, atime_ns, xattrs, symlink target, rdev,
    hard-link group, sparseness and sha256. "_alloc" (allocated bytes of
    regular files) is compared with a tolerance by `diff_listings`.
    """
    root = b(root)
    paths = walk_paths(root)
    stats = {rel: os.lstat(join(root, rel)) for rel in paths}  # pass 1: lstat only
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    recs = {}
    for rel, st in stats.items():
        t = type_name(st)
        r = {
            "type": t,
            "mode": oct(stat.S_IMODE(st.st_mode)),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "atime_ns": st.st_atime_ns,
        }
        if t != "dir":
            r["nlink"] = st.st_nlink
            group = inodes.get((st.st_dev, st.st_ino))
            r["hardlinks"] = tuple(sorted(group)) if group else None
        if t in ("file", "symlink"):
            r["size"] = st.st_size
        if t == "file":
            r["sparse"] = st.st_blocks * 512 < st.st_size
            r["_alloc"] = st.st_blocks * 512
        if t in ("chr", "blk"):
            r["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        recs[rel] = r
    # pass 2: things that may touch atime (listxattr does not, readlink and
    # read do) -- only after every lstat above.
    for rel, r in recs.items():
        p = join(root, rel)
        r["xattrs"] = read_xattrs(p)
        if r["type"] == "symlink":
            r["target"] = os.readlink(p)
            # readlink updated the link's atime: put it back, so listing a
            # source tree does not change what a move then copies.
            st = stats[rel]
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        if r["type"] == "file" and contents:
            r["sha256"] = sha256_noatime(p)
    return recs


def _fmt(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {x[:40] + '...' if len(x) > 40 else x}" for k, x in v.items()) + "}"
    return repr(v)


def diff_listings(a: dict, b_: dict, la: str = "expected", lb: str = "actual",
                  ignore: tuple[str, ...] = (), ignore_root: tuple[str, ...] = ()) -> list[str]:
    """Readable differences between two listings (empty when equal).

    `ignore` fields are skipped everywhere, `ignore_root` only for b".".
    """
    out = []
    for rel in sorted(set(a) | set(b_)):
        if rel not in b_:
            out.append(f"{rel!r}: only in {la} ({a[rel]['type']})")
            continue
        if rel not in a:
            out.append(f"{rel!r}: only in {lb} ({b_[rel]['type']})")
            continue
        ra, rb = a[rel], b_[rel]
        skip = set(ignore) | (set(ignore_root) if rel == b"." else set())
        for k in sorted(set(ra) | set(rb)):
            if k in skip:
                continue
            va, vb = ra.get(k, "<absent>"), rb.get(k, "<absent>")
            if k == "_alloc":
                if isinstance(va, int) and isinstance(vb, int) and abs(va - vb) > SPARSE_ALLOC_TOLERANCE:
                    out.append(f"{rel!r}: allocated bytes differ by more than "
                               f"{SPARSE_ALLOC_TOLERANCE}: {la}={va} {lb}={vb}")
                continue
            if va != vb:
                out.append(f"{rel!r}: {k}: {la}={_fmt(va)} {lb}={_fmt(vb)}")
    return out


def assert_same_listing(a: dict, b_: dict, la: str, lb: str, what: str, **kw) -> None:
    d = diff_listings(a, b_, la, lb, **kw)
    assert not d, f"{what}: {len(d)} difference(s)\n  " + "\n  ".join(d)


def leftovers(*dirs) -> list[bytes]:
    """Hidden xrename temp entries anywhere under the given directories."""
    found = []
    for d in dirs:
        d = b(d)
        if not os.path.isdir(d):
            continue
        for rel in walk_paths(d):
            if os.path.basename(rel).startswith(TEMP_PREFIX):
                found.append(join(d, rel))
    return found


# --------------------------------------------------------------------------
# tree builder
# --------------------------------------------------------------------------

def bind_socket(path: bytes) -> None:
    """Create a socket file at path (chdir so long paths fit in sun_path)."""
    parent, name = os.path.split(path)
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.chdir(parent)
        s.bind(name)
    finally:
        s.close()
        os.fchdir(old)
        os.close(old)


def set_user_xattr(path: bytes, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as e:
        need(e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP),
             f"filesystem of {path!r} does not support user.* xattrs")
        raise


def setfacl(*args) -> None:
    proc = subprocess.run(["setfacl", *[os.fsdecode(a) if isinstance(a, bytes) else a for a in args]],
                          capture_output=True, text=True)
    need(proc.returncode == 0, f"setfacl {' '.join(map(str, args))} failed: {proc.stderr.strip()}")


@dataclass
class Tree:
    root: bytes
    paths: list[bytes] = field(default_factory=list)  # every relpath, "." included
    sparse: bytes = b""
    bottom_of_nesting: bytes = b""


SPARSE_SIZE = 4 * MiB
BLOCK = 4096
WEIRD_NAMES = [b"with space", b"new\nline", b"non-utf8-\xff\xfe\x80"]


def build_full_tree(root, seed: int, privileged: bool = PRIVILEGED) -> Tree:
    """Build the seeded tree of every object type at root (must not exist).

    Deterministic for a given seed: two builds differ only in inode numbers.
    Root-only parts (device node, foreign owners, foreign-uid ACLs) are built
    only when `privileged`.
    """
    rng = random.Random(seed)
    root = b(root)
    t = Tree(root)
    p = lambda rel: join(root, rel)  # noqa: E731

    def mkdir(rel, mode=0o755):
        os.mkdir(p(rel))
        os.chmod(p(rel), mode)
        t.paths.append(rel)

    def mkfile(rel, data, mode=0o644):
        with open(p(rel), "wb") as f:
            f.write(data)
        os.chmod(p(rel), mode)
        t.paths.append(rel)

    os.mkdir(root)
    os.chmod(root, 0o755)
    t.paths.append(b".")

    # directories: empty, nested 4 levels, odd names
    mkdir(b"empty")
    mkdir(b"files")
    mkdir(b"a")
    mkdir(b"a/b")
    mkdir(b"a/b/c")
    mkdir(b"a/b/c/d")
    mkdir(b"a/b/c/d/empty-deep")
    t.bottom_of_nesting = b"a/b/c/d"
    mkdir(b"links")
    mkdir(b"special")
    mkdir(b"setgid", 0o2775)
    if privileged:  # a foreign group for the setgid dir to hand down
        os.chown(p(b"setgid"), 0, FOREIGN_GID)
        os.chmod(p(b"setgid"), 0o2775)
    os.mkdir(p(b"setgid/inherits-setgid"))  # no chmod: keeps the inherited bit
    t.paths.append(b"setgid/inherits-setgid")
    mkdir(b"sticky", 0o1777)
    mkdir(b"private", 0o700)
    for name in WEIRD_NAMES:
        mkdir(b"dir " + name)

    # regular files of awkward sizes, seeded content
    for size in (0, 1, 4095, 4096, MiB + 3):
        mkfile(b"files/size-%d" % size, rng.randbytes(size))
    mkfile(b"a/b/c/d/deep.txt", b"at the bottom\n" + rng.randbytes(100))
    mkfile(b"a/b/mid.bin", rng.randbytes(5000))
    mkfile(b"files/mode-0600", rng.randbytes(10), 0o600)
    mkfile(b"files/mode-0755", rng.randbytes(10), 0o755)
    mkfile(b"setgid/inherits-gid", rng.randbytes(10))
    mkfile(b"sticky/in-sticky", rng.randbytes(10))
    for name in WEIRD_NAMES:
        mkfile(b"files/" + name, rng.randbytes(rng.randrange(1, 300)))
        mkfile(b"dir " + name + b"/inside " + name, rng.randbytes(7))

    # sparse: 4 MiB apparent, two 4 KiB data blocks
    t.sparse = b"files/sparse.img"
    fd = os.open(p(t.sparse), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, rng.randbytes(BLOCK), 0)
        os.pwrite(fd, rng.randbytes(BLOCK), SPARSE_SIZE - BLOCK)
    finally:
        os.close(fd)
    t.paths.append(t.sparse)

    # hard-link pair, two names in different subdirectories
    mkfile(b"files/hardlink-one", rng.randbytes(3000))
    os.link(p(b"files/hardlink-one"), p(b"a/b/hardlink-two"))
    t.paths.append(b"a/b/hardlink-two")

    # symlinks: to a file, to a directory, dangling, with an odd name
    for rel, target in [(b"links/to-file", b"../files/size-4096"),
                        (b"links/to-dir", b"../a/b"),
                        (b"links/dangling", b"../does/not/exist"),
                        (b"links/weird \xff\n", b"target with \xfe and \n")]:
        os.symlink(target, p(rel))
        t.paths.append(rel)

    # fifo, socket, device node
    os.mkfifo(p(b"special/fifo"))
    os.chmod(p(b"special/fifo"), 0o640)
    t.paths.append(b"special/fifo")
    bind_socket(p(b"special/socket"))
    os.chmod(p(b"special/socket"), 0o755)
    t.paths.append(b"special/socket")
    if privileged:
        os.mknod(p(b"special/null-chr"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(p(b"special/null-chr"), 0o620)
        t.paths.append(b"special/null-chr")

    # user.* xattrs on files and directories
    for rel in (b"files/size-1", b"files/mode-0600", b"a/b/c", b".", b"empty", b"setgid/inherits-setgid"):
        set_user_xattr(p(rel), "user.xrename.seed", b"%d" % seed)
        set_user_xattr(p(rel), "user.xrename.bin", rng.randbytes(rng.randrange(0, 200)))

    # ACL on a file, default ACL on a directory (then a file inside inherits)
    if privileged:
        setfacl("-m", "u:1234:rw", p(b"files/size-4095"))
        setfacl("-d", "-m", "u:1234:rwx", p(b"a/b/c"))
        mkfile(b"a/b/c/after-default-acl", rng.randbytes(20), 0o640)

    # foreign owners (a symlink among them); chown clears setuid, so it
    # comes before the setuid chmod
    if privileged:
        for rel in (b"files/size-0", b"links/to-dir", b"links/dangling", b"special/fifo",
                    b"special/socket", b"special/null-chr", b"a/b", b"private", b"files/setuid"):
            if rel == b"files/setuid":
                mkfile(rel, rng.randbytes(64))
            os.lchown(p(rel), FOREIGN_UID, FOREIGN_GID)
    else:
        mkfile(b"files/setuid", rng.randbytes(64))
    os.chmod(p(b"files/setuid"), 0o4755)

    # times, in the past, ns precision: everything but directories first,
    # then directories deepest first (children never touch parent times here)
    def past_ns():
        return rng.randrange(10**9 * 900_000_000, 10**9 * 1_500_000_000)

    rels = sorted(set(t.paths))
    for rel in rels:
        if not stat.S_ISDIR(os.lstat(p(rel)).st_mode):
            os.utime(p(rel), ns=(past_ns(), past_ns()), follow_symlinks=False)
    for rel in sorted((r for r in rels if stat.S_ISDIR(os.lstat(p(r)).st_mode)),
                      key=lambda r: (-r.count(b"/") if r != b"." else 1, r)):
        os.utime(p(rel), ns=(past_ns(), past_ns()), follow_symlinks=False)
    t.paths = rels
    return t


def build_small_tree(root, seed: int) -> Tree:
    """A small tree (nested dirs, files, a symlink, a hard link, xattr, past
    times) for the move/error tests."""
    rng = random.Random(seed)
    root = b(root)
    t = Tree(root)
    p = lambda rel: join(root, rel)  # noqa: E731
    os.mkdir(root)
    for d in (b"sub", b"sub/deeper", b"sub/deeper/deepest", b"empty"):
        os.mkdir(p(d))
    files = {b"top.txt": rng.randbytes(100), b"sub/mid.bin": rng.randbytes(70_000),
             b"sub/deeper/deepest/leaf": rng.randbytes(10), b"sub/deeper/zero": b""}
    for rel, data in files.items():
        with open(p(rel), "wb") as f:
            f.write(data)
    os.link(p(b"top.txt"), p(b"sub/top-link"))
    os.symlink(b"../top.txt", p(b"sub/rel-link"))
    os.chmod(p(b"sub/deeper"), 0o750)
    try:
        os.setxattr(p(b"sub"), "user.tree", b"small")
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    t.paths = walk_paths(root)
    for rel in t.paths:
        if not stat.S_ISDIR(os.lstat(p(rel)).st_mode):
            os.utime(p(rel), ns=(rng.randrange(10**18, 2 * 10**18),) * 2, follow_symlinks=False)
    for rel in sorted((r for r in t.paths if stat.S_ISDIR(os.lstat(p(r)).st_mode)),
                      key=lambda r: (-r.count(b"/") if r != b"." else 1, r)):
        os.utime(p(rel), ns=(rng.randrange(10**18, 2 * 10**18),) * 2)
    return t
