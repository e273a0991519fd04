"""xrename: make rename(2) work across filesystems.

The wheel carries two things: the ``xrename`` command (installed on PATH
by pip) and ``libxrename.so`` (inside this package), for
``LD_PRELOAD=$(xrename lib) python app.py``.

``python -m xrename CMD ARGS...`` is ``xrename -- CMD ARGS...``.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = ["library_path", "command_path"]


def library_path() -> str:
    """The path of ``libxrename.so`` in this package."""
    path = Path(__file__).resolve().parent / "libxrename.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this xrename package was built without its library (use `make wheel`)")
    return str(path)


def command_path() -> str:
    """The ``xrename`` command installed with this package."""
    candidates = []
    # The scripts directory of the scheme this package was installed with
    # (a venv, --user, the system), then PATH.
    for scheme in {sysconfig.get_default_scheme(), f"{os.name}_user"}:
        try:
            candidates.append(Path(sysconfig.get_path("scripts", scheme)) / "xrename")
        except KeyError:
            pass
    # pip --target or --prefix: bin/ beside lib/pythonX.Y/site-packages.
    candidates.append(Path(__file__).resolve().parents[3] / "bin" / "xrename")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("xrename")
    if found:
        return found
    raise FileNotFoundError("the xrename command is not installed beside this package")


def main(argv: list[str] | None = None) -> int:
    """``python -m xrename CMD ARGS...``: runs ``xrename -- CMD ARGS...``,
    with this package's library."""
    args = sys.argv[1:] if argv is None else argv
    env = dict(os.environ)
    try:
        env.setdefault("XRENAME_LIB", library_path())
    except FileNotFoundError:
        pass
    exe = command_path()
    argv = [exe, "--", *args] if args else [exe, "--help"]
    os.execve(exe, argv, env)
    return 127  # not reached
