"""`python -m pipeline.tuning.worker --experiment X`: join an experiment's study as one worker.

The tune@X stage creates the study and starts its local workers with this module; run it on
other machines (same code and params.yaml, `tune.storage` pointing at a shared database) to add
workers there. A worker claims trials until the study has `n_trials`, then exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from pipeline import cores, paths
from pipeline.config import ExperimentParams, load_params, require_declared
from pipeline.errors import PipelineError
from pipeline.tuning import launch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tuning.worker")
    parser.add_argument("--experiment", required=True, help="as named in params.yaml")
    parser.add_argument("--params", default=str(paths.PARAMS), help="params file")
    parser.add_argument("--storage", help="default: the experiment's tune.storage or journal")
    parser.add_argument("--study", help="default: the study name params.yaml implies")
    parser.add_argument("--worker", type=int, help="index; seeds the sampler (default: pid)")
    parser.add_argument("--deadline", type=float, help="unix time after which no trial starts")
    parser.add_argument(
        "--wait",
        type=float,
        default=0,
        help="seconds to wait for the tune@ stage to create the study",
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)  # the stage's resolved experiment
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # the stage that started it
    args = parser.parse_args(argv)
    cores.join()  # before torch starts its threads: the stage's share, or this machine's
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.parent:
        launch.exit_with(args.parent)
    try:
        if args.config:
            exp = ExperimentParams.model_validate_json(args.config)
        else:
            params = load_params(args.params)
            require_declared(params, "experiment", args.experiment, args.params)
            exp = params.experiments[args.experiment]
        if not exp.tune.enabled:
            raise PipelineError(f"experiments.{args.experiment}.tune.enabled is false")
        from pipeline.tuning import runner, studies

        url = args.storage or studies.storage_url(args.experiment, exp.tune)
        name = args.study or studies.study_name(args.experiment, exp)
        worker = os.getpid() if args.worker is None else args.worker
        if args.wait:
            print(
                f"tune worker {worker}: waiting up to {args.wait:g} s for study {name}",
                file=sys.stderr,
                flush=True,
            )
            studies.wait_for_study(url, name, args.wait, exp.tune.heartbeat_seconds)
        try:
            ran = runner.work(args.experiment, exp, url, name, worker, args.deadline)
        except KeyError:
            raise PipelineError(
                f"no study {name!r} in {url}; `dvc repro tune@{args.experiment}` creates it"
            ) from None
    except PipelineError as err:
        print(f"error: tune worker: {err}", file=sys.stderr)
        return 2
    print(f"tune worker {worker}: ran {ran} trials of {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
