"""The `xrename` command (target/release/xrename), run as a user would.

- `xrename [OPTIONS] [--] CMD ...`: runs CMD with libxrename.so preloaded;
  exit status, library lookup, LD_PRELOAD chaining, --log, --summary,
  --observe, --no-dirs and the warnings for programs LD_PRELOAD cannot reach.
- `xrename explain SRC DST` on each kind of mount, changing nothing.
- `xrename mv` and `xrename clean`, `make install`, --help and --version.

Every test uses its own private mounts (conftest fixtures); every
cross-device pair is first proved to give EXDEV without the shim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_harness import (
    C_RENAME, XRENAME, assert_kernel_exdev, compile_c, dead_pid, describe, fstype,
    parse_one_json_line, py_rename_argv, run, try_compile_c, verdict_line,
    write_py_program, xrename, xrename_env,
)
from tree_harness import assert_same_listing, build_small_tree, leftovers, listing
from xrename_harness import (
    LIBRARY, PAST_ATIME_NS, PAST_MTIME_NS, REPO_ROOT, MiB, assert_metadata_equal,
    entries, need, random_bytes, snapshot,
)


@pytest.fixture(scope="module", autouse=True)
def _built_binary():
    if not XRENAME.is_file():
        pytest.fail(f"{XRENAME} not built: run `cargo build --release` first", pytrace=False)


def _seed_file(path: Path, size: int, seed: int) -> bytes:
    data = random_bytes(size, seed)
    path.write_bytes(data)
    return data


# ==========================================================================
# running a program: renames across devices just work
# ==========================================================================

DASHDASH = pytest.mark.parametrize("sep", [["--"], []], ids=["with-dashdash", "without-dashdash"])


@DASHDASH
def test_python_program_renames_across_devices_under_xrename(fs_pair, tmp_path, sep):
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    data = _seed_file(src, 50_000, seed=1)

    proc = xrename(*sep, *py_rename_argv(prog, src, dst))

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)
    assert out["ok"], f"rename failed under xrename: {out}\n{describe(proc)}"
    assert out["preloaded"], f"libxrename.so not mapped in the program: {out['maps']}"
    assert proc.stderr == "", f"xrename wrote to stderr without --log/--summary: {proc.stderr!r}"
    assert not src.exists()
    assert dst.read_bytes() == data
    assert entries(fs_pair.src_dir) == set() and entries(fs_pair.dst_dir) == {"b.bin"}


@DASHDASH
def test_c_program_renames_across_devices_under_xrename(fs_pair, tmp_path, sep):
    prog = compile_c(tmp_path, C_RENAME, "crename")
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    data = _seed_file(src, 70_001, seed=2)

    proc = xrename(*sep, prog, src, dst)

    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "ok\n", describe(proc)
    assert proc.stderr == "", describe(proc)
    assert not src.exists()
    assert dst.read_bytes() == data


def test_without_xrename_the_same_programs_get_exdev(fs_pair, tmp_path):
    """Control: the very same programs, run directly, fail with EXDEV."""
    py, c = write_py_program(tmp_path), compile_c(tmp_path, C_RENAME, "crename")
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    data = _seed_file(src, 1000, seed=3)

    p1 = run(py_rename_argv(py, src, dst))
    p2 = run([c, src, dst])

    out = parse_one_json_line(p1.stdout)
    assert out == {**out, "ok": False, "errname": "EXDEV", "preloaded": False}, out
    assert (p2.returncode, p2.stdout) == (1, "EXDEV\n"), describe(p2)
    assert src.read_bytes() == data and not dst.exists()


# ==========================================================================
# exit status and library lookup
# ==========================================================================

SUMMARY_MODES = pytest.mark.parametrize("mode", [[], ["--summary"]], ids=["exec", "summary"])


@SUMMARY_MODES
def test_exit_status_of_the_command_is_passed_through(mode):
    proc = xrename(*mode, "sh", "-c", "exit 7")
    assert proc.returncode == 7, describe(proc)


@SUMMARY_MODES
def test_command_killed_by_sigkill_gives_status_137(mode):
    # Seen from a shell, as a user sees it: $? is 128 + 9.
    wrapper = ["sh", "-c", '"$@"; echo "status=$?"', "sh", XRENAME, "--preload", *mode, "sh", "-c", "kill -9 $$"]
    proc = run(wrapper)
    assert proc.stdout.splitlines()[-1:] == ["status=137"], describe(proc)
    # Seen by the parent directly: without --summary xrename *is* the command
    # (exec), so it dies of the signal; with --summary it waits and exits 137.
    direct = xrename(*mode, "sh", "-c", "kill -9 $$")
    want = 137 if mode else -signal.SIGKILL
    assert direct.returncode == want, describe(direct)


@SUMMARY_MODES
def test_missing_command_exits_127(mode, tmp_path):
    missing = "xrename-test-no-such-command-7f3a"
    proc = xrename(*mode, missing, "arg")
    assert proc.returncode == 127, describe(proc)
    assert missing in proc.stderr, describe(proc)
    proc = xrename(*mode, tmp_path / "not-there")
    assert proc.returncode == 127, describe(proc)


def _lonely_copy(tmp_path: Path) -> Path:
    d = tmp_path / "alone"
    d.mkdir()
    exe = d / "xrename"
    shutil.copy2(XRENAME, exe)
    assert not (tmp_path / "lib").exists()
    return exe


def test_missing_library_exits_125_naming_the_paths_tried(tmp_path):
    exe = _lonely_copy(tmp_path)
    d = os.path.realpath(exe.parent)
    marker = tmp_path / "ran"

    proc = xrename("touch", marker, exe=exe)

    assert proc.returncode == 125, describe(proc)
    want = (f"xrename: cannot find libxrename.so; tried: {d}/libxrename.so, "
            f"{d}/../lib/xrename/libxrename.so, {d}/../lib/x86_64-linux-gnu/xrename/libxrename.so, "
            f"{d}/../xrename/libxrename.so (set XRENAME_LIB to its path)")
    assert want in proc.stderr, f"expected {want!r} in stderr\n{describe(proc)}"
    assert not marker.exists(), "the command ran although the library is missing"

    # An XRENAME_LIB that does not exist is tried first, and named too.
    bogus = tmp_path / "nowhere" / "libxrename.so"
    proc = xrename("touch", marker, exe=exe, env=xrename_env({"XRENAME_LIB": str(bogus)}))
    assert proc.returncode == 125, describe(proc)
    assert f"tried: {bogus}, {d}/libxrename.so, " in proc.stderr, describe(proc)
    assert not marker.exists()


def test_xrename_lib_points_a_lonely_copy_at_the_library(fs_pair, tmp_path):
    exe = _lonely_copy(tmp_path)
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a", fs_pair.dst_dir / "b"
    data = _seed_file(src, 4096, seed=4)

    proc = xrename(*py_rename_argv(prog, src, dst), exe=exe,
                   env=xrename_env({"XRENAME_LIB": str(LIBRARY)}))

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)
    assert out["ok"] and out["preloaded"], out
    assert str(LIBRARY.resolve()) in out["maps"], out["maps"]
    assert dst.read_bytes() == data and not src.exists()


def test_existing_ld_preload_is_kept_after_the_library(fs_pair, tmp_path):
    marker_lib = compile_c(tmp_path, "int xrename_test_marker(void) { return 42; }\n",
                           "libmarker.so", "-shared", "-fPIC")
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a", fs_pair.dst_dir / "b"
    _seed_file(src, 10, seed=5)

    proc = xrename(*py_rename_argv(prog, src, dst), env=xrename_env({"LD_PRELOAD": str(marker_lib)}))

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)
    assert out["ld_preload"] == f"{LIBRARY.resolve()}:{marker_lib}", out["ld_preload"]
    assert str(marker_lib) in out["maps"], f"the existing LD_PRELOAD library was dropped: {out['maps']}"
    assert str(LIBRARY.resolve()) in out["maps"], out["maps"]
    assert out["ok"], out


# ==========================================================================
# --observe, --summary, --log, --no-dirs
# ==========================================================================

def _log_lines(text: str) -> list[dict]:
    assert text == "" or text.endswith("\n"), f"log does not end with a newline: {text[-200:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def test_observe_returns_exdev_and_logs_it_moving_nothing(fs_pair, tmp_path):
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    data = _seed_file(src, 3000, seed=6)
    log = tmp_path / "observe.log"
    before = {d: listing(d) for d in (fs_pair.src_dir, fs_pair.dst_dir)}

    proc = xrename("--observe", "--log", log, *py_rename_argv(prog, src, dst))

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)
    assert out["preloaded"], out
    assert not out["ok"] and out["errname"] == "EXDEV", f"--observe must return EXDEV: {out}"
    lines = _log_lines(log.read_text())
    assert len(lines) == 1, lines
    assert lines[0]["result"] == "EXDEV" and lines[0]["step"] == "observe", lines[0]
    assert lines[0]["src"] == str(src) and lines[0]["dst"] == str(dst), lines[0]
    assert lines[0]["pid"] == out["pid"], lines[0]
    for d, b in before.items():
        assert_same_listing(b, listing(d), "before", "after", f"--observe changed {d}")
    assert src.read_bytes() == data


def test_observe_with_summary_counts_without_moving(fs_pair, tmp_path):
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    _seed_file(src, 300, seed=7)

    proc = xrename("--observe", "--summary", *py_rename_argv(prog, src, dst))

    assert proc.returncode == 0, describe(proc)
    assert parse_one_json_line(proc.stdout)["errname"] == "EXDEV"
    assert proc.stderr == ("xrename: 1 EXDEV met in 1 process(es), observed and returned as the "
                           "kernel gave them\n"), describe(proc)
    assert src.exists() and not dst.exists()


FORKING_PROGRAM = r'''
import os, sys
a_src, a_dst, b_src, b_dst = sys.argv[1:5]
pid = os.fork()
if pid == 0:
    try:
        os.rename(b_src, b_dst)
    except OSError as e:
        print("child:", e, file=sys.stderr)
        os._exit(1)
    os._exit(0)
os.rename(a_src, a_dst)
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
'''


def test_summary_counts_moves_and_bytes_across_a_forked_child(fs_pair, tmp_path):
    prog = tmp_path / "fork_rename.py"
    prog.write_text(FORKING_PROGRAM)
    a, b = fs_pair.src_dir / "a", fs_pair.src_dir / "b"
    da, db = _seed_file(a, 300, seed=8), _seed_file(b, 411, seed=9)
    tmpdir = tmp_path / "tmpdir"  # where --summary keeps its private log
    tmpdir.mkdir()

    proc = xrename("--summary", sys.executable, prog, a, fs_pair.dst_dir / "a", b, fs_pair.dst_dir / "b",
                   env=xrename_env({"TMPDIR": str(tmpdir)}))

    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == "", describe(proc)
    summary = [l for l in proc.stderr.splitlines() if "EXDEV met" in l]
    assert len(summary) == 1, describe(proc)
    pattern = (r"xrename: 2 EXDEV met in 2 process\(es\): 2 moved, 0 failed; "
               r"2 objects and 711 B copied in \d+\.\d ms")
    assert re.fullmatch(pattern, summary[0]), f"summary line {summary[0]!r} does not match {pattern!r}"
    assert proc.stderr == summary[0] + "\n", describe(proc)
    assert (fs_pair.dst_dir / "a").read_bytes() == da and (fs_pair.dst_dir / "b").read_bytes() == db
    assert entries(fs_pair.src_dir) == set()
    assert os.listdir(tmpdir) == [], f"--summary left its log behind: {os.listdir(tmpdir)}"


@pytest.mark.parametrize("where", ["file", "stderr"])
def test_log_writes_json_lines_and_leaves_program_stdout_alone(fs_pair, tmp_path, where):
    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a.bin", fs_pair.dst_dir / "b.bin"
    _seed_file(src, 12_345, seed=10)
    log = tmp_path / "run.log"

    proc = xrename("--log", log if where == "file" else "-", *py_rename_argv(prog, src, dst))

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)  # stdout is the program's own line, nothing else
    assert out["ok"], out
    if where == "file":
        assert proc.stderr == "", describe(proc)
        text = log.read_text()
    else:
        assert not log.exists()
        text = proc.stderr
    lines = _log_lines(text)
    assert len(lines) == 1, f"want exactly one JSON line, got {text!r}"
    line = lines[0]
    assert (line["result"], line["src"], line["dst"], line["bytes"], line["files"], line["pid"]) == \
        ("ok", str(src), str(dst), 12_345, 1, out["pid"]), line


def test_no_dirs_leaves_directory_moves_to_the_program(fs_pair, tmp_path):
    prog = write_py_program(tmp_path)
    d_src, d_dst = fs_pair.src_dir / "tree", fs_pair.dst_dir / "tree"
    build_small_tree(d_src, seed=11)
    tree_before = listing(d_src)
    f_src, f_dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    data = _seed_file(f_src, 999, seed=12)

    pd = xrename("--no-dirs", *py_rename_argv(prog, d_src, d_dst))
    pf = xrename("--no-dirs", *py_rename_argv(prog, f_src, f_dst))

    od, of = parse_one_json_line(pd.stdout), parse_one_json_line(pf.stdout)
    assert od["preloaded"] and not od["ok"] and od["errname"] == "EXDEV", \
        f"--no-dirs: the directory move must get EXDEV: {od}"
    assert_same_listing(tree_before, listing(d_src), "before", "after", "--no-dirs touched the tree")
    assert not d_dst.exists()
    assert of["ok"], f"--no-dirs: a file move must still be emulated: {of}"
    assert f_dst.read_bytes() == data and not f_src.exists()


# ==========================================================================
# warnings for programs LD_PRELOAD cannot reach
# ==========================================================================

EXIT3 = "int main(void) { return 3; }\n"
WARN = "xrename: warning:"


def _assert_one_warning(proc, why: str) -> None:
    assert proc.stderr.count(WARN) == 1, f"want exactly one warning\n{describe(proc)}"
    line = next(l for l in proc.stderr.splitlines() if WARN in l)
    assert why in line, f"warning should say {why!r}: {line!r}"
    assert "not emulated" in line, line


def test_statically_linked_program_is_warned_about_once(fs_pair, tmp_path):
    prog, err = try_compile_c(tmp_path, C_RENAME, "static-rename", "-static")
    need(prog is not None, f"cc -static does not work here (no static libc?): {err}")
    src, dst = fs_pair.src_dir / "a", fs_pair.dst_dir / "b"
    _seed_file(src, 100, seed=13)

    proc = xrename(prog, src, dst)

    _assert_one_warning(proc, "statically linked program")
    # The warning is true: the static program's rename is not emulated.
    assert (proc.returncode, proc.stdout) == (1, "EXDEV\n"), describe(proc)
    assert src.exists() and not dst.exists()


def test_setuid_program_is_warned_about_once(tmp_path):
    prog = compile_c(tmp_path, EXIT3, "suid-exit3")
    os.chmod(prog, 0o4755)
    proc = xrename(prog)
    _assert_one_warning(proc, "setuid/setgid program")
    assert proc.returncode == 3, describe(proc)

    os.chmod(prog, 0o2755)
    proc = xrename(prog)
    _assert_one_warning(proc, "setuid/setgid program")


def test_program_with_file_capabilities_is_warned_about_once(tmp_path):
    prog = compile_c(tmp_path, EXIT3, "caps-exit3")
    setcap = shutil.which("setcap")
    need(setcap is not None, "setcap not installed")
    p = subprocess.run([setcap, "cap_net_raw+ep", str(prog)], capture_output=True, text=True)
    need(p.returncode == 0, f"cannot set file capabilities here: {p.stderr.strip()}")
    proc = xrename(prog)
    _assert_one_warning(proc, "file capabilities")


GO_LIKE = r'''
/* Not Go: a dynamic C program carrying Go's build-ID note (a PT_NOTE named
   "Go", as the Go linker writes), which is what xrename looks for, in the
   program headers only, to recognise a Go binary. */
__asm__(".section .note.go.buildid,\"a\",@note\n.balign 4\n.long 4\n.long 8\n.long 4\n"
        ".asciz \"Go\"\n.byte 0\n.ascii \"buildid!\"\n.previous\n");
int main(void) { return 3; }
'''


def test_go_binary_is_warned_about_once(tmp_path):
    prog = compile_c(tmp_path, GO_LIKE, "go-like")
    notes = subprocess.run(["readelf", "-n", str(prog)], capture_output=True, text=True).stdout
    assert "Go" in notes, notes
    proc = xrename(prog)
    _assert_one_warning(proc, "Go program")
    assert proc.returncode == 3, describe(proc)


def test_ordinary_dynamic_program_gets_no_warning(tmp_path):
    prog = compile_c(tmp_path, EXIT3, "plain-exit3")
    proc = xrename(prog)
    assert proc.returncode == 3 and proc.stderr == "", describe(proc)


# ==========================================================================
# explain
# ==========================================================================

def _explain_unchanged(roots, src, dst) -> subprocess.CompletedProcess:
    before = {r: listing(r) for r in roots}
    proc = xrename("explain", src, dst)
    for r in roots:
        # Reading a directory may update its atime; nothing else may change.
        assert_same_listing(before[r], listing(r), "before explain", "after explain",
                            f"explain changed {r}", ignore=("atime_ns",))
    assert proc.returncode == 0, describe(proc)
    return proc


def test_explain_tmpfs_to_ext4_says_different_filesystems(tmpfs, ext4):
    (tmpfs / "src").mkdir(); (ext4 / "dst").mkdir()
    src, dst = tmpfs / "src" / "report.bin", ext4 / "dst" / "report.bin"
    _seed_file(src, 2048, seed=14)

    proc = _explain_unchanged([tmpfs, ext4], src, dst)

    out = proc.stdout
    assert verdict_line(out) == f"verdict:     EXDEV: different filesystems (tmpfs and {fstype(ext4)}).", out
    assert f"source:      {src} (regular file)" in out, out
    assert f"destination: {dst}" in out, out
    assert "would copy 1 object(s), 2.0 KiB of data" in out, out
    assert re.search(r"^keeps: +" + re.escape(fstype(ext4)) + " keeps ", out, re.M), out
    assert_kernel_exdev(src, dst)  # the verdict is the kernel's


def test_explain_into_an_existing_directory_explains_the_move_into_it(tmpfs, ext4):
    (ext4 / "tree").mkdir(); (ext4 / "tree" / "x").write_bytes(b"12345"); (ext4 / "tree" / "sub").mkdir()
    (ext4 / "tree" / "sub" / "y").write_bytes(b"678")
    target = tmpfs / "target"
    target.mkdir()

    proc = _explain_unchanged([tmpfs, ext4], ext4 / "tree", target)

    out = proc.stdout
    assert f"{target} is a directory: explaining a move into it" in out, out
    assert f"destination: {target / 'tree'}" in out, out
    assert verdict_line(out) == f"verdict:     EXDEV: different filesystems ({fstype(ext4)} and tmpfs).", out
    assert "would copy 4 object(s), 8 B of data" in out, out  # 2 dirs + 2 files
    assert not (target / "tree").exists()


def test_explain_bind_pair_says_bind_mount(bind_pair):
    d, b = bind_pair
    (d / "src").mkdir(); (d / "dst").mkdir()
    src, dst = d / "src" / "f", b / "dst" / "f"
    _seed_file(src, 10, seed=15)

    proc = _explain_unchanged([d], src, dst)

    v = verdict_line(proc.stdout)
    assert v.startswith("verdict:     EXDEV: two mounts of one filesystem ("), proc.stdout
    assert "a bind mount" in v, v
    assert_kernel_exdev(src, dst)


@pytest.fixture
def overlay(mounts, ext4, tmpfs, tmp_path):
    lower = ext4 / "lower"
    lower.mkdir()
    (lower / "d").mkdir()
    (lower / "d" / "inner.txt").write_bytes(b"lower layer file")
    (lower / "plain.txt").write_bytes(b"a lower regular file")
    upper, work = tmpfs / "upper", tmpfs / "work"
    upper.mkdir(); work.mkdir()
    merged = tmp_path / "merged"
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    ok, err = mounts.try_mount(["-t", "overlay", "-o", opts + ",redirect_dir=off", "xrename-ovl"], merged)
    if not ok:
        mounts.mount(["-t", "overlay", "-o", opts, "xrename-ovl"], merged, f"overlayfs ({err})")
    return lower, upper, merged


def test_explain_overlay_lower_directory_says_lower_layer(overlay):
    lower, upper, merged = overlay
    src, dst = merged / "d", merged / "e"

    proc = _explain_unchanged([lower, upper, merged], src, dst)

    v = verdict_line(proc.stdout)
    # redirect_dir=off when the mount accepted it, else the kernel default
    # (nofollow in a user namespace); never "on", which would allow the rename.
    want = (f"verdict:     EXDEV: {re.escape(str(src))} is a directory of the overlayfs lower layer "
            f"{re.escape(str(lower))}, and redirect_dir is (off|nofollow|follow)\\b")
    assert re.match(want, v), f"got {v!r}\nwant {want!r}"
    assert_kernel_exdev(src, dst)

    # A regular file of the lower layer is copied up by overlayfs: no EXDEV.
    proc = _explain_unchanged([lower, upper, merged], merged / "plain.txt", merged / "moved.txt")
    assert verdict_line(proc.stdout).startswith("verdict:     no EXDEV: both sides are on one mount"), proc.stdout


def test_explain_same_filesystem_says_no_exdev(tmpfs):
    (tmpfs / "a").mkdir(); (tmpfs / "b").mkdir()
    src, dst = tmpfs / "a" / "f", tmpfs / "b" / "g"
    _seed_file(src, 10, seed=16)

    proc = _explain_unchanged([tmpfs], src, dst)

    assert verdict_line(proc.stdout).startswith("verdict:     no EXDEV: both sides are on one mount"), proc.stdout
    assert "xrename:     nothing to do" in proc.stdout, proc.stdout
    os.rename(src, dst)  # and the kernel agrees


def test_explain_missing_source_fails_with_the_real_error(tmpfs):
    proc = xrename("explain", tmpfs / "nope", tmpfs / "x")
    assert proc.returncode == 125, describe(proc)
    assert "rename would fail with this, not EXDEV" in proc.stderr, describe(proc)
    assert entries(tmpfs) == set()


# ==========================================================================
# mv
# ==========================================================================

def test_mv_file_across_devices_keeps_content_and_metadata(fs_pair):
    src, dst = fs_pair.src_dir / "f.bin", fs_pair.dst_dir / "g.bin"
    data = _seed_file(src, 200_000, seed=17)
    os.chmod(src, 0o640)
    os.setxattr(src, "user.cli", b"kept")
    os.utime(src, ns=(PAST_ATIME_NS, PAST_MTIME_NS))
    before = snapshot(src)

    proc = xrename("mv", src, dst)

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), describe(proc)
    assert not os.path.lexists(src)
    assert dst.read_bytes() == data
    after = snapshot(dst)
    assert_metadata_equal(before, after, ["type", "mode", "uid", "gid", "size", "mtime_ns", "xattrs"])
    assert entries(fs_pair.src_dir) == set() and entries(fs_pair.dst_dir) == {"g.bin"}


def test_mv_tree_across_devices_keeps_the_tree(fs_pair):
    src, dst = fs_pair.src_dir / "tree", fs_pair.dst_dir / "tree2"
    build_small_tree(src, seed=18)
    before = listing(src)

    proc = xrename("mv", src, dst)

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), describe(proc)
    assert not os.path.lexists(src)
    assert_same_listing(before, listing(dst), "source", "destination", "mv changed the tree")
    assert leftovers(fs_pair.src_dir, fs_pair.dst_dir) == []


def test_mv_into_an_existing_directory(fs_pair):
    src = fs_pair.src_dir / "f"
    data = _seed_file(src, 5000, seed=19)

    proc = xrename("mv", src, fs_pair.dst_dir)

    assert proc.returncode == 0, describe(proc)
    assert (fs_pair.dst_dir / "f").read_bytes() == data
    assert entries(fs_pair.src_dir) == set() and entries(fs_pair.dst_dir) == {"f"}


def test_mv_several_sources_into_a_directory(fs_pair):
    a, b, t = fs_pair.src_dir / "a", fs_pair.src_dir / "b", fs_pair.src_dir / "t"
    da, db = _seed_file(a, 10, seed=20), _seed_file(b, 20_000, seed=21)
    build_small_tree(t, seed=22)
    tree_before = listing(t)

    proc = xrename("mv", a, b, t, fs_pair.dst_dir)

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), describe(proc)
    assert entries(fs_pair.src_dir) == set()
    assert entries(fs_pair.dst_dir) == {"a", "b", "t"}
    assert (fs_pair.dst_dir / "a").read_bytes() == da and (fs_pair.dst_dir / "b").read_bytes() == db
    assert_same_listing(tree_before, listing(fs_pair.dst_dir / "t"), "source", "destination", "tree differs")


def test_mv_started_inside_a_moved_tree_resolves_later_operands_from_where_it_started(fs_pair):
    """`xrename mv c zz ../../x/dir` run from inside c: the command's working
    directory stays where it was started (moving it along with c, as a
    program's is, made `../../x/dir` name another directory for zz)."""
    c, zz = fs_pair.src_dir / "c", fs_pair.src_dir / "zz"
    (c / "sub").mkdir(parents=True)
    zz.write_bytes(b"zz")
    target = fs_pair.dst_dir / "dir"
    target.mkdir()
    rel = os.path.relpath(target, c)
    # What the same relative name gives from the copy of c (dir/c).
    decoy = Path(os.path.normpath(target / "c" / rel))
    decoy.mkdir(parents=True)

    proc = xrename("mv", c, zz, rel, cwd=c)

    assert (proc.returncode, proc.stderr) == (0, ""), describe(proc)
    assert (target / "zz").read_bytes() == b"zz" and (target / "c" / "sub").is_dir()
    assert os.listdir(decoy) == []


def test_mv_verbose_names_each_move(fs_pair, tmp_path):
    a, t = fs_pair.src_dir / "a", fs_pair.src_dir / "t"
    _seed_file(a, 10, seed=23)
    t.mkdir()
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    dst = rel(fs_pair.dst_dir)

    proc = xrename("mv", "-v", rel(a), rel(t), dst, cwd=tmp_path)

    assert proc.returncode == 0, describe(proc)
    assert proc.stdout == (f"renamed '{rel(a)}' -> '{dst}/a'\n"
                           f"renamed '{rel(t)}' -> '{dst}/t'\n"), describe(proc)
    assert entries(fs_pair.dst_dir) == {"a", "t"}


@pytest.mark.parametrize("target", ["existing-file", "absent"])
def test_mv_several_sources_onto_a_non_directory_fails_changing_nothing(fs_pair, target):
    a, b = fs_pair.src_dir / "a", fs_pair.src_dir / "b"
    _seed_file(a, 10, seed=24); _seed_file(b, 10, seed=25)
    dst = fs_pair.dst_dir / "target"
    if target == "existing-file":
        dst.write_bytes(b"in the way")
    before = {d: listing(d) for d in (fs_pair.src_dir, fs_pair.dst_dir)}

    proc = xrename("mv", a, b, dst)

    assert proc.returncode != 0, describe(proc)
    assert "not a directory" in proc.stderr, describe(proc)
    for d, l in before.items():
        assert_same_listing(l, listing(d), "before", "after", f"a refused mv changed {d}")


def test_mv_progress_draws_nothing_when_stderr_is_not_a_terminal(fs_pair):
    src, dst = fs_pair.src_dir / "big", fs_pair.dst_dir / "big"
    data = _seed_file(src, 8 * MiB, seed=26)

    proc = xrename("mv", "--progress", src, dst)  # stderr is a pipe

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), describe(proc)
    assert dst.read_bytes() == data and not src.exists()


