"""Hyperparameter search: the Optuna studies declared under `tune:` in params.yaml.

A study lives in a storage every worker shares: a journal file under artifacts/<exp>/ by default
(safe for several local processes), or an RDB URL for workers on many machines. Workers claim
one trial at a time under a file lock, so the study finishes exactly `n_trials` trials however
many workers join. A trial resolves its sampled numbers into the experiment's params and trains
through the same engine as train@, reporting each epoch to the pruner; the model code never
sees Optuna. Heartbeats find killed workers: their trial is failed and queued again with the
same params.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from pipeline import paths
from pipeline.config import ExperimentParams, apply_overrides, flatten, unflatten
from pipeline.errors import PipelineError
from pipeline.params.tuning import PRIMITIVE, CategoricalSpace, FloatSpace, TuneParams
from pipeline.tasks.kinds import higher_is_better

MAX_RETRIES = 3  # a trial whose worker died this often is left failed
LOCK_GRACE_SECONDS = 30  # a journal lock untouched this long belongs to a dead worker: broken
STUDY_KEYS = (  # the tune settings that define a study; the rest (n_trials, workers...) do not
    "space",
    "metric",
    "direction",
    "seed",
    "sampler",
    "pruner",
    "startup_trials",
    "warmup_epochs",
    "epochs",
)

# ---- storage ---------------------------------------------------------------------------------


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat protocol RDBStorage has (Optuna 5.0's journal
    storage has none). A running trial's worker records a timestamp every `interval` seconds
    as a trial system attr; Optuna's `fail_stale_trials` fails trials silent for `grace`
    seconds and hands them to the retry callback."""

    def __init__(self, path: str, interval: int, grace: int, on_stale):
        # Optuna's lock is a symlink to the journal, and it breaks a lock whose target has not
        # changed for the grace period. A relative path would make that symlink dangle (it
        # resolves from the lock's own directory): a worker killed while holding it would then
        # block every other worker for ever. An absolute path keeps it resolvable.
        path = os.path.abspath(path)
        lock = JournalFileSymlinkLock(path, grace_period=LOCK_GRACE_SECONDS)
        super().__init__(JournalFileBackend(path, lock))
        self._interval, self._grace, self._on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, "heartbeat", time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            # a retried trial inherits its predecessor's last beat: count from its own start
            last = max(trial.system_attrs.get("heartbeat", 0.0), started)
            if now - last > self._grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._on_stale


@contextlib.contextmanager
def experimental() -> Iterator[None]:
    """Use Optuna features it marks experimental (heartbeats, stale-trial retries, some
    samplers) without a warning at each call: they are chosen on purpose and pinned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str, heartbeat_seconds: int):
    """A journal file path, or an RDB URL (postgresql://..., sqlite:///...), with heartbeats."""
    grace = 2 * heartbeat_seconds
    with experimental():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        if "://" in url:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_seconds,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry,
            )
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(url, heartbeat_seconds, grace, retry)


def storage_url(experiment: str, tune: TuneParams) -> str:
    return tune.storage or str(paths.study_journal(experiment))


def study_name(experiment: str, exp: ExperimentParams) -> str:
    """`<experiment>-<fingerprint>`: the same training setup and search resume the same study;
    any change to them (or to the space) starts a new one. n_trials, timeout, workers and the
    evaluate/tracking sections are not part of it, so raising n_trials continues the study."""
    from pipeline.engine import config_key

    key = config_key(
        {
            # what shapes training; evaluation and tracking settings do not
            "experiment": exp.model_dump(mode="json", exclude={"tune", "tracking", "evaluate"}),
            "tune": exp.tune.model_dump(mode="json", include=set(STUDY_KEYS)),
        }
    )
    return f"{experiment}-{key}"


