"""Pipeline stages. Each module has `run(...)` (pure, testable) and `main(argv)` for dvc.yaml."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline import cores, distributed, locks, paths, tracking
from pipeline.config import Params, flatten, load_params, require_declared
from pipeline.errors import PipelineError
from pipeline.params.training import TrackingParams
from pipeline.tracking.context import check_artifact_root

# Set by whoever starts the stage through DVC and cannot read its stderr (the Prefect flow):
ERROR_FILE = "PIPELINE_ERROR_FILE"  # the stage's one-line error is also written here
OUTPUT_FILE = "PIPELINE_OUTPUT_FILE"  # and everything it prints (stdout and stderr) here
LOG_FILE = "PIPELINE_LOG_FILE"  # its whole output (its children's too) here, not the terminal
TIMEOUT = "PIPELINE_STAGE_TIMEOUT"  # seconds; then the stage stops and exits TIMEOUT_EXIT
TIMEOUT_EXIT = 128 + signal.SIGALRM
TIMEOUT_GRACE = 60  # seconds to close the MLflow run and the files before a hard exit


@contextlib.contextmanager
def dataset_run(params: Params, stage: str, dataset: str):
    """The MLflow run of a dataset stage, tagged and holding the dataset's params; yields the
    dataset's config and the run."""
    cfg = params.datasets[dataset]
    tags = {"stage": stage, "dataset": dataset, "source": cfg.source}
    with tracking.stage_run(params.defaults.tracking, name=f"{dataset}/{stage}", tags=tags) as run:
        run.log_params(flatten(cfg))
        yield cfg, run


def default_tracking(params: Params, name: str | None) -> TrackingParams:
    """`tracked` for the stages whose run uses `defaults.tracking`."""
    return params.defaults.tracking


def experiment_tracking(params: Params, experiment: str) -> TrackingParams:
    """`tracked` for the stages whose run uses the experiment's tracking settings."""
    return params.experiments[experiment].tracking


def stage_main(
    stage: str,
    run: Callable[[Params, str | None], object],
    argv: list[str] | None,
    *,
    target: str | None,
    tracked: Callable[[Params, str | None], TrackingParams | None] | None = None,
    logs_model: bool = False,
) -> int:
    """Parse `<name> [--params FILE]`, validate params before any work, run, report errors.

    `tracked(params, name)`: the tracking settings the stage's MLflow run will use (None: it
    opens none); its MLflow writer starts first, so that MLflow loads beside the stage's own
    start (tracking/writer.py), with what logging a model needs if the stage `logs_model`.

    `target` is 'dataset', 'experiment' or None (the stage takes no name). Bad input prints
    one message and exits 2 (an MLflow failure: 1, as a crash); SIGTERM ends the stage
    through SystemExit so the MLflow run is closed as KILLED rather than left RUNNING.
    With PIPELINE_STAGE_TIMEOUT set, the stage
    stops the same way once that many seconds have passed, and with PIPELINE_ERROR_FILE set,
    the error that ends it is written to that file as well.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.stages.{stage}")
    if target:
        parser.add_argument("name", help=f"the {target} to run, as named in params.yaml")
    parser.add_argument("--params", default=str(paths.PARAMS), help="params file")
    args = parser.parse_args(argv)
    cores.join()  # before torch and NumPy start their thread pools
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with contextlib.suppress(OSError):  # a stderr without a file (captured): nowhere to print
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it?
    if os.environ.get(LOG_FILE):
        _output_to(os.environ[LOG_FILE])
    if os.environ.get(OUTPUT_FILE):
        _copy_output(os.environ[OUTPUT_FILE])
    if os.environ.get(TIMEOUT):
        _stop_after(float(os.environ[TIMEOUT]))
    name = getattr(args, "name", None)
    label = f"{stage}{'@' + name if name else ''}"
    try:
        params = load_params(args.params)
        if target:
            require_declared(params, target, name, args.params)
        if tracked is not None and distributed.is_main():
            settings = tracked(params, name)
            if settings is not None and settings.enabled:
                check_artifact_root(
                    settings.uri, settings.experiment_name, settings.artifact_location
                )
            tracking.start(settings, logs_model)
        # torchrun's workers run under the lock their launching stage process holds
        held = contextlib.nullcontext() if distributed.in_worker() else None
        with held or locks.stage_lock(f"{stage}@{name}" if name else stage):
            run(params, name)
    except PipelineError as err:
        print(f"error: {label}: {err}", file=sys.stderr)
        _report(f"error: {label}: {err}")
        return 2
    except tracking.TrackingError as err:  # MLflow's traceback is above, from its writer
        print(f"error: {label}: {err}", file=sys.stderr)
        _report(f"error: {label}: {err}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the run is closed as KILLED; no traceback to read
        print(f"{label}: interrupted", file=sys.stderr)
        _report(f"{label}: interrupted")
        return 128 + signal.SIGINT
    except Exception as err:  # a crash: its traceback goes to stderr as usual
        _report(f"{label}: {type(err).__name__}: {err}")
        raise
    finally:
        tracking.discard()
    return 0


class _Tee:
    """A text stream that also writes to a copy; everything else is the stream's own."""

    def __init__(self, stream, copy):
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def _copy_output(path: str) -> None:
    """What this process prints through Python (its lines, logging, progress bars) also goes
    to `path`, line-buffered, as well as to the terminal or DVC's pipe."""
    copy = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    sys.stdout, sys.stderr = _Tee(sys.stdout, copy), _Tee(sys.stderr, copy)


def _output_to(path: str) -> None:
    """Stages running at once would interleave their lines on one terminal: each writes to
    its own file instead, at the file-descriptor level so that what it starts does too."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _report(message: str) -> None:
    if os.environ.get(ERROR_FILE):
        with open(os.environ[ERROR_FILE], "a") as f:
            f.write(message + "\n")


def _stop_after(seconds: float) -> None:
    """SIGALRM after `seconds` ends the stage through SystemExit, as SIGTERM does. A process
    stuck inside a C call never gets to raise it: faulthandler's own thread then prints every
    thread's stack and exits TIMEOUT_GRACE seconds later."""
    signal.signal(signal.SIGALRM, _exit_on_signal)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + TIMEOUT_GRACE, exit=True)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)