# ==========================================================================
# clean
# ==========================================================================

HEX1, HEX2, HEX3, HEX4 = "0123456789abcdef", "00000000deadbeef", "fedcba9876543210", "aaaaaaaaaaaaaaaa"


def _leftover_fixture(root: Path):
    dead, live = dead_pid(), os.getpid()
    dead_file = root / f".xrename-{dead}-{HEX1}"
    dead_file.write_bytes(b"0123456789")  # 10 B
    dead_tree = root / f".xrename-{dead}-{HEX2}"
    dead_tree.mkdir()
    (dead_tree / "sub" / "deeper").mkdir(parents=True)
    (dead_tree / "sub" / "deeper" / "f").write_bytes(b"x" * 100)
    (dead_tree / "top").write_bytes(b"y")
    os.symlink("top", dead_tree / "link")
    live_file = root / f".xrename-{live}-{HEX3}"
    live_file.write_bytes(b"live move in progress")
    unrelated = [root / ".hidden-unrelated", root / f".xrename-{dead}-0011",
                 root / f"xrename-{dead}-{HEX4}", root / f".xrename-abc-{HEX4}"]
    for u in unrelated:
        u.write_bytes(b"not ours")
    (root / "sub").mkdir()
    below = root / "sub" / f".xrename-{dead}-{HEX4}"  # clean looks in DIR, not below it
    below.write_bytes(b"below")
    return dead, live, dead_file, dead_tree, live_file, unrelated, below