def make_sampler(tune: TuneParams, seed: int):
    samplers = optuna.samplers
    with experimental():
        if tune.sampler == "tpe":
            return samplers.TPESampler(seed=seed, constant_liar=tune.workers > 1)
        if tune.sampler == "random":
            return samplers.RandomSampler(seed=seed)
        if tune.sampler == "cmaes":
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if tune.sampler == "gp":
            return samplers.GPSampler(seed=seed)
        if tune.sampler == "nsgaii":
            return samplers.NSGAIISampler(seed=seed)
        return samplers.GridSampler(grid(tune), seed=seed)


def grid(tune: TuneParams) -> dict[str, list]:
    """Every value of every space entry, as GridSampler wants them."""
    out = {}
    for path, item in tune.space.items():
        if isinstance(item, CategoricalSpace):
            out[path] = [_encode(c) for c in item.choices]
        elif isinstance(item, FloatSpace):
            count = int(round((item.high - item.low) / item.step)) + 1
            out[path] = [item.low + i * item.step for i in range(count)]
        else:
            out[path] = list(range(item.low, item.high + 1, item.step))
    return out


def make_pruner(tune: TuneParams, epochs: int):
    pruners = optuna.pruners
    warmup = max(tune.warmup_epochs, 1)
    if tune.pruner == "median":
        return pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    if tune.pruner == "hyperband":
        return pruners.HyperbandPruner(min_resource=warmup, max_resource=epochs)
    if tune.pruner == "successive_halving":
        return pruners.SuccessiveHalvingPruner(min_resource=warmup)
    return pruners.NopPruner()


def create_study(experiment: str, exp: ExperimentParams, storage) -> optuna.Study:
    """Create the experiment's study in `storage`, or load it to resume."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=study_name(experiment, exp),
        storage=storage,
        directions=list(exp.tune.directions()),
        load_if_exists=True,
    )


def load_study(experiment: str, exp: ExperimentParams, storage, name: str, worker: int):
    """The study as a worker sees it: its own sampler seed (seed + worker index, so workers
    do not draw the same points) and the declared pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(exp.tune, exp.tune.seed + worker),
        pruner=make_pruner(exp.tune, trial_epochs(exp)),
    )


def wait_for_study(url: str, name: str, seconds: float, heartbeat_seconds: int) -> None:
    """Block until study `name` exists in `url` with its MLflow parent run recorded (the tune@
    stage sets both before any trial), so a worker started beside the stage can join it."""
    storage = open_storage(url, heartbeat_seconds)
    deadline = time.time() + seconds
    while True:
        exists = name in optuna.get_all_study_names(storage)
        if (
            exists
            and "mlflow_run_id" in optuna.load_study(study_name=name, storage=storage).user_attrs
        ):
            return
        if time.time() > deadline:
            raise PipelineError(
                f"no study {name!r} in {url} after {seconds:.0f} s; "
                "is the tune@ stage running (`dvc repro tune@<experiment>`)?"
            )
        time.sleep(1)


def trial_epochs(exp: ExperimentParams) -> int:
    return exp.tune.epochs or exp.train.epochs


# ---- counting ---------------------------------------------------------------------------------


def lost_trials(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that were queued again (their worker died)."""
    lost: set[int] = set()
    for trial in trials:
        lost.update(trial.system_attrs.get("retry_history", []))
    return lost


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that use up the budget: finished ones (a lost attempt does not count) and those
    running or queued now."""
    lost = lost_trials(trials)
    return [t for t in trials if not (t.state == TrialState.FAIL and t.number in lost)]


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in counted(trials) if t.state.is_finished()]


def has_work(study: optuna.Study, n_trials: int) -> bool:
    """Whether a worker should claim another trial: a re-queued trial is waiting (it is
    already counted), or fewer than `n_trials` are counted."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return len(counted(trials)) < n_trials


# ---- sampling ---------------------------------------------------------------------------------


def _encode(choice):
    """Optuna's categorical choices must be primitives; lists and mappings travel as JSON."""
    return choice if isinstance(choice, PRIMITIVE) else json.dumps(choice)


