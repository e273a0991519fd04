"""The supervisor (`xrename -- CMD`, traced) under libraries that
virtualise the filesystem (issue 11, 2).

fakeroot keeps fake owners and device nodes in its daemon, fakechroot
translates paths: the helper's raw syscalls see neither. For each traced
process, at its EXDEV, the supervisor reads the objects it has loaded
(/proc/PID/maps): with one of those libraries the kernel's EXDEV stands,
the log names the library, and the program (mv) copies through it as it
would without xrename. libeatmydata and libfaketime change neither paths
nor owners: under them the supervisor still moves. Every case runs on a
real cross-device pair (tmpfs -> ext4), with the virtualiser around
xrename (`fakeroot sh -c 'xrename -- mv ...'`: loaded in the supervisor
and the program) and inside it (`xrename -- fakeroot ...`: loaded in a
descendant only).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from cli_harness import XRENAME, compile_c, describe, run, xrename_env
from xrename_harness import need

# rename(argv[1], argv[2]); prints "ok" or the errno's name.
RENAME_PROG = r'''
#include <errno.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    if (rename(argv[1], argv[2]) == 0) { printf("ok\n"); return 0; }
    printf("%s\n", errno == EXDEV ? "EXDEV" : strerror(errno));
    return 1;
}
'''

NOTE = "virtualises the filesystem: moves under it are left to the program (EXDEV)"
STEP = "another library virtualises the filesystem: "


def lib_path(*candidates: str) -> str:
    found = next((c for c in candidates if os.path.exists(c)), None)
    need(found is not None, f"none of {candidates} installed (scripts/deps.sh)")
    return str(found)


def libfakechroot() -> str:
    return lib_path("/usr/lib/x86_64-linux-gnu/fakechroot/libfakechroot.so", "/usr/lib/fakechroot/libfakechroot.so")


HARMLESS = {
    "eatmydata": ("/usr/lib/x86_64-linux-gnu/libeatmydata.so", "/usr/lib/libeatmydata.so"),
    "faketime": ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"),
}


@pytest.fixture(scope="module")
def prog(tmp_path_factory) -> Path:
    """A dynamic program, so that a preloaded library is loaded in it."""
    return compile_c(tmp_path_factory.mktemp("virt-progs"), RENAME_PROG, "rename1")


def log_lines(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def assert_stepped_aside(log: Path, lib: str, count: int) -> None:
    lines = log_lines(log)
    assert len(lines) == count, lines
    for line in lines:
        assert line["via"] == "trace" and line["result"] == "EXDEV", line
        assert line["step"].startswith(STEP + lib), line


# --------------------------------------------------------------------------
# fakeroot: mv must give faked's view what plain mv gives it
# --------------------------------------------------------------------------

def fakeroot_mv(src: Path, dst: Path, mv: str, outer: tuple = (), options: tuple = ()) -> str:
    """A fake device node and a file chowned to 1234:5678, made in `src`
    under fakeroot (run by `outer`, if given) and moved to `dst` by `mv`
    (a command line); returns what fakeroot shows of `dst` afterwards
    (name, type, owner, device numbers, size) and what is left in `src`."""
    script = (f'set -e; cd "{src}"; mknod dev c 1 3; echo data > f; chown 1234:5678 f; {mv} dev f "{dst}/"; '
              f'cd "{dst}"; stat -c "%n %F %u:%g %t:%T %s" dev f; ls -A "{src}"')
    proc = run([*outer, "fakeroot", *options, "sh", "-c", script])
    assert proc.returncode == 0, describe(proc)
    return proc.stdout


def real_view(d: Path) -> list[tuple]:
    out = []
    for name in sorted(os.listdir(d)):
        st = os.lstat(d / name)
        out.append((name, stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_rdev))
    return out


@pytest.mark.parametrize("where", ["fakeroot-around-xrename", "xrename-around-fakeroot"])
def test_under_fakeroot_traced_mv_keeps_fake_nodes_and_owners_as_plain_mv_does(fs_pair, tmp_path, where):
    """Around: `fakeroot sh -c '... xrename -- mv dev f DST/'` (the
    supervisor itself runs under fakeroot, and says so). Inside:
    `xrename -- fakeroot sh -c '... mv dev f DST/'` (only a descendant has
    libfakeroot). Either way faked sees a character device 1:3 and a file
    owned by 1234:5678 at the destination, exactly what plain mv under
    fakeroot gives, and the real view is the same too: the supervisor left
    each EXDEV to mv and logged the library."""
    need(shutil.which("fakeroot") is not None, "fakeroot not installed (scripts/deps.sh)")
    p = fs_pair
    for d in (p.src_dir / "plain", p.dst_dir / "plain", p.src_dir / "x", p.dst_dir / "x"):
        d.mkdir()
    want = fakeroot_mv(p.src_dir / "plain", p.dst_dir / "plain", "mv")
    assert "character special file 0:0 1:3" in want and "regular file 1234:5678 0:0 5" in want, want
    log = tmp_path / "log.jsonl"
    if where == "fakeroot-around-xrename":
        got = fakeroot_mv(p.src_dir / "x", p.dst_dir / "x", f'"{XRENAME}" --log "{log}" -- mv')
    else:
        got = fakeroot_mv(p.src_dir / "x", p.dst_dir / "x", "mv", outer=(XRENAME, "--log", log, "--"))
    assert got == want, f"fakeroot's view after traced mv:\n{got}\nafter plain mv:\n{want}"
    assert real_view(p.dst_dir / "x") == real_view(p.dst_dir / "plain")
    assert os.listdir(p.src_dir / "x") == []
    assert_stepped_aside(log, "libfakeroot", 2)


def test_under_fakeroot_with_its_library_under_another_name_the_supervisor_moves_nothing(fs_pair, tmp_path):
    """`xrename -- fakeroot -l /elsewhere/libfr.so ...`: the maps show no
    library by a known name, but the process is dynamically linked and its
    environment has FAKEROOTKEY: the supervisor leaves each EXDEV to mv,
    and faked sees what plain mv gives (an empty regular file owned by
    root arrived before)."""
    need(shutil.which("fakeroot") is not None, "fakeroot not installed (scripts/deps.sh)")
    lib = lib_path("/usr/lib/x86_64-linux-gnu/libfakeroot/libfakeroot-sysv.so", "/usr/lib/libfakeroot/libfakeroot-sysv.so")
    renamed = tmp_path / "libfr.so"
    shutil.copy(lib, renamed)
    p = fs_pair
    for d in (p.src_dir / "plain", p.dst_dir / "plain", p.src_dir / "x", p.dst_dir / "x"):
        d.mkdir()
    want = fakeroot_mv(p.src_dir / "plain", p.dst_dir / "plain", "mv", options=("-l", str(renamed)))
    assert "character special file 0:0 1:3" in want and "regular file 1234:5678 0:0 5" in want, want
    log = tmp_path / "log.jsonl"
    got = fakeroot_mv(p.src_dir / "x", p.dst_dir / "x", "mv", outer=(XRENAME, "--log", log, "--"),
                      options=("-l", str(renamed)))
    assert got == want, f"fakeroot's view after traced mv:\n{got}\nafter plain mv:\n{want}"
    assert_stepped_aside(log, "libfakeroot (FAKEROOTKEY)", 2)


def test_xrename_under_fakeroot_says_moves_are_left_to_the_program():
    """`xrename -- CMD` started under fakeroot (LD_PRELOAD holds
    libfakeroot, FAKEROOTKEY is set) prints the note the preload path
    prints, without the LD_PRELOAD placement it does not make."""
    need(shutil.which("fakeroot") is not None, "fakeroot not installed (scripts/deps.sh)")
    proc = run(["fakeroot", XRENAME, "--", "true"], timeout=60)
    assert proc.returncode == 0, describe(proc)
    assert f"libfakeroot-sysv.so {NOTE}" in proc.stderr or f"libfakeroot-tcp.so {NOTE}" in proc.stderr, \
        describe(proc)


def test_a_static_program_under_fakeroot_is_still_moved(fs_pair, tmp_path):
    """The decision is per process, from what it has loaded, not from the
    environment: a static program started under fakeroot does not load
    libfakeroot and sees the real filesystem, so the supervisor moves for
    it."""
    need(shutil.which("fakeroot") is not None, "fakeroot not installed (scripts/deps.sh)")
    need(shutil.which("cc") is not None, "no C compiler")
    static = compile_c(tmp_path, RENAME_PROG, "static_rename", "-static")
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"static")
    log = tmp_path / "log.jsonl"
    proc = run(["fakeroot", XRENAME, "--log", log, "--", static, src, dst], timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", describe(proc)
    assert dst.read_bytes() == b"static" and not src.exists()
    (line,) = log_lines(log)
    assert line["via"] == "trace" and line["result"] == "ok", line


# --------------------------------------------------------------------------
# fakechroot
# --------------------------------------------------------------------------

def test_under_fakechroot_in_a_descendant_the_supervisor_moves_nothing(prog, fs_pair, tmp_path):
    """`xrename -- env LD_PRELOAD=libfakechroot.so FAKECHROOT_BASE=BASE
    rename1 /a/f /b/f`: inside the fake root, /b is another filesystem. The
    program gets the kernel's EXDEV, the file stays at BASE/a/f, nothing
    arrives, and the log names libfakechroot."""
    lib = libfakechroot()
    p = fs_pair
    base = p.src_dir / "base"
    (base / "a").mkdir(parents=True)
    os.symlink(p.dst_dir, base / "b")
    (base / "a" / "f").write_bytes(b"inside the fake root\n")
    log = tmp_path / "log.jsonl"
    proc = run([XRENAME, "--log", log, "--", "env", f"LD_PRELOAD={lib}", f"FAKECHROOT_BASE={base}",
                prog, "/a/f", "/b/f"])
    assert proc.stdout.strip() == "EXDEV", describe(proc)
    assert (base / "a" / "f").read_bytes() == b"inside the fake root\n"
    assert os.listdir(p.dst_dir) == []
    assert_stepped_aside(log, "libfakechroot", 1)


def test_xrename_under_fakechroot_leaves_exdev_and_says_so(prog, fs_pair, tmp_path):
    """`fakechroot xrename -- rename1 SRC DST`: the supervisor itself runs
    under fakechroot (and prints the note); the program, which loads
    libfakechroot, keeps the kernel's EXDEV, nothing moved."""
    need(shutil.which("fakechroot") is not None, "fakechroot not installed (scripts/deps.sh)")
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"stays")
    log = tmp_path / "log.jsonl"
    proc = run(["fakechroot", XRENAME, "--log", log, "--", prog, src, dst], timeout=60)
    assert proc.stdout.strip() == "EXDEV", describe(proc)
    assert NOTE in proc.stderr and "libfakechroot" in proc.stderr, describe(proc)
    assert src.read_bytes() == b"stays" and not os.path.lexists(dst)
    assert_stepped_aside(log, "libfakechroot", 1)