def test_clean_lists_leftovers_and_changes_nothing(tmpfs):
    dead, live, dead_file, dead_tree, live_file, unrelated, below = _leftover_fixture(tmpfs)
    before = listing(tmpfs)

    proc = xrename("clean", tmpfs)

    assert proc.returncode == 0, describe(proc)
    assert sorted(proc.stdout.splitlines()) == sorted([
        f"{dead_file}: leftover of process {dead} (file, 10 B)",
        f"{dead_tree}: leftover of process {dead} (directory)",
        f"{live_file}: in use by running process {live} (file, 21 B), left alone",
    ]), describe(proc)
    assert_same_listing(before, listing(tmpfs), "before", "after", "clean without --remove changed something",
                        ignore=("atime_ns",))


def test_clean_remove_deletes_only_dead_leftovers(tmpfs):
    dead, live, dead_file, dead_tree, live_file, unrelated, below = _leftover_fixture(tmpfs)
    live_before = os.lstat(live_file)

    proc = xrename("clean", "--remove", tmpfs)

    assert proc.returncode == 0, describe(proc)
    assert proc.stderr == "", describe(proc)
    assert sorted(proc.stdout.splitlines()) == sorted([
        f"{dead_file}: removed (file, 10 B)",
        f"{dead_tree}: removed (directory)",
        f"{live_file}: in use by running process {live} (file, 21 B), left alone",
    ]), describe(proc)
    assert not os.path.lexists(dead_file) and not os.path.lexists(dead_tree)
    assert live_file.read_bytes() == b"live move in progress"
    live_after = os.lstat(live_file)
    assert (live_after.st_ino, live_after.st_mtime_ns) == (live_before.st_ino, live_before.st_mtime_ns)
    for u in unrelated:
        assert u.read_bytes() == b"not ours", f"{u} was touched"
    assert below.read_bytes() == b"below"
    assert entries(tmpfs) == {live_file.name, "sub", *(u.name for u in unrelated)}


