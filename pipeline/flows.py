"""Prefect flows over the DVC pipeline: Prefect schedules, retries and shows runs; DVC still
decides what is up to date and owns dvc.lock and the outputs. No training logic lives here.

- `pipeline_flow`: the stages of dvc.yaml in dependency order, one Prefect task per stage.
- `retrain_flow`: re-fetch the data, run what changed, report each model's registry decision.
- `tune_flow`: one experiment's tuning with extra Optuna workers (local or on a work pool).
- `tune_worker_flow`: one Optuna worker, the unit `tune_flow` fans out as flow runs.
- `serve`: `python -m pipeline serve` (`make serve`) serves all four from this process, the
  retrain flow on `schedule.cron`; pipeline/prefect.yaml deploys them to work pools instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from pipeline import paths
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError
from pipeline.parallel import stage_order
from pipeline.stages import ERROR_FILE, OUTPUT_FILE, TIMEOUT, TIMEOUT_EXIT
from pipeline.tasks.kinds import KINDS
from pipeline.tuning.launch import command, worker_envs

GPU_STAGES = ("judge", "tune", "train")
GPU_TAG = "gpu"  # `prefect concurrency-limit create gpu 1`: one GPU stage at a time
STAGE_TIMEOUT = 6 * 3600  # seconds; a stage that hangs fails instead of blocking the flow
WORKER_WAIT = 600  # seconds a fanned-out tune worker waits for its study to be created


def gpu_limited() -> bool:
    """Whether a concurrency limit exists for the `gpu` tag. Prefect 3.8 asks the server for a
    slot for every tagged task run, and a SQLite-backed server often answers 503 and is asked
    again about 2 s later (measured), so GPU stages carry the tag only when a limit uses it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}")
        except ObjectNotFound:
            return False
    return True


def stage_tags(stage: str, gpu_limit: bool) -> list[str]:
    return [GPU_TAG] if gpu_limit and stage.split("@", 1)[0] in GPU_STAGES else []


def up_to_date(root: str | Path, stage: str) -> bool:
    """DVC's own check (`Stage.changed`, as `dvc repro` makes it), in this process: skipping an
    unchanged stage costs no `dvc` start-up."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        # a target without a dvc.yaml path would be looked up in the current directory
        [dvc_stage] = repo.stage.collect(f"{Path(repo.root_dir) / 'dvc.yaml'}:{stage}")
        with repo.lock:  # as `dvc status` holds it
            return not dvc_stage.changed()


class StageInputError(RuntimeError):
    """The stage rejected its input (it exited 2): retrying cannot help."""


def _worth_retrying(task, task_run, state) -> bool:
    try:
        state.result()
    except StageInputError:
        return False
    except Exception:
        return True
    return True


@task(retry_jitter_factor=0.2, retry_condition_fn=_worth_retrying, task_run_name="{stage}")
def run_stage(
    stage: str,
    root: str,
    force: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = STAGE_TIMEOUT,
) -> dict:
    """What `dvc repro --single-item <stage>` does, in this process: DVC checks the stage and
    runs its command only when it changed (or `force`). A `dvc repro` process per task would
    check it again and cost a DVC start-up each time (measured on an unchanged stage: 1.0-1.35 s
    against 0.24-0.31 s in process). The stage's output goes to this process's stdout and
    stderr; a failure raises with the stage's own error line, so the task and flow states say
    what went wrong. `env` is added to the stage's environment, and `python` there is this
    process's interpreter; after `timeout` seconds the stage stops itself."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logger = get_run_logger()
    # DVC prints its own lines ("Running stage ...") as `dvc repro` does; passed on to the root
    # logger as well, Prefect's console handler would print each of them a second time
    logging.getLogger("dvc").propagate = False
    with tempfile.TemporaryDirectory(prefix="stage-") as tmp:
        error_file, output_file = Path(tmp) / "error", Path(tmp) / "output"
        # dvc.yaml's `python` is this flow's interpreter, also when its venv is not activated
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        run_env = {"PATH": path, **(env or {}), ERROR_FILE: str(error_file), TIMEOUT: str(timeout)}
        run_env[OUTPUT_FILE] = str(output_file)
        try:
            # in the repository, as `dvc repro` runs: DVC's run cache resolves paths from there
            # (a process-wide change: the parallel runner is already there, so its threads'
            # changes are no-ops); DVC's repository lock, which stages running at once take in
            # turn to check and record themselves, is waited for as `dvc --wait-for-lock` does
            with (
                contextlib.chdir(root),
                Repo(".", _wait_for_lock=True) as repo,
                ctrl_c_kept(),
            ):
                ran = bool(
                    repo.reproduce(
                        f"dvc.yaml:{stage}", single_item=True, force=force, run_env=run_env
                    )
                )
        except DvcException as err:
            error = error_file.read_text().strip() if error_file.exists() else ""
            raise stage_failure(stage, err, error, timeout) from None
        finally:
            forward_output(logger, stage, output_file)
    logger.info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return {"stage": stage, "ran": ran}


