"""One process at a time per stage. DVC does not lock the repository while a stage's command
runs (a second `dvc repro` starts the same stage beside the first), so each stage holds an OS
file lock of its own under artifacts/.locks/ and a second copy stops at once, naming the
first. The OS drops the lock when its holder dies, even by `kill -9`: a stale file blocks
nothing and needs no clean-up."""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import paths
from pipeline.errors import PipelineError

LOCKS = paths.ARTIFACTS / ".locks"


@contextmanager
def stage_lock(name: str) -> Iterator[None]:
    """Hold the lock of stage `name` (e.g. `train@cnn_digits`) or fail naming its holder."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    with (LOCKS / f"{name}.lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise PipelineError(
                f"{name} is already running: {holder}; wait for it to end or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({_command()})")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _command() -> str:
    """This process's command line as typed (`python -m pipeline.stages.train x`)."""
    try:
        return Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return " ".join([Path(sys.executable).name, *sys.argv])


def running() -> dict[str, str]:
    """The stages running now in this project: name -> 'pid N (command)'."""
    out = {}
    for path in sorted(LOCKS.glob("*.lock")):
        with path.open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                out[path.stem] = f.read().strip()
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
    return out