def test_clean_remove_trusts_no_name_in_a_directory_others_may_rename_in(tmpfs):
    """In a directory others may write that is not sticky, anyone may give
    one of our own directories a leftover's name (a hostile review had a
    user's tree deleted by its owner's clean --remove that way): dead
    leftovers are listed, with why they stay, and nothing is removed."""
    dead, live, dead_file, dead_tree, live_file, unrelated, below = _leftover_fixture(tmpfs)
    os.chmod(tmpfs, 0o777)
    proc = xrename("clean", "--remove", tmpfs)
    assert proc.returncode == 0, describe(proc)
    assert os.path.lexists(dead_file) and os.path.lexists(dead_tree)
    lines = [line for line in proc.stdout.splitlines() if str(dead_tree) in line or str(dead_file) in line]
    assert len(lines) == 2 and all("its name proves nothing" in line for line in lines), describe(proc)


# ==========================================================================
# make install
# ==========================================================================

def elf_section_names(path) -> set[str]:
    """The section names of a 64-bit little-endian ELF file."""
    import struct
    data = Path(path).read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", f"{path}: not a 64-bit little-endian ELF"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def section(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab = section(shstrndx)
    base = strtab[4]
    names = set()
    for i in range(shnum):
        off = base + section(i)[0]
        names.add(data[off:data.index(b"\0", off)].decode())
    return names