@contextlib.contextmanager
def ctrl_c_kept() -> Iterator[None]:
    """Ctrl-C's handler as it was before DVC ran a stage command in this process. DVC ignores
    SIGINT while the command runs and puts the old handler back only when it is truthy, so
    `SIG_DFL` (0) or a handler installed outside Python (None) stayed replaced by SIG_IGN: the
    flow could no longer be stopped with Ctrl-C, and every process it started later inherited
    the ignored signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)


OUTPUT_LINES = 200  # the last lines of a stage's output that reach the flow run's logs


def forward_output(logger, stage: str, output_file: Path) -> None:
    """The stage process's own lines (what it printed, logged, its progress bars' last state)
    into the flow run's logs in Prefect, `<stage> | <line>`, once the stage has ended."""
    if not output_file.exists():
        return
    text = output_file.read_text(encoding="utf-8", errors="replace")
    # a progress bar rewrites its line after each "\r": its last state is the line
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    for line in lines[-OUTPUT_LINES:]:
        logger.info("%s | %s", stage, line)


def stage_failure(stage: str, err: Exception, error: str, timeout: float) -> Exception:
    """The exception a failed stage raises in the flow: DVC's reason (the command's exit
    status) with the stage's own error line; StageInputError when it rejected its input."""
    reason = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
    status = re.search(r"exited with (-?\d+)", reason)
    code = int(status.group(1)) if status else None
    if code == 2:  # the stage's own one-line rejection of bad input
        return StageInputError(f"{stage} failed on bad input (not retried):\n{error}")
    if code == TIMEOUT_EXIT:
        return RuntimeError(f"{stage}: still running after {timeout:g} s; stopped")
    return RuntimeError(f"{stage} failed ({reason})" + (f":\n{error}" if error else ""))


def run_stages(
    stages: list[str],
    root: Path,
    retries: int,
    retry_delay: float,
    forced: tuple[str, ...] = (),
    timeout: float = STAGE_TIMEOUT,
) -> list[dict]:
    """The stages one at a time (DVC locks the repository while a stage runs), each retried
    `retries` times, waiting `retry_delay` seconds, then doubling, and stopped after `timeout`
    seconds; stages whose kind is in `forced` run even when DVC finds them unchanged."""
    results = []
    gpu_limit = gpu_limited()
    for stage in stages:
        stage_task = run_stage.with_options(
            tags=stage_tags(stage, gpu_limit),
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay),
        )
        force = stage.split("@")[0] in forced
        results.append(stage_task(stage, str(root), force=force, timeout=timeout))
    return results


@flow(name="dl-pipeline", log_prints=True)
def pipeline_flow(
    params: str = "params.yaml",
    targets: list[str] | None = None,
    root: str = ".",
    retries: int = 2,
    retry_delay: float = 10.0,
    stage_timeout: float = STAGE_TIMEOUT,
    jobs: int = 1,
    gpus_per_stage: int = 1,
    stages_per_gpu: int = 1,
    live: bool | None = False,
) -> list[dict]:
    """Run the DVC pipeline (or `targets` and what they need) as Prefect tasks, up to `jobs`
    stages at once (parallel.py: each starts once its upstream stages are done; on a GPU
    machine, GPU stages get `gpus_per_stage` GPUs each, `stages_per_gpu` of them sharing one).
    A stage still running after `stage_timeout` seconds is stopped and fails its task; a
    failed stage stops its descendants, and the flow fails naming every failed stage once the
    other branches are done. `live`: a live table of the stages rather than a line per change.

    `params` is validated first, so bad input fails the flow before any stage runs.
    """
    from pipeline import parallel

    root_path = Path(root).resolve()
    load_params(root_path / params)
    graph = parallel.stage_graph(root_path, targets)
    slots = parallel.Slots(jobs, parallel.visible_gpus(), gpus_per_stage, stages_per_gpu)
    task = run_stage.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay)
    )
    gpu_limit = gpu_limited()
    board = parallel.Board(list(graph), live=live)
    # DVC resolves paths from the repository's root; the stages' threads share this process
    with contextlib.chdir(root_path), board.shown():
        return parallel.run_graph(
            graph,
            root_path,
            slots,
            board,
            lambda stage: task.with_options(tags=stage_tags(stage, gpu_limit)),
            stage_timeout,
        )


