"""A worker: claims trials one at a time under a file lock until the study has `n_trials`;
the tune stage runs one in its process and starts the rest as `pipeline.tuning.worker`
processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from pipeline import paths
from pipeline.config import ExperimentParams
from pipeline.errors import PipelineError
from pipeline.tuning import experimental, launch, studies
from pipeline.tuning.objective import Objective
from pipeline.tuning.studies import has_work, load_study, open_storage


def work(
    experiment: str,
    exp: ExperimentParams,
    url: str,
    name: str,
    worker: int = 0,
    deadline: float | None = None,
    limit: int | None = None,
) -> int:
    """Run trials of study `name` until it has `n_trials` counted, `deadline` passes or this
    worker ran `limit`; returns how many trials this worker ran. Any number of workers may run
    this at once."""
    from filelock import FileLock

    storage = open_storage(url, exp.tune.heartbeat_seconds)
    study = load_study(experiment, exp, storage, name, worker)
    objective = Objective(experiment, exp, study.user_attrs.get("mlflow_run_id"))
    objective.warm_up()
    lock = FileLock(str(paths.study_lock(experiment)))
    objective.on_claimed = lambda: lock.release(force=True)
    ran = 0
    while (deadline is None or time.time() < deadline) and (limit is None or ran < limit):
        with lock:
            with experimental():
                fail_stale_trials(study)
            if not has_work(study, exp.tune.n_trials):
                break
            # the objective releases the lock once its trial is RUNNING (claimed and counted)
            optimize_one(
                study,
                objective,
                lambda study, trial: print(trial_line(experiment, exp, study, trial)),
            )
        ran += 1
    return ran


def optimize_one(study, objective, callback) -> None:
    """One trial of `study`. Another worker may have ended this one's trial meanwhile, taking
    it for a dead worker's: a busy machine can hold the heartbeat thread past the grace period
    (seen with `heartbeat_seconds: 1`, a stage and three workers training on 2 cores beside
    another test). That trial is retried with its params, so this worker says so and goes on
    to the next."""
    try:
        study.optimize(
            objective,
            n_trials=1,
            catch=(PipelineError,),
            gc_after_trial=False,
            callbacks=[callback],
        )
    except ValueError as e:
        # Optuna's words when the trial it is telling was ended by another process
        if not str(e).startswith("Cannot tell a FAIL trial"):
            raise
        print(
            f"tune worker {os.getpid()}: another worker failed this worker's trial as stale (its "
            "heartbeat was late); the trial is retried, this worker goes on",
            file=sys.stderr,
        )


def trial_line(experiment: str, exp: ExperimentParams, study, trial: FrozenTrial) -> str:
    """One line per finished trial (any worker's console, and `dvc repro`'s): its number,
    state and value(s), and the best so far."""
    line = f"tune@{experiment}: trial {trial.number} {trial.state.name}"
    if trial.state.name == "PRUNED" and trial.last_step is not None:
        line += f" after epoch {trial.last_step}"
    metrics = exp.tune.metrics()
    if trial.values is not None:  # a pruned trial's is its last reported value
        line += ", " + ", ".join(f"{m} {v:.6g}" for m, v in zip(metrics, trial.values, strict=True))
    if len(metrics) > 1:
        return line + f"; Pareto front: {len(study.best_trials)} trial(s)"
    try:
        best = study.best_trial
    except ValueError:  # none complete yet
        return line
    return line + f"; best {metrics[0]} {best.value:.6g} (trial {best.number})"


def run_workers(
    experiment: str, exp: ExperimentParams, url: str, name: str, deadline: float | None
) -> None:
    """One worker runs in this process; more run as `pipeline.tuning.worker` processes, each
    with its own GPU or share of the CPU threads."""
    if exp.tune.workers == 1:
        work(experiment, exp, url, name, worker=0, deadline=deadline)
        return
    procs = []
    try:
        for i, env in enumerate(launch.worker_envs(exp.tune.workers)):
            cmd = launch.command(
                experiment,
                i,
                storage=url,
                study=name,
                config=exp.model_dump_json(),
                parent=os.getpid(),
                deadline=deadline,
            )
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    for i, code in enumerate(codes):
        if code != 0:
            print(f"tune@{experiment}: worker {i} exited with {code}", file=sys.stderr)


def settle(experiment: str, exp: ExperimentParams, url: str, study, deadline) -> None:
    """Wait until no trial is RUNNING (a dead worker's trial is failed once its heartbeat is
    stale, and queued again); then run whatever the budget still holds in this process. A
    timeout that passed before any trial ran (set-up on a loaded machine) still gets one trial:
    a search that tried nothing has no result to give train@."""
    while True:
        with experimental():
            fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:  # live workers elsewhere, or a dead one not yet stale
            time.sleep(min(exp.tune.heartbeat_seconds, 2))
            continue
        if not has_work(study, exp.tune.n_trials):
            return
        if deadline is not None and time.time() >= deadline:
            if not studies.finished(study.get_trials(deepcopy=False)):
                print(
                    f"tune@{experiment}: tune.timeout passed before any trial ran; running one",
                    file=sys.stderr,
                )
                work(experiment, exp, url, study.study_name, exp.tune.workers, limit=1)
            return
        work(experiment, exp, url, study.study_name, exp.tune.workers, deadline)