def test_make_install_gives_a_working_xrename(fs_pair, tmp_path):
    need(shutil.which("make") is not None and shutil.which("cargo") is not None, "make/cargo not installed")
    prefix = tmp_path / "prefix"
    p = run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=REPO_ROOT, timeout=900)
    assert p.returncode == 0, describe(p)
    exe, lib = prefix / "bin" / "xrename", prefix / "lib" / "xrename" / "libxrename.so"
    assert stat.S_IMODE(os.stat(exe).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(lib).st_mode) == 0o644
    assert not (prefix / "bin" / "libxrename.so").exists()
    for f in (exe, lib):
        names = elf_section_names(f)
        assert ".dynsym" in names, f"{f}: not an ELF with dynamic symbols: {names}"
        assert ".symtab" not in names and not any(n.startswith(".debug") for n in names), \
            f"{f} is installed unstripped: {sorted(names)}"

    prog = write_py_program(tmp_path)
    src, dst = fs_pair.src_dir / "a", fs_pair.dst_dir / "b"
    data = _seed_file(src, 4321, seed=27)
    proc = xrename(*py_rename_argv(prog, src, dst), exe=exe)

    assert proc.returncode == 0, describe(proc)
    out = parse_one_json_line(proc.stdout)
    assert out["ok"], out
    assert str(lib.resolve()) in out["maps"], f"the installed library is not the one loaded: {out['maps']}"
    assert dst.read_bytes() == data and not src.exists()


