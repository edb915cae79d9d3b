"""Hyperparameter search: the Optuna studies declared under `tune:` in params.yaml.

A study lives in a storage every worker shares (`studies`): a journal file under
artifacts/<exp>/ by default (safe for several local processes), or an RDB URL for workers on
many machines. Workers (`runner`, `worker` for the command line) claim one trial at a time
under a file lock, so the study finishes exactly `n_trials` trials however many workers join.
A trial (`objective`) resolves its sampled numbers (`search`) into the experiment's params and
trains through the same engine as train@, reporting each epoch to the pruner; the model code
never sees Optuna. Heartbeats find killed workers: their trial is failed and queued again with
the same params. `results` turns a finished study into the stage's outputs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def experimental() -> Iterator[None]:
    """Use Optuna features it marks experimental (heartbeats, stale-trial retries, some
    samplers) without a warning at each call: they are chosen on purpose and pinned."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