def _matches(value, wanted) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def sample(trial, tune: TuneParams, base: dict) -> dict[str, Any]:
    """The trial's values of the space entries whose `when` holds, keyed by dotted path.

    `when` is checked against values sampled earlier in this trial, else the experiment's own.
    """
    resolved = flatten(base)
    values: dict[str, Any] = {}
    for path, item in tune.space.items():
        known = {**resolved, **values}
        if not all(_matches(known.get(k), v) for k, v in item.when.items()):
            continue
        if isinstance(item, CategoricalSpace):
            encoded = [_encode(c) for c in item.choices]
            picked = trial.suggest_categorical(path, encoded)
            values[path] = item.choices[encoded.index(picked)]
        elif isinstance(item, FloatSpace):
            values[path] = trial.suggest_float(
                path, item.low, item.high, log=item.log, step=item.step
            )
        else:
            step = 1 if item.log else item.step
            values[path] = trial.suggest_int(path, item.low, item.high, step=step, log=item.log)
    return values


def decoded_params(trial: FrozenTrial, tune: TuneParams) -> dict[str, Any]:
    """A finished trial's params with categorical JSON choices turned back into values."""
    out = {}
    for path, value in trial.params.items():
        item = tune.space.get(path)
        if isinstance(item, CategoricalSpace):
            encoded = [_encode(c) for c in item.choices]
            value = item.choices[encoded.index(value)] if value in encoded else value
        out[path] = value
    return out


# ---- one trial --------------------------------------------------------------------------------


class Objective:
    """Trains one trial of `experiment`; returns the objective values (one per metric)."""

    def __init__(self, experiment: str, exp: ExperimentParams, parent_run_id: str | None):
        self.experiment = experiment
        self.exp = exp
        self.parent_run_id = parent_run_id
        self.metrics = exp.tune.metrics()
        self.directions = exp.tune.directions()
        self.on_claimed: Callable[[], None] = lambda: None

    def warm_up(self) -> None:
        """Import what a trial needs before claiming one, so a trial's time is training."""
        import pipeline.experiment  # noqa: F401  (torch, models, the engine)
        from pipeline import tracking

        if self.exp.train.augment:
            import torchvision.transforms.v2  # noqa: F401
        if self.parent_run_id:
            tracking.connect(self.exp.tracking, self.parent_run_id)

    def __call__(self, trial: optuna.Trial):
        self.on_claimed()  # the trial is RUNNING and counted: other workers may claim theirs
        trial.set_user_attr("worker_pid", os.getpid())
        try:
            return self._run(trial)
        except (KeyboardInterrupt, SystemExit):
            requeue(trial)
            raise SystemExit(130) from None  # Optuna lets SystemExit through untouched

    def _run(self, trial: optuna.Trial):
        from pipeline import engine, tracking
        from pipeline.experiment import prepare

        tune = self.exp.tune
        values = sample(trial, tune, self.exp.model_dump(mode="json"))
        where = f"experiments.{self.experiment}.tune (trial {trial.number})"
        exp = apply_overrides(self.exp, unflatten(values), where)
        prep = prepare(exp, self.experiment)
        for metric in self.metrics:
            if metric.startswith("val/") and metric not in prep.task.val_metrics:
                raise PipelineError(
                    f"experiments.{self.experiment}.tune.metric: {metric!r} is not reported by "
                    f"this task; choose from {', '.join(prep.task.val_metrics)}"
                )
        child = None
        if self.parent_run_id:
            child = tracking.trial_run(
                exp.tracking,
                self.parent_run_id,
                name=f"{self.experiment}/trial-{trial.number}",
                tags={"stage": "tune", "experiment": self.experiment, "trial": trial.number},
                params=values,
            )
            trial.set_user_attr("mlflow_run_id", child.run_id)
        history: list[dict] = []
        single = len(self.metrics) == 1

        def on_epoch(epoch: int, row: dict) -> None:
            history.append(row)
            if child is not None:
                child.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if single:
                trial.report(row[self.metrics[0]], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        cfg = exp.train.model_copy(update={"epochs": trial_epochs(self.exp)})
        state, result = "FAIL", None
        try:
            engine.fit(
                prep.model,
                prep.train,
                prep.val,
                cfg,
                prep.task,
                on_epoch=on_epoch,
                desc=f"{self.experiment} trial {trial.number}",
            )
            result = self._values(history, prep)
            state = "COMPLETE"
            return result
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            trial.set_user_attr("epochs", len(history))
            if history:  # the best epoch's value of every val metric, for trials.csv
                trial.set_user_attr("val_best", best_values(history))
            if child is not None:
                named = dict(zip(self.metrics, result, strict=True)) if result else None
                child.end(state, named)

    def _values(self, history: list[dict], prep) -> list[float]:
        out = []
        for metric, direction in zip(self.metrics, self.directions, strict=True):
            if metric == "parameters":
                out.append(float(sum(p.numel() for p in prep.model.parameters())))
            elif metric == "latency_ms":
                out.append(latency_ms(prep.model, prep.val))
            else:
                seen = [row[metric] for row in history]
                out.append(max(seen) if direction == "maximize" else min(seen))
        return out


def best_values(history: list[dict]) -> dict[str, float]:
    keys = [k for k in history[0] if k.startswith("val/")]
    pick = {k: max if higher_is_better(k) else min for k in keys}
    return {k: pick[k](row[k] for row in history) for k in keys}


def requeue(trial: optuna.Trial) -> None:
    """An interrupted trial (Ctrl-C, SIGTERM) fails now and is queued again with its params,
    as a killed worker's trial is once its heartbeat goes stale."""
    study = trial.study
    study.tell(trial, state=TrialState.FAIL)
    with experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, study.trials[trial.number])


