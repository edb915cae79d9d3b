"""Pipeline stages. Each module has `run(...)` (pure, testable) and `main(argv)` for dvc.yaml."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable

from pipeline import distributed, locks, paths
from pipeline.config import Params, load_params, require_declared
from pipeline.errors import PipelineError


def stage_main(
    stage: str,
    run: Callable[[Params, str | None], object],
    argv: list[str] | None,
    *,
    target: str | None,
) -> int:
    """Parse `<name> [--params FILE]`, validate params before any work, run, report errors.

    `target` is 'dataset', 'experiment' or None (the stage takes no name). Bad input prints
    one message and exits 2; SIGTERM ends the stage through SystemExit so the MLflow run is
    closed as KILLED rather than left RUNNING.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{stage}")
    if target:
        parser.add_argument("name", help=f"the {target} to run, as named in params.yaml")
    parser.add_argument("--params", default=str(paths.PARAMS), help="params file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    name = getattr(args, "name", None)
    try:
        params = load_params(args.params)
        if target:
            require_declared(params, target, name, args.params)
        # torchrun's workers run under the lock their launching stage process holds
        held = contextlib.nullcontext() if distributed.in_worker() else None
        with held or locks.stage_lock(f"{stage}@{name}" if name else stage):
            run(params, name)
    except PipelineError as err:
        print(f"error: {stage}{'@' + name if name else ''}: {err}", file=sys.stderr)
        return 2
    return 0


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
