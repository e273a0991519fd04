"""The move protocol seen through strace: the destination name only ever
appears atomically, after the new data was fsynced, and the source is
unlinked only after that.  Implementation-agnostic: any temp scheme
(named `.xrename-*` temp or O_TMPFILE), any of link/rename to install."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from xrename_harness import assert_ok, entries, need, random_bytes, run_child

SYSCALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|\?)")


def parse_strace(text: str) -> list[tuple[str, str, str]]:
    calls = []
    for line in text.splitlines():
        m = SYSCALL.match(line)
        if m:
            calls.append((m["name"], m["args"], m["ret"]))
    return calls


def quoted(args: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', args)


def is_name(path: str | None, name: str) -> bool:
    return path is not None and (path == name or path.endswith("/" + name))


def names_arg(args: str, name: str) -> bool:
    """True if one of the quoted path arguments is `name` (or ends in /name)."""
    return any(is_name(p, name) for p in quoted(args))


def last_path(args: str) -> str | None:
    """The new path of link/rename-family calls is their last path argument."""
    q = quoted(args)
    return q[-1] if q else None


@pytest.mark.parametrize("existing_destination", [False, True], ids=["new-destination", "existing-destination"])
def test_destination_appears_atomically_after_fsync_and_source_is_unlinked_last(
        fs_pair, tmp_path, existing_destination):
    need(shutil.which("strace") is not None, "strace not installed")
    probe = subprocess.run(["strace", "-qq", "-o", "/dev/null", "true"], capture_output=True, text=True)
    need(probe.returncode == 0, f"strace cannot trace here: {probe.stderr.strip()}")

    data = random_bytes(300_000, seed=90)
    src = fs_pair.src_dir / "proto-src.bin"
    src.write_bytes(data)
    dst = fs_pair.dst_dir / "proto-dst.bin"
    if existing_destination:
        dst.write_bytes(b"old")
    trace = tmp_path / "strace.txt"

    run = run_child('RESULTS.append(attempt(os.rename, ARGS["src"], ARGS["dst"]))',
                    {"src": str(src), "dst": str(dst)}, strace_to=trace)

    assert_ok(run)
    assert dst.read_bytes() == data and not src.exists()
    assert entries(fs_pair.dst_dir) == {"proto-dst.bin"}

    calls = parse_strace(trace.read_text())
    # Start where the kernel refused the caller's rename with EXDEV.
    start = next((i for i, (n, a, r) in enumerate(calls)
                  if n in ("rename", "renameat", "renameat2") and r == "-1"
                  and names_arg(a, "proto-src.bin")), None)
    assert start is not None, "no failed rename of the source in the trace"
    after = calls[start + 1:]

    def fmt(c):
        return f"{c[0]}({c[1][:200]}) = {c[2]}"

    # The destination name is never opened for writing in place.
    for c in after:
        if c[0] in ("open", "openat", "openat2", "creat") and names_arg(c[1], "proto-dst.bin"):
            assert "O_CREAT" not in c[1] and "O_TRUNC" not in c[1] and "O_WRONLY" not in c[1] \
                and "O_RDWR" not in c[1], f"destination written in place: {fmt(c)}"

    installs = [i for i, c in enumerate(after)
                if c[0] in ("link", "linkat", "rename", "renameat", "renameat2") and c[2] == "0"
                and is_name(last_path(c[1]), "proto-dst.bin")]
    assert len(installs) == 1, "expected exactly one successful link/rename onto the destination, got:\n" + \
        "\n".join(fmt(after[i]) for i in installs)
    install = installs[0]

    syncs = [i for i, c in enumerate(after[:install]) if c[0] in ("fsync", "fdatasync") and c[2] == "0"]
    assert syncs, "no fsync/fdatasync before the destination was installed:\n" + \
        "\n".join(fmt(c) for c in after[:install + 1])

    # The source name goes either by an unlink, or by a rename aside to a
    # hidden name that is then unlinked: both count as its removal.
    asides = [quoted(c[1])[-1] for c in after if c[0] in ("rename", "renameat", "renameat2") and c[2] == "0"
              and names_arg(c[1], "proto-src.bin") and not is_name(last_path(c[1]), "proto-dst.bin")]
    unlinks = [i for i, c in enumerate(after) if c[0] in ("unlink", "unlinkat") and c[2] == "0"
               and (names_arg(c[1], "proto-src.bin") or any(names_arg(c[1], a.rsplit("/", 1)[-1]) for a in asides))]
    unlinks += [i for i, c in enumerate(after) if c[0] in ("rename", "renameat", "renameat2") and c[2] == "0"
                and names_arg(c[1], "proto-src.bin") and not is_name(last_path(c[1]), "proto-dst.bin")]
    assert unlinks, "source was never unlinked by a syscall"
    assert all(i > install for i in unlinks), "source unlinked before the destination was installed:\n" + \
        "\n".join(fmt(c) for c in after)

    # The new name is made durable (fsync of the destination directory)
    # before the source goes, and the removal is made durable after.
    first_unlink = min(unlinks)
    assert any(c[0] == "fsync" and c[2] == "0" for c in after[install + 1:first_unlink]), \
        "no fsync between the install and the removal of the source:\n" + "\n".join(fmt(c) for c in after)
    assert any(c[0] == "fsync" and c[2] == "0" for c in after[max(unlinks) + 1:]), \
        "no fsync after the removal of the source:\n" + "\n".join(fmt(c) for c in after)