def latency_ms(model, batches, batch_size: int = 64, repeats: int = 5) -> float:
    """Median milliseconds of one forward pass over `batch_size` validation samples."""
    import torch

    x = batches.x[:batch_size]
    model.eval()
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


# ---- a worker ---------------------------------------------------------------------------------


def work(
    experiment: str,
    exp: ExperimentParams,
    url: str,
    name: str,
    worker: int = 0,
    deadline: float | None = None,
) -> int:
    """Run trials of study `name` until it has `n_trials` counted or `deadline` passes; returns
    how many trials this worker ran. Any number of workers may run this at once."""
    from filelock import FileLock

    storage = open_storage(url, exp.tune.heartbeat_seconds)
    study = load_study(experiment, exp, storage, name, worker)
    objective = Objective(experiment, exp, study.user_attrs.get("mlflow_run_id"))
    objective.warm_up()
    lock = FileLock(str(paths.study_lock(experiment)))
    objective.on_claimed = lambda: lock.release(force=True)
    ran = 0
    while deadline is None or time.time() < deadline:
        with lock:
            with experimental():
                fail_stale_trials(study)
            if not has_work(study, exp.tune.n_trials):
                break
            # the objective releases the lock once its trial is RUNNING (claimed and counted)
            study.optimize(
                objective,
                n_trials=1,
                catch=(PipelineError,),
                gc_after_trial=False,
                callbacks=[lambda study, trial: print(trial_line(experiment, exp, study, trial))],
            )
        ran += 1
    return ran


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


# ---- results ----------------------------------------------------------------------------------