# --------------------------------------------------------------------------
# eatmydata, faketime: not virtualisers
# --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["around", "inside"])
@pytest.mark.parametrize("which", sorted(HARMLESS))
def test_under_eatmydata_and_faketime_the_supervisor_still_moves(prog, fs_pair, tmp_path, which, where):
    """libeatmydata (no fsync) and libfaketime (another clock) interpose
    calls but change neither paths nor owners: loaded in the program, with
    xrename started under them (around) or starting them (inside), the
    file is moved, logged ok, and no note is printed."""
    lib = lib_path(*HARMLESS[which])
    p = fs_pair
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    src.write_bytes(b"moved under " + which.encode())
    log = tmp_path / "log.jsonl"
    preload = {"LD_PRELOAD": lib, "FAKETIME": "-1d"}
    if where == "around":
        proc = run([XRENAME, "--log", log, "--", prog, src, dst], env=xrename_env(preload))
    else:
        proc = run([XRENAME, "--log", log, "--", "env", *(f"{k}={v}" for k, v in preload.items()), prog, src, dst])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", describe(proc)
    assert dst.read_bytes() == b"moved under " + which.encode() and not os.path.lexists(src)
    (line,) = log_lines(log)
    assert line["via"] == "trace" and line["result"] == "ok", line
    assert "virtualises" not in proc.stderr, describe(proc)