# ==========================================================================
# help and version
# ==========================================================================

@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["help"],
    ["help", "explain"], ["explain", "--help"],
    ["help", "mv"], ["mv", "--help"],
    ["help", "clean"], ["clean", "--help"],
], ids=lambda a: " ".join(a))
def test_help_exits_0_and_shows_examples(argv):
    proc = xrename(*argv)
    assert proc.returncode == 0, describe(proc)
    assert "Example" in proc.stdout, describe(proc)
    assert proc.stderr == "", describe(proc)


def test_subcommand_help_is_about_that_subcommand():
    for sub in ("explain", "mv", "clean", "lib", "completions"):
        out = xrename("help", sub).stdout
        assert re.search(rf"Usage: xrename {sub}\b", out), out


def test_mv_usage_error_exits_1_as_gnu_mv_and_others_125(tmp_path):
    proc = xrename("mv", "--bogus", tmp_path / "a", tmp_path / "b")
    assert proc.returncode == 1 and "--bogus" in proc.stderr, describe(proc)
    proc = xrename("mv", tmp_path / "only-one")
    assert proc.returncode == 1, describe(proc)
    proc = xrename("explain", tmp_path / "only-one")
    assert proc.returncode == 125, describe(proc)
    proc = xrename("--trace", "--preload", "true")
    assert proc.returncode == 125, describe(proc)


def test_lib_prints_the_library_found(tmp_path):
    proc = xrename("lib")
    assert proc.returncode == 0, describe(proc)
    assert os.path.samefile(proc.stdout.strip(), LIBRARY), describe(proc)
    # Where the Debian package puts it, relative to /usr/bin.
    exe = _lonely_copy(tmp_path)
    multiarch = exe.parent.parent / "lib" / "x86_64-linux-gnu" / "xrename"
    multiarch.mkdir(parents=True)
    shutil.copy(LIBRARY, multiarch / "libxrename.so")
    proc = xrename("lib", exe=exe)
    assert proc.stdout.strip() == str((multiarch / "libxrename.so").resolve()), describe(proc)
    # Where pip puts it: ../lib/python3.X/site-packages/xrename/ of a venv.
    (tmp_path / "venv").mkdir()
    exe = _lonely_copy(tmp_path / "venv")
    site = exe.parent.parent / "lib" / "python3.11" / "site-packages" / "xrename"
    site.mkdir(parents=True)
    shutil.copy(LIBRARY, site / "libxrename.so")
    proc = xrename("lib", exe=exe)
    assert proc.stdout.strip() == str((site / "libxrename.so").resolve()), describe(proc)
    (site / "libxrename.so").unlink()
    proc = xrename("lib", exe=exe)
    assert proc.returncode == 125 and "site-packages/xrename/libxrename.so" in proc.stderr, describe(proc)


def options_of(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text))


def test_man_pages_render_and_say_what_help_says(tmp_path):
    """The pages come from the definitions --help prints: every option of
    every subcommand's --help is on its page, and the library's page names
    every XRENAME_* variable the library reads."""
    need(shutil.which("man") is not None, "man missing (apt-get install man-db)")
    out = tmp_path / "man"
    proc = xrename("man", out)
    assert proc.returncode == 0, describe(proc)
    pages = sorted(p.name for p in out.iterdir())
    assert pages == ["libxrename.7", "xrename-clean.1", "xrename-completions.1", "xrename-explain.1",
                     "xrename-lib.1", "xrename-mv.1", "xrename.1"], pages
    for page in out.iterdir():
        r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                           env=dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0"))
        assert r.returncode == 0 and r.stderr == "", f"{page.name}: {r.stderr}"
        text = re.sub(r".\x08", "", r.stdout).replace("\u2010", "-").replace("\u2212", "-")
        if page.name == "libxrename.7":
            config = (REPO_ROOT / "src" / "config.rs").read_text()
            used = set(re.findall(r"vars::([A-Z_]+)\.name", config))
            for var in used:
                assert f"XRENAME_{var}" in text, f"libxrename(7) lacks XRENAME_{var}"
            continue
        sub = page.name[len("xrename-"):-2] if page.name != "xrename.1" else None
        help_text = xrename(*([sub, "--help"] if sub else ["--help"])).stdout
        missing = options_of(help_text) - options_of(text.replace("\u2010\n", ""))
        assert not missing, f"{page.name} lacks {missing}"