def chosen_trial(study: optuna.Study, tune: TuneParams) -> FrozenTrial:
    """The best trial; for several objectives, the declared pick from the Pareto front."""
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    signs = [1 if d == "maximize" else -1 for d in tune.directions()]
    if tune.pareto_choice == "first":
        return max(front, key=lambda t: [s * v for s, v in zip(signs, t.values, strict=True)])
    # knee: nearest to the ideal point once each objective is scaled to [0, 1] over the front
    scaled = []
    for i, sign in enumerate(signs):
        vals = [sign * t.values[i] for t in front]
        lo, hi = min(vals), max(vals)
        scaled.append([(hi - v) / (hi - lo) if hi > lo else 0.0 for v in vals])
    distances = [sum(col[j] ** 2 for col in scaled) for j in range(len(front))]
    return front[distances.index(min(distances))]


def trial_rows(study: optuna.Study, tune: TuneParams) -> list[dict]:
    """One row per trial for trials.csv: state, objective values, params, epochs, time."""
    trials = study.get_trials(deepcopy=False)
    lost = lost_trials(trials)
    paths_ = list(tune.space)
    rows = []
    for t in trials:
        row = {
            "number": t.number,
            "state": t.state.name,
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "requeued": t.number in lost,
        }
        for i, metric in enumerate(tune.metrics()):
            row[metric] = t.values[i] if t.values else ""
        params = decoded_params(t, tune)
        for path in paths_:
            value = params.get(path, "")
            row[path] = json.dumps(value) if isinstance(value, list | dict) else value
        for key, value in t.user_attrs.get("val_best", {}).items():
            row[f"best {key}"] = value
        row["epochs"] = t.user_attrs.get("epochs", "")
        seconds = t.duration.total_seconds() if t.duration else ""
        row["seconds"] = round(seconds, 2) if seconds != "" else ""
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id", "")
        rows.append(row)
    return rows


def summary(study: optuna.Study, tune: TuneParams, best: FrozenTrial, seconds: float) -> dict:
    trials = study.get_trials(deepcopy=False)
    done = finished(trials)
    states = {s: sum(t.state.name == s for t in done) for s in ("COMPLETE", "PRUNED", "FAIL")}
    out = {
        "study": study.study_name,
        "sampler": tune.sampler,
        "pruner": tune.pruner,
        "metrics": list(tune.metrics()),
        "directions": list(tune.directions()),
        "n_trials": tune.n_trials,
        "states": states,
        "requeued_after_worker_loss": len(lost_trials(trials)),
        "total_epochs": sum(t.user_attrs.get("epochs", 0) for t in trials),
        "seconds": round(seconds, 2),
        "best": {
            "number": best.number,
            "values": dict(zip(tune.metrics(), best.values, strict=True)),
            "params": decoded_params(best, tune),
        },
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    if len(study.directions) > 1:
        out["pareto_front"] = [
            {
                "number": t.number,
                "values": dict(zip(tune.metrics(), t.values, strict=True)),
                "params": decoded_params(t, tune),
            }
            for t in study.best_trials
        ]
        out["pareto_choice"] = tune.pareto_choice
    return out


def figures(study: optuna.Study, tune: TuneParams, experiment: str) -> dict:
    """Optuna's matplotlib plots (no browser needed); a note where a plot needs more trials."""
    from optuna.visualization import matplotlib as ovm

    from pipeline import plots

    plots.pyplot()  # the Agg backend before Optuna touches pyplot
    metrics = tune.metrics()
    target = None if len(metrics) == 1 else (lambda t: t.values[0])
    name = metrics[0]
    makers = {
        "history": lambda: ovm.plot_optimization_history(study, target=target, target_name=name),
        "importances": lambda: ovm.plot_param_importances(study, target=target, target_name=name),
        "parallel": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=name),
    }
    if len(metrics) > 1:
        makers["pareto"] = lambda: ovm.plot_pareto_front(study, target_names=list(metrics))
    out = {}
    for key, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = make()
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.set_size_inches(8, 5)
                fig.suptitle(f"{experiment}: {key}")
                fig.tight_layout()
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                fig = plots.text_figure(f"{key}: not available ({err})", f"{experiment}: {key}")
        out[key] = fig
    return out
