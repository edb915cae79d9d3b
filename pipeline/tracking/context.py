"""What a stage's MLflow run records about where it ran, with no MLflow import: the project's
folder and store URI, who owns a run while it is RUNNING, the program and commit, redacted
params and the DVC hash of the data."""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline import paths

TAG_PREFIX = "pipeline."

# No network beyond the package indexes (README): MLflow's usage telemetry would call its
# servers from every process that loads MLflow. Set MLFLOW_DISABLE_TELEMETRY=false to send it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SECRET = re.compile(
    r"password|passwd|secret|token|credential|(^|[._-])(api|access|private)?[_-]?key$",
    re.IGNORECASE,
)
REDACTED = "***"


def project_root() -> Path:
    """The project's folder: where relative store paths in params.yaml point. A queued
    `dvc exp run` runs stages in a temporary copy and names the real project in DVC_ROOT, so
    its runs land in the project's store rather than in a folder deleted afterwards."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def store_uri(uri: str) -> str:
    """`uri` with a relative SQLite path made absolute under the project's folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Who owns a run while it is RUNNING (machine, stage process, project folder): a later
    stage closes the runs whose owner died without ending them."""
    owner = {
        "host": socket.gethostname(),
        "pid": str(pid or os.getpid()),
        "project": str(project_root()),
    }
    return {TAG_PREFIX + k: v for k, v in owner.items()}


# set by `python -m pipeline run` for the stages it starts (each through its own `dvc` call)
INVOCATION_ENV = "PIPELINE_INVOCATION"


def invocation(pid: int | None = None) -> str | None:
    """Which pipeline invocation the stage process `pid` belongs to, the same for all its
    stages, so that MLflow's "Group by" shows one `dvc repro` as one group: what `pipeline
    run` set in INVOCATION_ENV, else the `dvc` process the stage descends from (its command,
    start time and pid); None for a stage started by hand."""
    import psutil

    if os.environ.get(INVOCATION_ENV):
        return os.environ[INVOCATION_ENV]
    try:
        for proc in psutil.Process(pid or os.getpid()).parents():
            cmd = proc.cmdline()
            at = next((i for i, a in enumerate(cmd[:3]) if Path(a).name == "dvc"), None)
            if at is not None:
                words = [a for a in cmd[at + 1 :] if not a.startswith("-")][:2]
                return invocation_name(" ".join(["dvc", *words]), proc.create_time(), proc.pid)
    except (OSError, psutil.Error):
        return None  # no process table to read: no group, nothing else lost
    return None  # started by hand, not by dvc


def invocation_name(command: str, started: float, pid: int) -> str:
    from datetime import datetime

    return f"{command} {datetime.fromtimestamp(started):%Y-%m-%d %H:%M:%S} (pid {pid})"


def check_artifact_root(uri: str, experiment_name: str, artifact_location: str) -> None:
    """Refuse a SQLite store copied from another checkout (a clone, a copied folder): MLflow
    keeps each experiment's artifact folder as an absolute path, so the copy's runs would
    write their models and figures into the other checkout. Only for an `artifact_location`
    relative to the project (one meant to be inside it); read without importing MLflow, so
    the stage stops before any work."""
    import contextlib
    import sqlite3
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from pipeline.errors import PipelineError

    uri = store_uri(uri)
    if not uri.startswith("sqlite:///") or "://" in artifact_location:
        return
    if Path(artifact_location).is_absolute():
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if not database.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            found = db.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment_name,)
            ).fetchone()
    except sqlite3.Error:
        return  # not an MLflow store (yet): MLflow itself says what is wrong
    if found is None or not found[0].startswith("file:"):
        return
    stored = Path(url2pathname(urlparse(found[0]).path))
    expected = (project_root() / artifact_location).resolve()
    if stored != expected:
        raise PipelineError(
            f"defaults.tracking: the MLflow store {database} keeps experiment "
            f"{experiment_name!r}'s artifacts in {stored}, not in this project ({expected}): "
            "it was copied from another checkout, whose folder its runs would write into. "
            f"Move {database.name} aside to start this project's own store, or set "
            f"tracking.artifact_location: {stored} to share that folder on purpose"
        )


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Values of keys that look like secrets are redacted: they never reach the store."""
    return {k: REDACTED if SECRET.search(k) else v for k, v in params.items()}


def source_tags() -> dict[str, str]:
    """The tags MLflow gives a run it starts itself: who, which program, which commit."""
    import getpass

    tags = {
        "mlflow.user": getpass.getuser(),
        "mlflow.source.name": sys.argv[0] or "python",
        "mlflow.source.type": "LOCAL",
    }
    # one git call: the commit and the branch (HEAD when detached)
    found = _git("rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    commit, branch = (found.split() + ["unknown", ""])[:2] if found else ("unknown", "")
    tags["mlflow.source.git.commit"] = commit
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def dvc_data_hash(dataset: str) -> str:
    """The md5 DVC recorded in dvc.lock for data/processed/<dataset> (written by preprocess@ or
    synthesize@), or 'untracked'."""
    lock = paths.DVC_LOCK.resolve()
    if not lock.is_file():
        return "untracked"
    stat = lock.stat()
    stages = _read_lock(lock, stat.st_mtime_ns, stat.st_size).get("stages", {})
    target = os.fspath(paths.processed_dir(dataset))
    for stage in (f"preprocess@{dataset}", f"synthesize@{dataset}"):  # a synthetic one: made
        for out in stages.get(stage, {}).get("outs", []):
            if out.get("path") == target:
                return out.get("md5", "untracked")
    return "untracked"


@functools.lru_cache(maxsize=4)
def _read_lock(path: Path, mtime_ns: int, size: int) -> dict:
    """dvc.lock parsed once per version: it lists every stage of the zoo (about 100 kB, 0.5 s
    to parse) and a stage asks for it up to three times."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: 10x faster
    return yaml.load(path.read_text(), Loader=loader) or {}  # noqa: S506 - a safe loader
