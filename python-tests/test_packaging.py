"""Installing xrename the way people install tools: the Python wheel
(`make wheel`) into a fresh virtual environment, and the Debian package
(`make deb`) with dpkg, then a real cross-device `os.rename` through each
way in, and (for the .deb) removal that leaves nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli_harness import describe, run
from xrename_harness import IN_CI, PRIVILEGED, REPO_ROOT, entries, need

PY_PROG = """
import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError as e:
    print(e.errno)
    sys.exit(e.errno)
print("ok")
"""


def newest_glibc(path: Path) -> tuple[int, int]:
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(x) for x in m.split(".")) for m in re.findall(r"GLIBC_(2\.\d+)", out)}
    return max(versions)


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("XRENAME_")}
    env.update(extra)
    return env


def check_moves(p, tmp_path: Path, argv_for) -> None:
    """For each way in, a fresh file crosses devices: 0, whole at the
    destination, gone from the source. Without xrename: EXDEV."""
    prog = tmp_path / "rename.py"
    prog.write_text(PY_PROG)
    src, dst = p.src_dir / "f", p.dst_dir / "f"
    for way, (argv, env) in argv_for(prog, src, dst).items():
        data = os.urandom(100_000)
        src.write_bytes(data)
        if way == "plain":
            proc = run(argv, env=env)
            assert proc.returncode == 18, f"without xrename: EXDEV expected\n{describe(proc)}"
            src.unlink()
            continue
        proc = run(argv, env=env)
        assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), f"{way}:\n{describe(proc)}"
        assert not src.exists() and dst.read_bytes() == data, way
        dst.unlink()
    assert entries(p.src_dir) == set() and entries(p.dst_dir) == set()


def test_the_wheel_installs_into_a_fresh_venv_and_moves_across_devices(fs_pair, tmp_path):
    """`make wheel`, `pip install` into a new venv (no index), then
    `xrename -- python`, `LD_PRELOAD=$(xrename lib) python` and
    `python -m xrename python`. The platform tag claims exactly the newest
    glibc either binary in the wheel needs."""
    need(shutil.which("objdump") is not None, "objdump missing (binutils)")
    proc = subprocess.run(["bash", "scripts/wheel.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, describe(proc)
    wheel = Path(REPO_ROOT / proc.stdout.strip().splitlines()[-1])
    tag = re.search(r"manylinux_(\d+)_(\d+)_x86_64\.whl$", wheel.name)
    assert tag, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "xrename/libxrename.so" in names and any(n.endswith(".data/scripts/xrename") for n in names), names
        z.extractall(tmp_path / "unpacked")
    binaries = [tmp_path / "unpacked" / n for n in names if n.endswith(("libxrename.so", "scripts/xrename"))]
    assert max(newest_glibc(b) for b in binaries) == (int(tag[1]), int(tag[2])), \
        f"{wheel.name}: the tag does not say the glibc the binaries need"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--quiet", str(wheel)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, describe(pip)
    py, xr = str(venv / "bin" / "python"), str(venv / "bin" / "xrename")
    lib = run([xr, "lib"], env=clean_env())
    assert lib.returncode == 0, describe(lib)
    libpath = Path(lib.stdout.strip())
    assert libpath.is_file() and venv in libpath.parents, f"not the venv's library: {libpath}"
    check_moves(fs_pair, tmp_path, lambda prog, src, dst: {
        "plain": ([py, prog, src, dst], clean_env()),
        "xrename --": ([xr, "--", py, prog, src, dst], clean_env()),
        "LD_PRELOAD": ([py, prog, src, dst], clean_env(LD_PRELOAD=str(libpath))),
        "python -m xrename": ([py, "-m", "xrename", py, prog, src, dst], clean_env()),
        "python -m xrename --summary --": ([py, "-m", "xrename", "--summary", "--", py, prog, src, dst], clean_env()),
    })
    # Options and subcommands pass through; help and version are xrename's.
    for argv, code in ((["--version"], 0), (["--help"], 0), (["lib"], 0), (["--bogus"], 125)):
        proc = run([py, "-m", "xrename", *argv], env=clean_env())
        assert proc.returncode == code, describe(proc)
    assert run([py, "-m", "xrename", "lib"], env=clean_env()).stdout.strip() == str(libpath)

    # pip install --target DIR and --prefix DIR: the package finds its own
    # command and library (never another xrename on PATH).
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "xrename").write_text("#!/bin/sh\necho FAKE\nexit 99\n")
    (fake / "xrename").chmod(0o755)
    for how in ("--target", "--prefix"):
        where = tmp_path / how.strip("-")
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--quiet", "--ignore-installed", how, str(where),
                              str(wheel)],
                             capture_output=True, text=True)
        assert pip.returncode == 0, describe(pip)
        site = where if how == "--target" else next(where.glob("lib/python3*/site-packages"))
        env = clean_env(PYTHONPATH=str(site), PATH=f"{fake}:{os.environ['PATH']}")
        proc = run([py, "-m", "xrename", "true"], env=env)
        assert proc.returncode == 0 and "FAKE" not in proc.stdout, f"{how}: {describe(proc)}"
        proc = run([str(where / "bin" / "xrename"), "lib"], env=clean_env())
        assert proc.returncode == 0 and Path(proc.stdout.strip()).is_file(), f"{how}: {describe(proc)}"

    # The oldest Python the package says it supports, where there is one.
    for old in sorted(Path("/root/.pyenv/versions").glob("3.[89].*")) if Path("/root/.pyenv/versions").is_dir() else []:
        v = tmp_path / f"venv-{old.name}"
        subprocess.run([str(old / "bin" / "python"), "-m", "venv", str(v)], check=True)
        pip = subprocess.run([str(v / "bin" / "pip"), "install", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True)
        assert pip.returncode == 0, describe(pip)
        proc = run([str(v / "bin" / "python"), "-m", "xrename", "true"], env=clean_env())
        assert proc.returncode == 0, f"python {old.name}: {describe(proc)}"


DEB_ARCH_DIR = "/usr/lib/x86_64-linux-gnu/xrename"


def test_the_deb_installs_works_and_is_removed_without_a_trace(fs_pair, tmp_path):
    """`make deb`, `dpkg -i` as root: /usr/bin/xrename, the library under
    /usr/lib/<multiarch>/xrename/, man pages `man` finds, bash completion;
    cross-device moves through `xrename --` and `LD_PRELOAD=$(xrename
    lib)`; then `dpkg -r` leaves none of its files."""
    need(PRIVILEGED, "dpkg -i needs root")
    need(shutil.which("dpkg-deb") is not None, "dpkg-deb missing")
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "xrename"], capture_output=True, text=True)
    if "installed" in installed.stdout and "not-installed" not in installed.stdout:
        pytest.fail("a package named xrename is already installed here: the test would replace it")
    proc = subprocess.run(["bash", "scripts/deb.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, describe(proc)
    deb = REPO_ROOT / proc.stdout.strip().splitlines()[-1]
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = [l.split()[-1].lstrip(".") for l in listing.splitlines() if not l.startswith("d")]
    assert "/usr/bin/xrename" in files and f"{DEB_ARCH_DIR}/libxrename.so" in files, files
    proc = run(["dpkg", "-i", deb])
    assert proc.returncode == 0, describe(proc)
    try:
        lib = run(["/usr/bin/xrename", "lib"], env=clean_env())
        assert lib.stdout.strip() == f"{DEB_ARCH_DIR}/libxrename.so", describe(lib)
        py = sys.executable
        check_moves(fs_pair, tmp_path, lambda prog, src, dst: {
            "plain": ([py, prog, src, dst], clean_env()),
            "xrename --": (["/usr/bin/xrename", "--", py, prog, src, dst], clean_env()),
            "LD_PRELOAD": ([py, prog, src, dst], clean_env(LD_PRELOAD=lib.stdout.strip())),
        })
        if shutil.which("man"):
            for section, page in (("1", "xrename"), ("1", "xrename-mv"), ("7", "libxrename")):
                found = run(["man", "-w", section, page], env=clean_env(MANPATH="/usr/share/man"))
                assert found.returncode == 0 and found.stdout.startswith("/usr/share/man/"), describe(found)
                shown = run(["man", "--warnings", section, page], env=clean_env(MANPATH="/usr/share/man", MANWIDTH="80"))
                assert shown.returncode == 0 and page.upper() in shown.stdout.upper(), describe(shown)
        elif IN_CI:
            pytest.fail("man missing in CI")
        probe = run(["bash", "--norc", "-c",
                     "source /usr/share/bash-completion/completions/xrename && complete -p xrename"])
        assert "_xrename" in probe.stdout, describe(probe)
    finally:
        removed = run(["dpkg", "-r", "xrename"])
    assert removed.returncode == 0, describe(removed)
    left = [f for f in files if os.path.lexists(f)]
    assert not left, f"left after dpkg -r: {left}"
    assert not os.path.lexists(DEB_ARCH_DIR), "the library's directory is left"
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "xrename"], capture_output=True, text=True)
    assert "not-installed" in status.stdout or status.returncode != 0, status.stdout
