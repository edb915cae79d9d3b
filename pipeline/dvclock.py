"""Who holds the repository's DVC lock. DVC refuses a second `dvc repro` with "Unable to
acquire lock" and no name; the pipeline's own commands name the process instead.

DVC locks `.dvc/tmp/lock` with an OS file lock and writes the holder's pid into it. The OS
drops the lock when the holder dies, even by `kill -9`, so a stale file blocks nothing."""

from __future__ import annotations

import os
from pathlib import Path


def lock_holder(root: str | Path = ".") -> str | None:
    """'pid N (command line)' of the live process holding the DVC lock of `root`, or None."""
    path = Path(root) / ".dvc" / "tmp" / "lock"
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):  # no lock file, no pid, or its process is gone
        return None
    if not _locked(path):
        return None  # the pid was reused by an unrelated process
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        command = "command unknown"
    return f"pid {pid} ({command})"


def _locked(path: Path) -> bool:
    """Whether some process holds the OS lock on `path` (probed without taking it)."""
    import fcntl

    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