def test_man_pages_name_the_real_command_lines(tmp_path):
    out = tmp_path / "man"
    assert xrename("man", out).returncode == 0
    page = lambda name: subprocess.run(["man", "-l", str(out / name)], capture_output=True, text=True,
                                       env=dict(os.environ, MANWIDTH="100")).stdout.replace("\u2010", "-")
    clean = page("xrename-clean.1")
    assert "xrename clean [--remove]" in clean and "--version" not in clean, clean
    top = page("xrename.1")
    assert "xrename-help" not in top and "xrename mv" in top and "xrename-mv(1)" in top, top


def test_bash_completion_loads_and_completes_options_and_subcommands(tmp_path):
    script = tmp_path / "xrename.bash"
    script.write_text(xrename("completions", "bash").stdout)
    probe = f"""
source {script}
complete -p xrename
COMP_WORDS=(xrename --su); COMP_CWORD=1; COMP_LINE="xrename --su"; COMP_POINT=${{#COMP_LINE}}
_xrename xrename --su xrename; echo "options: ${{COMPREPLY[*]}}"
COMP_WORDS=(xrename ex); COMP_CWORD=1; COMP_LINE="xrename ex"; COMP_POINT=${{#COMP_LINE}}
_xrename xrename ex xrename; echo "subcommands: ${{COMPREPLY[*]}}"
COMP_WORDS=(xrename mv --no); COMP_CWORD=2; COMP_LINE="xrename mv --no"; COMP_POINT=${{#COMP_LINE}}
_xrename xrename --no mv; echo "mv: ${{COMPREPLY[*]}}"
"""
    r = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "-F _xrename xrename" in r.stdout, r.stdout
    assert "options: --summary" in r.stdout, r.stdout
    assert "subcommands: explain" in r.stdout, r.stdout
    assert " man" not in xrename("completions", "bash").stdout.split("opts=")[1].split("\n")[0], "hidden man offered"
    assert "--no-target-directory" in r.stdout and "--no-fsync" in r.stdout, r.stdout
    for shell in ("zsh", "fish"):
        proc = xrename("completions", shell)
        assert proc.returncode == 0 and "no-fsync" in proc.stdout, describe(proc)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_name_and_version(flag):
    proc = xrename(flag)
    assert proc.returncode == 0, describe(proc)
    assert re.fullmatch(r"xrename \d+\.\d+\.\d+\S*\n", proc.stdout), describe(proc)


def test_unknown_option_exits_125_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    proc = xrename("--frobnicate", "touch", marker)
    assert proc.returncode == 125, describe(proc)
    assert "--frobnicate" in proc.stderr, describe(proc)
    assert not marker.exists()


