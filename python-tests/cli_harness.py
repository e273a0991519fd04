"""Helpers for test_cli.py: running the built `xrename` command, small
programs (Python and C) that rename across devices, and mount lookups.

The `xrename` binary itself always starts without LD_PRELOAD and without any
XRENAME_* variable (it sets them for the command it runs).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from xrename_harness import CHILD_TIMEOUT_S, REPO_ROOT, child_env, need

XRENAME = REPO_ROOT / "target" / "release" / "xrename"

# A Python program that renames argv[1] to argv[2] and prints one JSON line:
# the outcome, whether libxrename.so is mapped, and the LD_PRELOAD it saw.
PY_RENAME = r'''
import errno, json, os, sys
def maps():
    with open("/proc/self/maps") as f:
        return sorted({l.split()[-1] for l in f if "/" in l.split()[-1]})
try:
    os.rename(sys.argv[1], sys.argv[2])
    out = {"ok": True}
except OSError as e:
    out = {"ok": False, "errname": errno.errorcode.get(e.errno)}
m = maps()
out["preloaded"] = any("libxrename" in p for p in m)
out["maps"] = m
out["ld_preload"] = os.environ.get("LD_PRELOAD")
out["pid"] = os.getpid()
print(json.dumps(out))
'''

# A C program: rename(argv[1], argv[2]); prints "ok" or the errno name.
C_RENAME = r'''
#include <errno.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: rename SRC DST\n"); return 2; }
    if (rename(argv[1], argv[2]) == 0) { printf("ok\n"); return 0; }
    int e = errno;
    printf("%s\n", e == EXDEV ? "EXDEV" : strerror(e));
    return 1;
}
'''


def xrename_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running the xrename command: no LD_PRELOAD, no XRENAME_*."""
    env = child_env(preload=False)
    env.update(extra or {})
    return env


def run(argv: list, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = CHILD_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                          env=env if env is not None else xrename_env(), cwd=cwd, timeout=timeout)


# Words that are not a command to run.
NOT_A_COMMAND = {"explain", "mv", "clean", "help", "lib", "completions", "man", "-h", "--help", "-V", "--version",
                 "--trace", "--preload"}


def xrename(*args, env: dict[str, str] | None = None, cwd: Path | None = None,
            exe: Path = XRENAME) -> subprocess.CompletedProcess:
    """The command as test_cli.py tests it: running a program with the
    preload (`--preload`, the way in those tests are about). The default,
    tracing, is tested in test_trace.py."""
    if not args or str(args[0]) not in NOT_A_COMMAND:
        args = ("--preload", *args)
    return run([exe, *args], env=env, cwd=cwd)


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"argv: {proc.args}\nexit: {proc.returncode}\n--- stdout ---\n{proc.stdout}"
            f"\n--- stderr ---\n{proc.stderr}")


def write_py_program(d: Path) -> Path:
    p = d / "rename_prog.py"
    p.write_text(PY_RENAME)
    return p


def py_rename_argv(prog: Path, src, dst) -> list[str]:
    return [sys.executable, str(prog), str(src), str(dst)]


def parse_one_json_line(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"program stdout must be exactly its own JSON line, got {stdout!r}"
    return json.loads(lines[0])


def compile_c(d: Path, source: str, name: str, *flags: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    need(cc is not None, "no C compiler (cc/gcc) to build the test programs")
    src = d / f"{name}.c"
    src.write_text(source)
    out = d / name
    proc = subprocess.run([cc, *flags, "-o", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, f"cc {' '.join(flags)} {name}.c failed:\n{proc.stderr}"
    return out


def try_compile_c(d: Path, source: str, name: str, *flags: str) -> tuple[Path | None, str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler"
    src = d / f"{name}.c"
    src.write_text(source)
    out = d / name
    proc = subprocess.run([cc, *flags, "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    return out, ""


def kernel_errno(src, dst) -> int | None:
    """rename() in this (unshimmed) process; None if it succeeded."""
    try:
        os.rename(src, dst)
    except OSError as e:
        return e.errno
    return None


def assert_kernel_exdev(src, dst) -> None:
    """Precondition: the kernel itself refuses this rename with EXDEV (it
    therefore changed nothing)."""
    e = kernel_errno(src, dst)
    assert e == errno.EXDEV, f"precondition: the kernel gave {errno.errorcode.get(e, e)}, want EXDEV"


def fstype(path: Path) -> str:
    proc = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"findmnt -T {path}: {proc.stderr}"
    return proc.stdout.strip().splitlines()[0]


def dead_pid() -> int:
    """A pid with no process: one of our children, already reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    assert not os.path.exists(f"/proc/{p.pid}"), f"pid {p.pid} was reused already"
    return p.pid


def verdict_line(explain_stdout: str) -> str:
    lines = [l for l in explain_stdout.splitlines() if l.startswith("verdict:")]
    assert len(lines) == 1, f"expected exactly one verdict line in:\n{explain_stdout}"
    return lines[0]
