"""XRENAME_LOG: one JSON line per handled EXDEV, to a file or to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from xrename_harness import (
    MiB, Pair, assert_cross_device, child_env, entries, move_with, random_bytes, run_child,
)

REQUIRED_KEYS = {"time", "pid", "program", "op", "src", "dst", "type", "bytes", "files", "ms", "result"}


def parse_log_lines(text: str) -> list[dict]:
    assert text == "" or text.endswith("\n"), f"log does not end with a newline: {text[-200:]!r}"
    out = []
    for line in text.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), f"log line is not a JSON object: {line!r}"
        out.append(obj)
    return out


def check_line(obj: dict, *, pid: int, op: str, src: str, dst: str, size: int, result: str) -> None:
    missing = REQUIRED_KEYS - obj.keys()
    assert not missing, f"log line lacks keys {sorted(missing)}: {obj}"
    assert obj["time"] not in (None, ""), obj
    assert obj["pid"] == pid, obj
    assert isinstance(obj["program"], str) and "python" in obj["program"], obj
    assert obj["op"] == op, obj
    assert obj["src"] == src, f"src must be logged exactly as passed: {obj}"
    assert obj["dst"] == dst, f"dst must be logged exactly as passed: {obj}"
    assert obj["type"] == "file", obj
    assert isinstance(obj["bytes"], int) and isinstance(obj["files"], int), obj
    assert isinstance(obj["ms"], (int, float)) and not isinstance(obj["ms"], bool) and obj["ms"] >= 0, obj
    assert obj["result"] == result, obj
    if result == "ok":
        assert obj["bytes"] == size, obj
        assert obj["files"] == 1, obj


LOG_BODY = r'''
# 1. rename() with paths relative to the cwd, logged exactly as passed
RESULTS.append(attempt(os.rename, ARGS["rel_src"], ARGS["rel_dst"]))
# 2. renameat() with real directory fds
_s = os.open(ARGS["src_dir"], os.O_RDONLY | os.O_DIRECTORY)
_d = os.open(ARGS["dst_dir"], os.O_RDONLY | os.O_DIRECTORY)
RESULTS.append(attempt(os.rename, "b.bin", "b-moved.bin", src_dir_fd=_s, dst_dir_fd=_d))
os.close(_s); os.close(_d)
# 3. renameat2() with AT_FDCWD and absolute paths
RESULTS.append(attempt(renameat2, AT_FDCWD, ARGS["c_src"], AT_FDCWD, ARGS["c_dst"]))
# 4. same-device rename: no EXDEV, so no log line
RESULTS.append(attempt(os.rename, ARGS["d_src"], ARGS["d_dst"]))
# 5. same-device rename failing with ENOENT (not EXDEV): no log line
RESULTS.append(attempt(os.rename, ARGS["missing"], ARGS["missing"] + ".x"))
'''


def test_log_file_gets_exactly_one_json_line_per_handled_exdev(fs_pair, tmp_path):
    p = fs_pair
    sizes = {"a": 1111, "b": 22_222, "c": 0, "d": 44}
    for name, size in sizes.items():
        (p.src_dir / f"{name}.bin").write_bytes(random_bytes(size, seed=size))
    log = tmp_path / "xrename.log"
    args = {
        "rel_src": os.path.relpath(p.src_dir / "a.bin", tmp_path),
        "rel_dst": os.path.relpath(p.dst_dir / "a-moved.bin", tmp_path),
        "src_dir": str(p.src_dir), "dst_dir": str(p.dst_dir),
        "c_src": str(p.src_dir / "c.bin"), "c_dst": str(p.dst_dir / "c-moved.bin"),
        "d_src": str(p.src_dir / "d.bin"), "d_dst": str(p.src_dir / "d-renamed.bin"),
        "missing": str(p.src_dir / "does-not-exist"),
    }

    run = run_child(LOG_BODY, args, env={"XRENAME_LOG": str(log)}, cwd=tmp_path)

    assert [r["ok"] for r in run.results] == [True, True, True, True, False]
    assert run.results[4]["errname"] == "ENOENT"
    assert entries(p.dst_dir) == {"a-moved.bin", "b-moved.bin", "c-moved.bin"}
    assert log.exists(), "XRENAME_LOG file was not created"
    lines = parse_log_lines(log.read_text())
    assert len(lines) == 3, "expected exactly 3 lines (rename, renameat, renameat2), got:\n" + \
        "\n".join(json.dumps(x) for x in lines)
    check_line(lines[0], pid=run.pid, op="rename", src=args["rel_src"], dst=args["rel_dst"],
               size=sizes["a"], result="ok")
    check_line(lines[1], pid=run.pid, op="renameat", src="b.bin", dst="b-moved.bin",
               size=sizes["b"], result="ok")
    check_line(lines[2], pid=run.pid, op="renameat2", src=args["c_src"], dst=args["c_dst"],
               size=sizes["c"], result="ok")
    assert run.stderr == "", f"library wrote to stderr while logging to a file: {run.stderr!r}"


def test_log_records_errno_name_when_move_fails_with_enospc(ext4, small_tmpfs, tmp_path):
    pair = Pair("ext4-to-small-tmpfs", ext4 / "src", small_tmpfs / "dst", same_fs=False)
    pair.src_dir.mkdir()
    pair.dst_dir.mkdir()
    assert_cross_device(pair)
    src = pair.src_dir / "big.bin"
    src.write_bytes(random_bytes(2 * MiB, seed=70))
    dst = pair.dst_dir / "big.bin"
    log = tmp_path / "xrename.log"

    run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                    {"src": str(src), "dst": str(dst)}, env={"XRENAME_LOG": str(log)})

    assert run.result["errname"] == "ENOSPC"
    lines = parse_log_lines(log.read_text())
    assert len(lines) == 1, lines
    check_line(lines[0], pid=run.pid, op="rename", src=str(src), dst=str(dst),
               size=2 * MiB, result="ENOSPC")


def test_log_to_stderr_writes_the_json_line_there_and_nothing_to_stdout(fs_pair):
    src = fs_pair.src_dir / "s.bin"
    src.write_bytes(random_bytes(3333, seed=80))
    dst = fs_pair.dst_dir / "s-moved.bin"

    # run_child asserts stdout is exactly the child's own single JSON line.
    run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                    {"src": str(src), "dst": str(dst)}, env={"XRENAME_LOG": "stderr"})

    assert run.result["ok"], run.result
    lines = parse_log_lines(run.stderr)
    assert len(lines) == 1, f"expected one log line on stderr, got {run.stderr!r}"
    check_line(lines[0], pid=run.pid, op="rename", src=str(src), dst=str(dst), size=3333, result="ok")


# --------------------------------------------------------------------------
# issue 11, 6: log targets never block, never signal, never write into data
# --------------------------------------------------------------------------

def test_log_naming_a_fifo_without_a_reader_never_blocks_the_rename(fs_pair, tmp_path):
    """XRENAME_LOG names a FIFO nobody reads: the move completes and rename
    returns (it used to block forever on the open); nothing is written."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    src, dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    src.write_bytes(b"data")
    run = move_with("os.rename", src, dst, env={"XRENAME_LOG": str(fifo)})
    assert run.result["ok"], run.result
    assert dst.read_bytes() == b"data"