# ---- retraining -------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=10, task_run_name="dvc {command}")
def dvc_command(command: str, root: str) -> str:
    """`dvc pull` / `dvc push` against the remote in .dvc/config."""
    args = ["pull", "--allow-missing"] if command == "pull" else [command]
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {command} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def registry_decisions(root: Path, cfg: Params, ran: set[str]) -> dict[str, dict]:
    """For each experiment evaluated in this run: its main test metric and the champion
    decision evaluate@ made (tracking.registry.consider_champion)."""
    out = {}
    for name in cfg.experiments:
        if f"evaluate@{name}" not in ran:
            continue
        summary = json.loads((root / paths.summary_file(name)).read_text())
        metric = KINDS[summary["task"]].main_metric
        out[name] = {
            "metric": metric,
            "value": summary["metrics"].get(metric),
            "registry": summary.get("registry"),
        }
    return out


def retrain_markdown(results: list[dict], decisions: dict[str, dict]) -> str:
    ran = [r["stage"] for r in results if r["ran"]]
    lines = [
        "# Retraining",
        "",
        f"{len(ran)} of {len(results)} stages ran"
        + (f": {', '.join(ran)}" if ran else "; everything was up to date"),
        "",
    ]
    if decisions:
        lines += [
            "| experiment | metric | value | champion before | champion after | decision |",
            "|---|---|---|---|---|---|",
        ]
        for name, d in decisions.items():
            reg = d["registry"] or {}
            verdict = (
                "not registered"
                if not reg
                else f"{'promoted' if reg['promoted'] else 'kept'} v{reg['version']}: "
                f"{reg['reason']}"
            )
            lines.append(
                f"| {name} | {d['metric']} | {d['value']:.4f} | "
                f"{reg.get('champion_before') or '-'} | {reg.get('champion_after') or '-'} | "
                f"{verdict} |"
            )
    return "\n".join(lines) + "\n"


@flow(name="dl-retrain", log_prints=True)
def retrain_flow(
    params: str = "params.yaml",
    root: str = ".",
    pull: bool | None = None,
    push: bool | None = None,
    retries: int = 2,
    retry_delay: float = 10.0,
    stage_timeout: float = STAGE_TIMEOUT,
) -> dict:
    """Retrain on fresh data: optional `dvc pull`, then every ingest@ stage forced (the source
    is read again: new rows in a table or new images in a folder are not files dvc.yaml can
    list), then the rest of the pipeline (DVC skips what the new data did not change). Each
    evaluate@ that runs moves the registry's `champion` alias only when the new model beats
    the champion by more than its own interval; the decisions end up in a markdown artifact.
    Optional `dvc push` last. `pull`/`push` default to `schedule.pull`/`schedule.push`; a
    stage still running after `stage_timeout` seconds is stopped and fails the run.
    """
    from prefect.artifacts import create_markdown_artifact

    root_path = Path(root).resolve()
    cfg = load_params(root_path / params)
    if cfg.schedule.pull if pull is None else pull:
        dvc_command("pull", str(root_path))
    results = run_stages(
        stage_order(root_path),
        root_path,
        retries,
        retry_delay,
        forced=("ingest",),
        timeout=stage_timeout,
    )
    decisions = registry_decisions(root_path, cfg, {r["stage"] for r in results if r["ran"]})
    if cfg.schedule.push if push is None else push:
        dvc_command("push", str(root_path))
    markdown = retrain_markdown(results, decisions)
    create_markdown_artifact(markdown, key="retrain", description="stages run, champion moves")
    print(markdown)
    return {"stages": results, "decisions": decisions}


# ---- tuning -----------------------------------------------------------------------------------