def test_summary_survives_ctrl_c_prints_what_ran_and_cleans_up(tmp_path):
    """Ctrl-C reaches the whole foreground process group: the command dies
    of SIGINT, and `xrename --summary` still prints its summary, exits
    128 + 2 as a shell would report the command, and leaves no temp file."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([str(XRENAME), "--preload", "--summary", "sh", "-c", "echo started; exec sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "EXDEV met" in err, err
    assert os.listdir(tmp) == [], "the summary's temp file was left behind"


def test_a_fifo_given_as_the_command_is_never_read(tmp_path):
    """Classifying the command (static? Go?) reads only an ELF file's
    headers, and only of a regular file: a FIFO nobody writes must not hang
    xrename; it fails as exec fails (126)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o755)
    proc = subprocess.run([str(XRENAME), str(fifo)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 126, (proc.returncode, proc.stderr)


def test_with_preload_a_fifo_given_as_the_command_is_never_opened_or_read(tmp_path):
    """The same with --preload, where xrename classifies the command itself
    (static? Go?) before it execs it: a FIFO is not a regular file, so it is
    never opened, let alone read. The test holds the FIFO open for writing
    with bytes in it, so an open for reading would not block and a read
    would take them (or wait for more, forever): the bytes must all still be
    there and strace must show no open of the FIFO. Exec fails: 126."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o755)
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer (and a reader) that never goes
    try:
        os.write(held, b"x" * 100)
        argv = [str(XRENAME), "--preload", str(fifo)]
        trace = tmp_path / "strace.out"
        if shutil.which("strace"):
            argv = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace), *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, env=xrename_env(), timeout=60)
        assert os.read(held, 1000) == b"x" * 100, "xrename read from the FIFO given as the command"
    finally:
        os.close(held)
    assert proc.returncode == 126, describe(proc)
    if trace.exists():
        opens = [l for l in trace.read_text().splitlines() if str(fifo) in l]
        assert opens == [], f"xrename opened the FIFO: {opens}"


def _bytes_read_from(trace: str, path: Path) -> tuple[int, list[str]]:
    """Bytes that read/pread64/readv/preadv returned on descriptors strace -y
    names as `path`, and those lines."""
    total, lines = 0, []
    call = re.compile(r"^(?:\d+ +)?(?:read|pread64|readv|preadv2?)\((\d+)<([^>]*)>,.*= (-?\d+)")
    for line in trace.splitlines():
        m = call.match(line)
        if m and m.group(2) == str(path):
            lines.append(line)
            total += max(int(m.group(3)), 0)
    return total, lines


def test_with_preload_a_big_program_is_classified_from_its_headers_alone(tmp_path):
    """A program of more than 2 GiB (/bin/true with a sparse tail) is
    classified (dynamic, not Go: no warning) from its ELF headers: xrename
    reads a few KiB of it, never the file (strace -y: bytes returned by the
    reads on descriptors of that file), then runs it."""
    need(shutil.which("strace") is not None, "strace not installed")
    big = tmp_path / "big-true"
    shutil.copy2("/bin/true", big)
    os.truncate(big, os.path.getsize(big) + (2 << 30))
    trace = tmp_path / "strace.out"
    proc = run(["strace", "-f", "-qq", "-y", "-e", "trace=read,pread64,readv,preadv,preadv2,mmap", "-o", trace,
                XRENAME, "--preload", big], timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    text = trace.read_text()
    total, lines = _bytes_read_from(text, big)
    assert lines, f"strace shows no read of {big}: the headers were not read, or the trace format changed"
    assert total >= 64, lines  # at least the ELF header: the count is of the right file
    assert total <= MiB, f"xrename read {total} bytes of a {os.path.getsize(big)}-byte program: {lines[:5]}"
    maps = [l for l in text.splitlines() if l.split(" ", 1)[-1].startswith("mmap(") and f"<{big}>" in l]
    assert maps == [], f"xrename mapped the program instead: {maps}"


SUMMARY_NAME = re.compile(r"xrename-summary-(\d+)-([0-9a-f]{16})\.jsonl")


@pytest.mark.parametrize("mode", [["--preload"], []], ids=["preload", "traced"])
def test_summary_log_names_are_unpredictable_and_planted_symlinks_are_never_followed(fs_pair, tmp_path, mode):
    """`xrename --summary` keeps its log in $TMPDIR under a name another
    user cannot guess, created exclusively. xrename is started under a pid
    known in advance (a shell that execs it once told to), and a symlink to
    a victim file is planted at every name that pid makes guessable (the
    pid alone, the pid with 0..99, the pid with a zero random part): the
    run still succeeds with its summary, the victim is unchanged, the
    symlinks stay, and the log the command sees is none of them. Two runs
    draw different random parts."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"must stay as it is\n")
    before = os.stat(victim)
    seen = []
    for run_no in range(2):
        src, dst = fs_pair.src_dir / f"f{run_no}", fs_pair.dst_dir / f"f{run_no}"
        src.write_bytes(b"moved under --summary\n")
        inner = 'ls "$TMPDIR" && exec mv "$0" "$1"'
        starter = subprocess.Popen(
            ["sh", "-c", 'read go && exec "$@"', "starter", str(XRENAME), *mode, "--summary", "sh", "-c", inner,
             str(src), str(dst)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=xrename_env({"TMPDIR": str(tmpdir)}))
        pid = starter.pid
        planted = [f"xrename-summary-{pid}.jsonl", f"xrename-summary-{pid}-{0:016x}.jsonl",
                   *(f"xrename-summary-{pid}-{n}.jsonl" for n in range(100))]
        for name in planted:
            os.symlink(victim, tmpdir / name)
        try:
            out, err = starter.communicate("go\n", timeout=60)
        finally:
            starter.kill()
        assert starter.returncode == 0, (starter.returncode, out, err)
        assert re.search(r"xrename: 1 EXDEV met in 1 process\(es\): 1 moved, 0 failed", err), err
        assert dst.read_bytes() == b"moved under --summary\n" and not src.exists()
        logs = [n for n in out.split() if n not in planted]
        assert len(logs) == 1, f"the command saw {out.split()} in $TMPDIR"
        m = SUMMARY_NAME.fullmatch(logs[0])
        assert m and int(m.group(1)) == pid, logs
        seen.append(m.group(2))
        assert sorted(os.listdir(tmpdir)) == sorted(planted), "the summary log was left behind"
        for name in planted:
            assert os.readlink(tmpdir / name) == str(victim)
            os.unlink(tmpdir / name)
    after = os.stat(victim)
    assert victim.read_bytes() == b"must stay as it is\n"
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert seen[0] != seen[1], f"two runs drew the same random part: {seen}"


def test_summary_log_name_is_never_followed_after_xrename_removed_it(fs_pair, tmp_path):
    """The log's name is unpredictable, but not secret once it exists (a
    listing of $TMPDIR shows it). A process of the run that outlives
    `xrename --summary --preload` (a daemon it started) and moves a file
    afterwards must not write through a symlink planted at that name once
    xrename has removed the log, nor make the log again."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"must stay as it is\n")
    src, dst = fs_pair.src_dir / "late", fs_pair.dst_dir / "late"
    src.write_bytes(b"moved after xrename exited\n")
    # The background job waits on fd 3 (the test's pipe: a job's stdin is
    # /dev/null), moves, and says "done" on the shared stdout.
    inner = ('echo "$XRENAME_SUMMARY_LOG"; exec 3<&0; '
             '(read go <&3 && mv "$0" "$1" && echo done) 2>/dev/null &')
    proc = subprocess.Popen([str(XRENAME), "--preload", "--summary", "sh", "-c", inner, str(src), str(dst)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=xrename_env({"TMPDIR": str(tmpdir)}))
    try:
        log = Path(proc.stdout.readline().strip())
        assert proc.wait(60) == 0, proc.stderr.read()
        assert "EXDEV met" in proc.stderr.read()
        assert log.parent == tmpdir and os.listdir(tmpdir) == [], "xrename left its log behind"
        os.symlink(victim, log)  # what another user can do now
        proc.stdin.write("go\n")
        proc.stdin.close()
        assert proc.stdout.readline().strip() == "done"  # the background mv finished
    finally:
        proc.kill()
    assert dst.read_bytes() == b"moved after xrename exited\n" and not src.exists()
    assert victim.read_bytes() == b"must stay as it is\n", "the library wrote through the planted symlink"
    assert os.listdir(tmpdir) == [log.name] and os.readlink(log) == str(victim)


def test_the_preloaded_library_links_nothing_the_command_needs():
    """libxrename.so's dependency graph holds the engine, rustix and libc,
    never the command's progress bar or JSON reader (they would be loaded
    into every preloaded program)."""
    need(shutil.which("cargo") is not None, "cargo not installed")
    p = run(["cargo", "tree", "--offline", "-p", "xrename", "-e", "normal", "--prefix", "none"],
            cwd=REPO_ROOT, timeout=300)
    assert p.returncode == 0, describe(p)
    crates = {line.split()[0] for line in p.stdout.splitlines() if line.strip()}
    assert "xrename-engine" in crates, p.stdout
    unwanted = crates & {"indicatif", "serde_json", "serde", "console", "unicode-width", "portable-atomic"}
    assert not unwanted, f"the library depends on the command's crates: {sorted(unwanted)}"