def test_stderr_log_is_not_written_into_a_file_that_took_fd_2(fs_pair, tmp_path):
    """A daemon closes fd 2 and opens its data file, which gets number 2:
    XRENAME_LOG=stderr must not write log lines into that data."""
    data = tmp_path / "data.bin"
    src, dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    src.write_bytes(b"data")
    body = """
os.close(2)
fd = os.open(ARGS["data"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
assert fd == 2
os.write(fd, b"DATA")
RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))
"""
    run = run_child(body, {"src": str(src), "dst": str(dst), "data": str(data)}, env={"XRENAME_LOG": "stderr"})
    assert run.result["ok"], run.result
    assert data.read_bytes() == b"DATA", "a log line went into the program's data file"


def test_stderr_pipe_whose_reader_died_never_kills_the_program_with_sigpipe(fs_pair):
    """fd 2 is a pipe whose reader has exited: writing a log line raises
    SIGPIPE, whose default action kills. The program must live on."""
    src, dst = fs_pair.src_dir / "f", fs_pair.dst_dir / "f"
    src.write_bytes(b"data")
    code = ("import os,sys,signal; signal.signal(signal.SIGPIPE, signal.SIG_DFL); r,w = os.pipe(); os.close(r); "
            "os.dup2(w, 2); os.rename(sys.argv[1], sys.argv[2]); sys.stdout.write('alive')")
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True,
                          env=child_env({"XRENAME_LOG": "stderr"}), timeout=60)
    assert proc.returncode == 0 and proc.stdout == "alive", (proc.returncode, proc.stdout)
    assert dst.read_bytes() == b"data"