@task(task_run_name="tune-worker-{worker}")
def tune_worker(
    experiment: str, root: str, params: str, worker: int, env: dict[str, str] | None = None
) -> int:
    """`python -m pipeline.tuning.worker` in `root`: joins the experiment's study once the tune@
    stage has created it; returns how many trials it ran."""
    cmd = command(experiment, worker, params=params, wait=WORKER_WAIT)
    proc = subprocess.run(
        cmd, cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"tune worker {worker} exited with {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    return int(re.search(r"ran (\d+) trials", proc.stderr).group(1))


@flow(name="dl-tune-worker", log_prints=True)
def tune_worker_flow(
    experiment: str, worker: int = 0, params: str = "params.yaml", root: str = "."
) -> int:
    """One Optuna worker of `experiment`'s study, as a flow run: what `tune_flow` starts on a
    work pool, one per machine (`tune.storage` must be a database every machine reaches)."""
    return tune_worker(experiment, str(Path(root).resolve()), params, worker)


@task(task_run_name="tune-worker-{worker}@{deployment}")
def tune_worker_run(deployment: str, experiment: str, params: str, worker: int) -> str:
    """A flow run of the `tune_worker_flow` deployment; waits for it to end."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        deployment,
        parameters={"experiment": experiment, "worker": worker, "params": params},
        timeout=None,
    )
    if not flow_run.state.is_completed():
        raise RuntimeError(f"tune worker {worker} on {deployment}: {flow_run.state.name}")
    return str(flow_run.id)


@flow(name="dl-tune", log_prints=True)
def tune_flow(
    experiment: str,
    workers: int = 1,
    deployment: str | None = None,
    params: str = "params.yaml",
    root: str = ".",
    retries: int = 2,
    retry_delay: float = 10.0,
) -> dict:
    """Tune `experiment` with `workers` extra Optuna workers on the same study.

    The tune@ stage runs as usual (it creates or resumes the study, runs its own
    `tune.workers`, waits for every trial and writes tuned.yaml, so DVC records the result);
    beside it the extra workers join the study: local `pipeline.tuning.worker` processes (each
    with its share of the CPU threads or its own GPU), or, given `deployment` (e.g.
    `dl-tune-worker/tune-worker-gpu`), flow runs on that deployment's work pool.
    """
    root_path = Path(root).resolve()
    cfg = load_params(root_path / params)
    if experiment not in cfg.experiments:
        raise PipelineError(
            f"experiment {experiment!r} is not in {params}; declared: {', '.join(cfg.experiments)}"
        )
    tune = cfg.experiments[experiment].tune
    if not tune.enabled:
        raise PipelineError(f"experiments.{experiment}.tune.enabled is false in {params}")
    stage = f"tune@{experiment}"
    run_stages(stage_order(root_path, [stage])[:-1], root_path, retries, retry_delay)
    if up_to_date(root_path, stage):  # the study is done: no worker would find a trial to run
        print(f"{stage}: up to date, no workers started")
        return {"stage": {"stage": stage, "ran": False}, "workers": []}

    stage_env: dict[str, str] = {}
    if deployment is None:
        envs = worker_envs(tune.workers + workers)
        if tune.workers == 1:  # the stage's own worker runs in its process: its thread share
            stage_env = {k: v for k, v in envs[0].items() if k != "CUDA_VISIBLE_DEVICES"}
        extra = [
            tune_worker.submit(experiment, str(root_path), params, i, envs[i])
            for i in range(tune.workers, tune.workers + workers)
        ]
    else:
        extra = [
            tune_worker_run.submit(deployment, experiment, params, i)
            for i in range(tune.workers, tune.workers + workers)
        ]
    # retried as a whole only by DVC's skip: a finished study is not run again
    result = run_stage.with_options(tags=stage_tags(stage, gpu_limited())).submit(
        stage, str(root_path), env=stage_env
    )
    return {"stage": result.result(), "workers": [f.result() for f in extra]}


# ---- serving ----------------------------------------------------------------------------------

RETRAIN = "dl-retrain/retrain"  # the served retrain deployment; prefect.yaml's is retrain-pool


def serve(params: str = "params.yaml", root: str = ".", wait: float = 0) -> None:
    """Serve the four flows from this process against the configured Prefect server (waiting
    up to `wait` seconds for it to answer), the retrain flow on `schedule.cron`; runs until
    interrupted."""

    from prefect.schedules import Cron

    cfg = load_params(Path(root) / params)
    url = require_server(wait)
    where = {"params": params, "root": str(Path(root).resolve())}
    schedule = cfg.schedule
    retrain = retrain_flow.to_deployment(
        "retrain",
        parameters=where,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)] if schedule.cron else None,
        description="re-fetch data, retrain what changed, promote better models",
    )
    print(
        f"serving against {url}: {RETRAIN} "
        + (
            f"on cron {schedule.cron!r} ({schedule.timezone}); check it with "
            "`python -m pipeline serve --check`"
            if schedule.cron
            else "when started (schedule.cron is not set)"
        )
        + ", dl-pipeline/pipeline, dl-tune/tune, dl-tune-worker/tune-worker",
        file=sys.stderr,
    )
    run_served(
        retrain,
        pipeline_flow.to_deployment("pipeline", parameters=where),
        tune_flow.to_deployment("tune", parameters=where),
        tune_worker_flow.to_deployment("tune-worker", parameters=where),
    )


def require_server(wait: float = 0) -> str:
    """The configured Prefect server's URL, once it answers (waiting up to `wait` seconds)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PipelineError(
            "no Prefect server configured: set PREFECT_API_URL (e.g. "
            "http://127.0.0.1:4200/api) or run `make serve`, which starts a local one; "
            "without a server, schedules and run history would vanish with this process"
        )
    deadline = time.time() + wait
    with get_client(sync_client=True) as client:
        while client.api_healthcheck() is not None and time.time() < deadline:
            time.sleep(1)
        if client.api_healthcheck() is not None:
            raise PipelineError(
                f"no Prefect server answers at PREFECT_API_URL={url}; start it with "
                "`prefect server start` or run `make serve`"
            )
    return url


