"""`python -m pipeline check [--params FILE]`: validate params.yaml and print the stage plan.
`python -m pipeline run [-j N] [TARGETS...]`: the pipeline with independent stages at once.
`python -m pipeline predict ...`: batch inference with a registered model.
`python -m pipeline serve`: serve the Prefect flows (retrain on `schedule.cron`); see flows.py.
`python -m pipeline verify-determinism <experiment>`: train and evaluate twice, diff the outputs.
`python -m pipeline params-doc`: print the params.yaml reference (docs/params.md).
`python -m pipeline compare [EXPERIMENT...]`: DVC experiments side by side, a line per experiment.

Light on purpose: it imports no torch or mlflow. Which stages are out of date comes from DVC's
own status, asked in this process: a `dvc status` subprocess costs a second Python start-up
and DVC's command-line set-up on top (skip it with --no-status).
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import cores, locks, paths
from pipeline.config import Params, data_stage, dataset_params, load_params, require_declared
from pipeline.errors import PipelineError


def plan(params: Params) -> list[tuple[str, str]]:
    """(stage, what it does) for every stage `dvc repro` defines, in run order."""
    from pipeline.config import judged_by

    stages = [
        (
            "plan",
            f"which datasets need a judge, what each search depends on -> {paths.JUDGE_PLAN}, "
            f"{paths.TUNE_PLAN}",
        )
    ]
    for name, ds in params.datasets.items():
        stages.append((f"ingest@{name}", f"source={ds.source} -> {paths.raw_dir(name)}"))
        stages.append(
            (
                f"preprocess@{name}",
                f"split val={ds.split.val} test={ds.split.test} -> {paths.processed_dir(name)}",
            )
        )
        judged = judged_by(params, name)
        stages.append(
            (
                f"judge@{name}",
                f"scores {len(judged)} generative experiment(s) -> {paths.judge_dir(name)}"
                if judged
                else "no generative experiment uses it: nothing to train",
            )
        )
    # experiments on synthetic datasets last: their data waits for a generator's training
    ordered = sorted(params.experiments.items(), key=lambda e: e[1].dataset in params.synthetic)
    for name, exp in ordered:
        made = params.synthetic.get(exp.dataset)
        if made is not None and f"synthesize@{exp.dataset}" not in dict(stages):
            stages.append(
                (
                    f"synthesize@{exp.dataset}",
                    f"{made.base} + {made.per_class} images a class by {made.from_} "
                    f"-> {paths.processed_dir(exp.dataset)}",
                )
            )
        tune = exp.tune
        stages.append(
            (
                f"tune@{name}",
                f"{tune.n_trials} trials, {tune.sampler}/{tune.pruner}, {tune.workers} worker(s) "
                f"-> {paths.tuned_file(name)}"
                if tune.enabled
                else f"tuning off -> empty {paths.tuned_file(name)}",
            )
        )
        stages.append(
            (
                f"train@{name}",
                f"model={exp.model.name} dataset={exp.dataset} "
                f"epochs={exp.train.epochs} -> {paths.model_file(name)}",
            )
        )
        stages.append((f"evaluate@{name}", f"test split -> {paths.metrics_file(name)}"))
    stages.append(("report", f"{len(params.experiments)} experiments -> {paths.REPORT_HTML}"))
    return stages


def data_plan(params: Params) -> list[str]:
    """Per dataset: the processed inputs' size on disk (or an estimate before preprocess),
    train+val's size in memory as models take it (images: float32, 4x their uint8 pixels on
    disk) and, per experiment, whether training holds it in memory or reads it from disk."""
    from pipeline.data import datasets

    lines = []
    # a synthetic dataset: its base's estimate until synthesized (then its own files)
    every = {**params.datasets, **{n: dataset_params(params, n) for n in params.synthetic}}
    for name, cfg in every.items():
        size, held, exact = datasets.expected_inputs_bytes(name, cfg)
        if size is None:
            lines.append(f"  {name}: size known once ingested")
            continue
        train_val = (
            datasets.inputs_bytes(name)
            if exact
            else round(held * (1 - cfg.split.test))  # a source's own test set: about
        )
        taken: dict[str, list[str]] = {}  # path (and budget) -> experiments
        for exp_name, exp in params.experiments.items():
            if exp.dataset == name:
                budget = datasets.memory_budget(exp.data)
                workers = exp.data.workers()
                where = (
                    "in memory"
                    if train_val <= budget
                    else f"from disk by {workers} DataLoader worker(s)"
                    if workers
                    else "from disk, read by the training process"
                )
                taken.setdefault(f"{where} (budget {_mb(budget)})", []).append(exp_name)
        about = "" if exact else "~"
        lines.append(
            f"  {name}: {about}{_mb(size)} of inputs on disk, train+val {about}"
            f"{_mb(train_val)} in memory"
        )
        lines += [f"    {', '.join(names)}: {where}" for where, names in taken.items()]
    return lines


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def stages_to_run(params: Params, changed: set[str]) -> set[str]:
    """`changed` (stages DVC reports out of date) plus every stage downstream of them. The
    plan's files change only where an answer does: judge@ and tune@ follow them, not the
    plan stage itself."""
    from pipeline.stages.plan import judge_plan, tune_plan

    out = set(changed)
    for name in params.datasets:
        if f"ingest@{name}" in out:
            out.add(f"preprocess@{name}")
        if f"preprocess@{name}" in out or (
            "plan" in out and _planned(paths.judge_plan_file(name)) != judge_plan(params, name)
        ):
            out.add(f"judge@{name}")
    before = None
    while out != before:  # a synthetic dataset follows its generator's training
        before = set(out)
        for name, made in params.synthetic.items():
            if f"preprocess@{made.base}" in out or f"train@{made.from_}" in out:
                out.add(f"synthesize@{name}")
        for name, exp in params.experiments.items():
            data = data_stage(params, exp.dataset)
            if data in out or (
                "plan" in out and _planned(paths.tune_plan_file(name)) != tune_plan(exp)
            ):
                out.add(f"tune@{name}")
            if f"tune@{name}" in out or data in out:
                out.add(f"train@{name}")
            if f"train@{name}" in out or f"judge@{exp.dataset}" in out:
                out.add(f"evaluate@{name}")
            if f"evaluate@{name}" in out or f"tune@{name}" in out:
                out.add("report")
    return out


def _planned(path) -> dict | None:
    """What the plan stage wrote last in `path` (None: nothing yet)."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dvc_changed_stages(params_file: str) -> set[str] | None:
    """Stages DVC reports out of date (what `dvc status` lists), or None when DVC cannot tell:
    no repository here, the repository locked by a running `dvc repro`, or another failure."""
    if params_file != str(paths.PARAMS):
        return None  # dvc.yaml reads params.yaml; another file has no status to compare
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError:
        return None
    try:
        with Repo() as repo:
            return set(repo.status())
    except DvcException:  # the plan is still printed, without the marks
        return None