def test_a_panic_inside_a_move_prints_nothing_and_gives_the_kernels_exdev(fs_pair, tmp_path):
    """A panic in the library (forced with XRENAME_DEBUG=panic) is caught at
    the C boundary: the program gets EXDEV, nothing changed, and not one
    byte reached its fd 2 (a daemon may use it for data); a log file, if
    any, names it. Panics outside a move still print as usual."""
    src, dst = fs_pair.src_dir / "a", fs_pair.dst_dir / "b"
    src.write_bytes(b"stays\n")
    log = tmp_path / "panic.log"
    run = move_with("os.rename", src, dst, env={"XRENAME_DEBUG": "panic", "XRENAME_LOG": str(log)})
    assert not run.result["ok"] and run.result["errname"] == "EXDEV", run.result
    assert run.stderr == "", f"the panic printed on the program's stderr: {run.stderr!r}"
    assert src.read_bytes() == b"stays\n" and not dst.exists()
    assert entries(fs_pair.dst_dir) == set() and entries(fs_pair.src_dir) == {"a"}
    (line,) = parse_log_lines(log.read_text())
    assert line["result"] == "EXDEV" and "panic" in json.dumps(line), line


def test_a_panic_on_a_thread_of_the_crew_prints_nothing_and_gives_the_kernels_exdev(fs_pair, tmp_path):
    """A panic on one of a tree move's own threads (forced with
    XRENAME_DEBUG=panic-in-thread: it panics as soon as a crew thread copies
    a file) is caught by the crew: the program gets EXDEV, the tree is
    unchanged at the source, nothing is at the destination, and not one
    byte reached the program's fd 2 (the panic hook was silent only on the
    calling thread before)."""
    src, dst = fs_pair.src_dir / "t", fs_pair.dst_dir / "t"
    want = {}
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(300):
            p = src / f"d{d}" / f"f{i}"
            p.write_bytes(b"x" * (i % 7))
            want[p.relative_to(src).as_posix()] = p.read_bytes()
    log = tmp_path / "panic.log"
    env = {"XRENAME_DEBUG": "panic-in-thread", "XRENAME_THREADS": "4", "XRENAME_LOG": str(log)}
    run = move_with("os.rename", src, dst, env=env)
    assert not run.result["ok"] and run.result["errname"] == "EXDEV", run.result
    assert run.stderr == "", f"the panic printed on the program's stderr: {run.stderr!r}"
    got = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert got == want
    assert not dst.exists() and entries(fs_pair.dst_dir) == set() and entries(fs_pair.src_dir) == {"t"}
    (line,) = parse_log_lines(log.read_text())
    assert line["result"] == "EXDEV" and "thread" in json.dumps(line), line
