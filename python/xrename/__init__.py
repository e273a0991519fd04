"""xrename: make rename(2) work across filesystems.

The wheel carries two things: the ``xrename`` command (installed among the
environment's scripts by pip) and ``libxrename.so`` (inside this package),
for ``LD_PRELOAD=$(xrename lib) python app.py``.

``python -m xrename CMD ARGS...`` is ``xrename -- CMD ARGS...``; options
and subcommands pass through (``python -m xrename --summary CMD``,
``python -m xrename -- CMD``, ``python -m xrename explain SRC DST``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["library_path", "command_path", "main"]

_HERE = Path(__file__).resolve().parent

# First arguments that are xrename's own, not a command to run.
_SUBCOMMANDS = {"explain", "mv", "clean", "lib", "completions", "help"}


def library_path() -> str:
    """The path of ``libxrename.so`` in this package."""
    path = _HERE / "libxrename.so"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this xrename package was built without its library (use `make wheel`)")
    return str(path)


def command_path() -> str:
    """The ``xrename`` command installed with this package: where the
    installation's record (RECORD) put it, whatever the scheme (a venv,
    ``--user``, ``--prefix``, ``--target``). Never another ``xrename`` found
    on PATH, which could be another version."""
    try:
        from importlib.metadata import distributions
    except ImportError:  # Python < 3.8
        distributions = None
    if distributions is not None:
        for dist in distributions(name="xrename") if _takes_name() else distributions():
            if (dist.metadata["Name"] or "").lower() != "xrename":
                continue
            files = dist.files or []
            # Only the distribution this very package came from.
            if not any(f.name == "__init__.py" and f.parent.name == "xrename"
                       and Path(dist.locate_file(f)).resolve() == Path(__file__).resolve() for f in files):
                continue
            for f in files:
                if f.name == "xrename" and f.parent.name in ("bin", "scripts"):
                    exe = Path(dist.locate_file(f)).resolve()
                    if exe.is_file() and os.access(exe, os.X_OK):
                        return str(exe)
    # Layouts whose record does not point at the script: `pip install
    # --target DIR` (DIR/xrename/ and DIR/bin/), and a prefix
    # (PREFIX/lib/pythonX.Y/site-packages/xrename/ and PREFIX/bin/).
    for exe in (_HERE.parent / "bin" / "xrename", _HERE.parents[3] / "bin" / "xrename"):
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    raise FileNotFoundError(f"the xrename command installed with {_HERE} was not found")


def _takes_name() -> bool:
    return sys.version_info >= (3, 10)


def main(argv: list[str] | None = None) -> int:
    """``python -m xrename ...``: runs this package's ``xrename`` with this
    package's library; a first argument that is not an option or a
    subcommand is the command to run (``--`` is put before it)."""
    args = sys.argv[1:] if argv is None else list(argv)
    env = dict(os.environ)
    try:
        env.setdefault("XRENAME_LIB", library_path())
    except FileNotFoundError:
        pass
    try:
        exe = command_path()
    except FileNotFoundError as e:
        print(f"xrename: {e}", file=sys.stderr)
        return 125
    if args and not args[0].startswith("-") and args[0] not in _SUBCOMMANDS:
        args = ["--", *args]
    os.execve(exe, [exe, *args], env)
    return 127  # not reached