def run_command(args) -> int:
    """Validate, ask DVC what is stale (and stop there when nothing is), then run the stages
    through the Prefect flow, `-j` at a time."""
    import time

    from pipeline import parallel
    from pipeline.tracking.context import INVOCATION_ENV, invocation_name

    start = time.monotonic()
    # every stage's MLflow run is tagged with it (each stage is its own `dvc` call)
    os.environ.setdefault(INVOCATION_ENV, invocation_name("pipeline run", time.time(), os.getpid()))
    # before Prefect is imported (it reads them then): the flow's and tasks' own INFO lines
    # stay in Prefect (its UI, its API), as the board says what runs
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL"):
        # no server configured: Prefect starts a temporary one for this run; its database
        # stays in the project (.prefect/, as `make serve` keeps it), and it sends nothing out
        os.environ.setdefault("PREFECT_HOME", os.path.abspath(".prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Prefect waits 20 s for it by default; on a loaded 2-core machine its start-up
        # (7-14 s idle) has taken longer, and failing the whole run for that helps nobody
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    try:
        load_params(paths.PARAMS)  # what dvc.yaml reads
        graph = parallel.stage_graph(".", args.targets or None)
        gpus = parallel.visible_gpus()
        jobs = args.jobs or parallel.default_jobs(gpus)
        slots = parallel.Slots(jobs, gpus, args.gpus_per_stage, args.stages_per_gpu)
    except (PipelineError, ValueError) as err:
        print(f"error: run: {err}", file=sys.stderr)
        return 2
    if not parallel.stale(".", list(graph)):
        print(f"run: all {len(graph)} stages are up to date; nothing to run")
        return 0
    where = f"{len(slots.gpus)} GPU(s), " if slots.gpus else ""
    print(f"run: {len(graph)} stages, up to {jobs} at a time ({where}{cores.available()} cores)")
    print(f"run: each stage's output goes to {parallel.LOGS}/<stage>.log")
    from pipeline.flows import pipeline_flow

    state = pipeline_flow(
        targets=args.targets or None,
        retries=args.retries,
        jobs=jobs,
        gpus_per_stage=args.gpus_per_stage,
        stages_per_gpu=args.stages_per_gpu,
        live=None,
        return_state=True,
    )
    seconds = time.monotonic() - start
    if not state.is_completed():
        print(f"error: run: {state.result(raise_on_failure=False)}", file=sys.stderr)
        print(f"run: failed after {seconds:.1f} s", file=sys.stderr)
        return 1
    ran = sum(r["ran"] for r in state.result())
    print(f"run: {ran} stage(s) ran, {len(graph) - ran} up to date, in {seconds:.1f} s")
    return 0


def predict_command(args) -> int:
    from pipeline import predict

    try:
        uri = args.tracking_uri or load_params(args.params).defaults.tracking.uri
        count = predict.run(args.model, args.input, args.output, uri, args.device, args.array)
    except PipelineError as err:
        print(f"error: predict: {err}", file=sys.stderr)
        return 2
    print(f"{count} predictions -> {args.output}")
    return 0


def serve_command(args) -> int:
    from pipeline import flows

    try:
        if args.check:
            return check_schedule_command(args)
        flows.serve(args.params, wait=args.wait)
    except PipelineError as err:
        print(f"error: serve: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how serving ends
        print("serve: stopped", file=sys.stderr)
    return 0


def check_schedule_command(args) -> int:
    from pipeline import flows

    runs = flows.check_schedule(args.params, wait=args.wait or 30)
    print(f"{flows.RETRAIN}: the server has scheduled the next runs:")
    for run in runs[:5]:
        print(f"  {run.expected_start_time.isoformat()}  {run.state_name}  {run.name}")
    return 0


def verify_command(args) -> int:
    from pipeline import verify

    try:
        params = load_params(args.params)
        require_declared(params, "experiment", args.experiment, args.params)
        return verify.run(params, args.experiment, args.epochs)
    except PipelineError as err:
        print(f"error: verify-determinism: {err}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="The pipeline's own commands beside DVC's: check params.yaml, run the "
        "stages with independent ones at once, predict with a registered model, serve the "
        "Prefect flows. `dvc repro` runs the same stages one at a time.",
        epilog="The stages themselves: python -m pipeline.stages.<stage> <dataset|experiment>; "
        "params.yaml's keys: docs/params.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate params.yaml and print the stage plan")
    check.add_argument("--params", default=str(paths.PARAMS))
    check.add_argument(
        "--no-status",
        dest="status",
        action="store_false",
        help="skip asking DVC which stages are out of date",
    )
    run = sub.add_parser(
        "run",
        help="run the DVC pipeline with independent stages at once; DVC decides what is "
        "stale and writes dvc.lock, as `dvc repro` does",
    )
    run.add_argument("targets", nargs="*", help="stages to run with what they need (default: all)")
    run.add_argument(
        "-j",
        "--jobs",
        type=int,
        help="stages at once (default: the number of GPUs, or of CPU cores and at least 2)",
    )
    run.add_argument("--gpus-per-stage", type=int, default=1, help="GPUs each GPU stage gets")
    run.add_argument(
        "--stages-per-gpu", type=int, default=1, help="GPU stages sharing one GPU (small models)"
    )
    run.add_argument(
        "--retries",
        type=int,
        default=0,
        help="times a stage is retried after a failure that is not bad input",
    )
    pred = sub.add_parser("predict", help="batch inference with a model from MLflow")
    pred.add_argument("--model", required=True, help="e.g. models:/dl-pipeline.cnn_digits@champion")
    pred.add_argument(
        "--input",
        required=True,
        help="raw rows: .csv or .parquet (the dataset's columns), .npy/.npz, or an image folder",
    )
    pred.add_argument("--array", help="which array of an .npz file (default: its only one)")
    pred.add_argument("--output", required=True, help="CSV of predictions")
    pred.add_argument("--tracking-uri", help="default: defaults.tracking.uri of --params")
    pred.add_argument("--params", default=str(paths.PARAMS))
    pred.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    serve = sub.add_parser("serve", help="serve the Prefect flows; needs PREFECT_API_URL")
    serve.add_argument("--params", default=str(paths.PARAMS))
    serve.add_argument(
        "--wait",
        type=float,
        default=0,
        help="seconds to wait for the server (with --check: for the scheduled run; default 30)",
    )
    serve.add_argument(
        "--check",
        action="store_true",
        help="list the served retrain deployment's next scheduled runs and exit; fails when "
        "the server scheduled none for the schedule's next slot",
    )
    verify = sub.add_parser(
        "verify-determinism",
        help="run an experiment's train and evaluate twice and compare their outputs by md5",
    )
    verify.add_argument("experiment")
    verify.add_argument("--params", default=str(paths.PARAMS))
    verify.add_argument("--epochs", type=int, help="default: the experiment's train.epochs")
    sub.add_parser("params-doc", help="print the params.yaml reference (docs/params.md)")
    compare = sub.add_parser(
        "compare",
        help="the DVC experiments side by side: per experiment its main test metric with "
        "interval, ratio to its baseline and the params changed (short `dvc exp show`)",
    )
    compare.add_argument("experiments", nargs="*", help="pipeline experiments (default: all)")
    compare.add_argument(
        "-n", "--num", type=int, default=1, help="commits back from HEAD to include (default 1)"
    )
    results = sub.add_parser(
        "results",
        help="write README.md's results table from reports/results.json (--record: from the "
        "report of the current `dvc repro` first)",
    )
    results.add_argument(
        "--record",
        action="store_true",
        help="keep the report's leaderboard, tuning, machine and params digests in "
        "reports/results.json (nothing may be stale)",
    )
    results.add_argument(
        "--check",
        action="store_true",
        help="fail when the README's table is not the file's, or params.yaml's experiments "
        "are not the ones its numbers came from",
    )
    args = parser.parse_args(argv)
    if args.command == "results":
        from pipeline import results as results_module

        return results_module.main(record_first=args.record, check=args.check)
    if args.command == "compare":
        from pipeline.compare import compare

        print(compare(".", args.experiments or None, args.num))
        return 0
    if args.command == "params-doc":
        from pipeline import params_doc

        return params_doc.main()
    if args.command == "verify-determinism":
        return verify_command(args)
    if args.command == "run":
        return run_command(args)
    if args.command == "predict":
        return predict_command(args)
    if args.command == "serve":
        return serve_command(args)
    try:
        params = load_params(args.params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.params} is valid: {len(params.datasets) + len(params.synthetic)} datasets, "
        f"{len(params.experiments)} experiments"
    )
    stages = plan(params)
    for name, holder in locks.running().items():
        print(f"running now: {name}: {holder}")
    changed = dvc_changed_stages(args.params) if args.status else None
    will_run = stages_to_run(params, changed) if changed is not None else None
    width = max(len(stage) for stage, _ in stages)
    print("stages, in run order:")
    for stage, what in stages:
        mark = (
            "" if will_run is None else ("  [will run]" if stage in will_run else "  [up to date]")
        )
        print(f"  {stage:<{width}}  {what}{mark}")
    if will_run is not None:
        print(f"`dvc repro` would run {len(will_run)} of {len(stages)} stages")
    print("data (training holds train+val in memory up to data.in_memory_max_mb):")
    for line in data_plan(params):
        print(line)
    return 0


if __name__ == "__main__":
    from pipeline import shutdown

    shutdown.exit(main())
