"""Where a study lives and how its trials are counted: Optuna storages (a journal file with
heartbeats by default, or an RDB URL), study names that resume, and the trial budget shared by
every worker (a killed worker's trial is failed, queued again and not counted twice)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from pipeline import paths
from pipeline.config import ExperimentParams
from pipeline.errors import PipelineError
from pipeline.params.tuning import TuneParams
from pipeline.shutdown import signals_held
from pipeline.tuning import experimental
from pipeline.tuning.search import make_pruner, make_sampler, trial_epochs

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


def open_storage(url: str, heartbeat_seconds: int):
    """A journal file path, or an RDB URL (postgresql://..., sqlite:///...), with heartbeats."""
    grace = 2 * heartbeat_seconds
    with experimental():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        if "://" in url:
            return _rdb_storage(url, heartbeat_seconds, grace, retry)
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(url, heartbeat_seconds, grace, retry)


def _rdb_storage(url: str, heartbeat_seconds: int, grace: int, retry, tries: int = 3):
    """Optuna's RDBStorage. Workers started at once on a fresh database (one per machine)
    each create its tables; PostgreSQL then refuses all but one of them ("duplicate key
    value", "relation ... already exists": one worker of three failed, measured). The next
    try finds the tables made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_seconds,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry,
            )
        except (IntegrityError, ProgrammingError) as err:
            created = isinstance(err, IntegrityError) or "already exists" in str(err)
            if not created or attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


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


def requeue(trial: optuna.Trial) -> None:
    """An interrupted trial (Ctrl-C, SIGTERM) fails now and is queued again with its params,
    as a killed worker's trial is once its heartbeat goes stale."""
    study = trial.study
    # both writes or neither: a second stop signal between them (the worker's parent watcher
    # sends one when the stage ends) would leave the trial FAIL with no WAITING copy
    with signals_held():
        study.tell(trial, state=TrialState.FAIL)
        with experimental():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            retry(study, study.trials[trial.number])
