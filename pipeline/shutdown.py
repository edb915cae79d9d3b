"""How a pipeline process ends."""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

# what stops a stage: Ctrl-C, `kill`/DVC/Prefect, the stage timeout (stages/__init__.py)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)


def exit(code: int) -> NoReturn:  # noqa: A001 - used as shutdown.exit(code)
    """`sys.exit(code)` without the interpreter's last garbage collection.

    On exit Python collects every object still alive; once torch, MLflow and DVC are imported
    that is millions of objects: 0.7 s after `import torch, torch._dynamo` and 1.3-1.5 s with
    MLflow as well (measured here: the same imports, then exit vs os._exit). Freezing them
    first skips that collection. Exit handlers
    still run, files and connections are closed as usual and the OS frees the memory, so this
    only belongs where the process ends.
    """
    gc.freeze()
    sys.exit(code)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """A stop signal that arrives inside the block takes effect when the block ends.

    For writes to the tracking store. Interrupted inside an SQLite transaction, a write leaves
    its connection holding the database's write lock; the process could then not mark its
    own run KILLED (it waited for that lock for 50 s under load, then failed with "database is
    locked", leaving the run RUNNING). Python runs signal handlers in the main thread only, so
    other threads need nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    before = {s: signal.signal(s, lambda signum, _: held.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])  # its own handler runs now


def holding_signals(fn):
    """`fn` with stop signals held while it runs (see signals_held)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with signals_held():
            return fn(*args, **kwargs)

    return wrapper