def run_served(*deployments) -> None:
    """What `prefect.serve` does, but SIGTERM stops it as Ctrl-C does: Prefect's own SIGTERM
    handler calls an async stop from inside the event loop, which is never awaited."""
    import asyncio

    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True)
    runner.handle_sigterm = _interrupt  # the runner is cancelled, pauses its deployments, ends
    for deployment in deployments:
        runner.add_deployment(deployment)
    asyncio.run(runner.start())


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def check_schedule(params: str = "params.yaml", root: str = ".", wait: float = 30) -> list:
    """The served retrain deployment's next runs, as the server scheduled them; waits up to
    `wait` seconds for the scheduler to create the run of the schedule's first slot. Raises
    PipelineError when there is no such deployment, its schedule is paused or off, or no run
    was scheduled for that slot."""
    import time
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from cronsim import CronSim
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    schedule = load_params(Path(root) / params).schedule
    if not schedule.cron:
        raise PipelineError("schedule.cron is not set in params.yaml: nothing is scheduled")
    require_server()
    now = datetime.now(ZoneInfo(schedule.timezone))
    first = next(CronSim(schedule.cron, now.replace(second=0, microsecond=0)))
    from_first = FlowRunFilter(
        expected_start_time=FlowRunFilterExpectedStartTime(after_=first - timedelta(seconds=1))
    )
    deadline = time.monotonic() + wait
    with get_client(sync_client=True) as client:
        while True:  # until the deployment is served and its first slot scheduled, or `wait`
            problem, upcoming = _scheduled_runs(client, from_first)
            if problem is None and upcoming and upcoming[0].expected_start_time == first:
                return upcoming
            if time.monotonic() >= deadline:
                raise PipelineError(
                    problem
                    or f"{RETRAIN}: the server scheduled no run for the schedule's next slot "
                    f"({first.isoformat()}) within {wait:g} s; look for errors in the Prefect "
                    "server's log (its scheduler service)"
                )
            time.sleep(1)


def _scheduled_runs(client, runs_filter) -> tuple[str | None, list]:
    """(what is wrong with the served retrain deployment or None, its runs in `runs_filter`,
    soonest first)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(RETRAIN)
    except ObjectNotFound:
        return (
            f"the Prefect server has no deployment {RETRAIN}: start `make serve` (or "
            "`python -m pipeline serve`) first",
            [],
        )
    if deployment.paused or not any(s.active for s in deployment.schedules):
        return (
            f"{RETRAIN}: its schedule is paused or off (a stopped `serve` pauses it); "
            "start `make serve` again",
            [],
        )
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
        flow_run_filter=runs_filter,
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=5,
    )
    return None, runs


if __name__ == "__main__":
    sys.exit(0 if pipeline_flow() is not None else 1)
