"""`python -m pipeline check [--params FILE]`: validate params.yaml and print the stage plan.

Light on purpose: it imports no torch, mlflow or dvc, so it answers in well under a second.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import paths
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError


def plan(params: Params) -> list[str]:
    """The stages `dvc repro` defines for these params, in run order."""
    lines = []
    for name, ds in params.datasets.items():
        lines.append(f"ingest@{name}        source={ds.source} -> {paths.raw_dir(name)}")
        lines.append(
            f"preprocess@{name}    split val={ds.split.val} test={ds.split.test} "
            f"-> {paths.processed_dir(name)}"
        )
    for name, exp in params.experiments.items():
        lines.append(
            f"train@{name}    model={exp.model.name} dataset={exp.dataset} "
            f"epochs={exp.train.epochs} -> {paths.model_file(name)}"
        )
        lines.append(f"evaluate@{name} test split -> {paths.metrics_file(name)}")
    lines.append(f"report        {len(params.experiments)} experiments -> {paths.REPORT_HTML}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate params.yaml and print the stage plan")
    check.add_argument("--params", default=str(paths.PARAMS))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.params} is valid: {len(params.datasets)} datasets, "
        f"{len(params.experiments)} experiments"
    )
    print("stages (`dvc status` shows which are out of date):")
    for line in plan(params):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
