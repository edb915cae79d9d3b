"""Tests compose the REAL params.yaml and shrink it (few epochs, tiny models, CPU)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from benchmarks.common import venv_env
from models.configs import CONFIGS
from pipeline import cores

ROOT = Path(__file__).resolve().parents[1]
# what a project copy needs to run `dvc repro`
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", "pipeline", "models")


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs -n 2), each worker process and everything it starts
    (stages, dvc, servers) keeps to its share of the cores: two workers that each ran torch on
    every core would slow each other down many times over."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        os.environ.update(cores.for_children(int(workers)))


# The longest test files, longest first (`make test` with --durations): `make test` hands
# whole files to its workers in collection order (--no-loadscope-reorder), so these start
# first and the short files fill the gaps at the end instead of one long file ending last.
LONGEST_FIRST = (
    "tests/test_pipeline_e2e.py",
    "tests/test_flows.py",
    "tests/test_benchmarks.py",
    "tests/test_tune.py",
    "tests/test_registry.py",
    "tests/reliability/test_concurrency.py",
    "tests/reliability/test_queue.py",
    "tests/reliability/test_crash_resume.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """Whatever a test started and left running (a stage it timed out waiting for, a server
    after a failed assertion) is killed with its children when the test ends, so one failure
    never cascades into the next test ("already running", a busy port, a slow machine).
    Processes of longer-lived fixtures were started before and are left alone."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=10)


# Ctrl-C raises KeyboardInterrupt in the tests and is handled by default in what they start,
# also when the session itself was started with SIGINT ignored (a shell's background job, as
# `make test &` is): Python keeps an inherited SIG_IGN, and so would every stage process, so
# the tests of what Ctrl-C does could not work.
SESSION_SIGINT = signal.default_int_handler
signal.signal(signal.SIGINT, SESSION_SIGINT)


@pytest.fixture(autouse=True)
def _ctrl_c_untouched(request):
    """A test leaves Ctrl-C handled as it found it: an ignored SIGINT is inherited by every
    process a later test starts (their Ctrl-C tests would hang). The test that changed it
    fails here, by name. (A stage run in-process installs its SIGTERM handler by design;
    Python handlers are not inherited.)"""
    yield
    after = signal.getsignal(signal.SIGINT)
    if after != SESSION_SIGINT:
        signal.signal(signal.SIGINT, SESSION_SIGINT)
        pytest.fail(f"{request.node.nodeid} left SIGINT handled by {after!r}")


# the smallest pipeline: one dataset, one 2-epoch MLP; every key dvc.yaml lists must exist
TINY = {
    "datasets": {"digits": {"source": "sklearn_digits"}},
    "defaults": {
        "seed": 42,
        "device": "cpu",
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "train": {"epochs": 2},
        "evaluate": {"batch_size": 512},
        "tracking": {"log_model": False},
        "tune": {"enabled": False},
    },
    "experiments": {"mlp_digits": {"dataset": "digits"}},
}


def shipped_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def shrink(raw: dict, epochs: int = 2) -> dict:
    """The shipped params with tiny models and few epochs, on CPU."""
    raw = copy.deepcopy(raw)
    raw["defaults"]["device"] = "cpu"
    raw["defaults"]["train"]["epochs"] = epochs
    for data in raw["datasets"].values():
        if data["source"] == "dates":
            data["samples"] = 600
    for exp in raw["experiments"].values():
        exp.setdefault("train", {})["epochs"] = epochs
        # tiny, but as conditional and of the architecture shipped: each has its own code paths
        kept = {k: v for k, v in exp["model"].items() if k in ("conditional", "architecture")}
        exp["model"] = {**tiny_model(exp["model"]["name"]), **kept}
        if exp.get("tune", {}).get("enabled"):
            exp["tune"].update(n_trials=2, epochs=epochs)
            for path in [p for p in exp["tune"]["space"] if p.startswith("model.")]:
                del exp["tune"]["space"][path]  # keep the tiny model tiny
    return raw


def tiny_model(name: str) -> dict:
    """A params.yaml model section: the family at its `tiny()` preset (models/configs.py)."""
    preset = dataclasses.asdict(CONFIGS[name].tiny())
    return {"name": name, **{k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()}}


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# a shrunk `dvc repro` of the whole shipped zoo (65 stages) took 6-10 minutes on a slow day of
# the 2-core machine: the limit catches a hang, not a slow run
TIMEOUT = 1500


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH, as `make` does."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def run_stage(
    project: Path, stage: str, target: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m pipeline.stages.<stage> <target>` in `project` (environment: this process's,
    or `env`); fails the test on an error."""
    cmd = [sys.executable, "-m", f"pipeline.stages.{stage}", target]
    env = {**(os.environ if env is None else env), "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


def will_run(check_stdout: str) -> set[str]:
    """The stages `python -m pipeline check` marks `[will run]`."""
    return {line.split()[0] for line in check_stdout.splitlines() if "[will run]" in line}


def make_project(dest: Path, raw_params: dict) -> Path:
    """A fresh git + DVC repository holding a copy of this project and the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    write_params(dest / "params.yaml", raw_params)
    (dest / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "ci@example.invalid"], dest)
    run(["git", "config", "user.name", "ci"], dest)
    run(["dvc", "init", "-q"], dest)
    # the project's DVC settings (analytics off, the offline plots page) and plot templates
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, dest / ".dvc" / name)
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    shutil.copy2(ROOT / ".dvcignore", dest / ".dvcignore")
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "project"], dest)
    return dest


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory) -> Path:
    """One shrunk project after a real `dvc repro`, shared by the end-to-end tests."""
    project = make_project(tmp_path_factory.mktemp("project"), shrink(shipped_params()))
    proc = run(["dvc", "repro"], project)
    (project / "first_repro.log").write_text(proc.stdout + proc.stderr)
    (project / "first_repro.md5.json").write_text(json.dumps(output_md5s(project)))
    return project


def output_md5s(project: Path) -> dict[str, str]:
    """The md5 of every file under every output dvc.lock records, by path."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    found = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = project / out["path"]
            for file in [path] if path.is_file() else sorted(path.rglob("*")):
                if file.is_file():
                    found[str(file.relative_to(project))] = hashlib.md5(
                        file.read_bytes()
                    ).hexdigest()
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int, backend: str | None = None) -> subprocess.Popen:
    """`mlflow server` on loopback; its backend store is `backend` (a database URL) or an
    embedded SQLite file under `root`, its artifacts a folder under `root`."""
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend or f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (root / "server.log").open("w")
    # no job runner: its half a dozen huey consumers serve GenAI jobs the tests never start,
    # and take the cores the tests need while they load
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `path` exists while `proc` runs; fail with its stderr if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert proc.poll() is None, f"the server exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{url} did not answer"
            time.sleep(0.5)


class Postgres:
    """A throwaway PostgreSQL server on loopback (Debian's `postgresql` package, installed by
    `make test`): its own data folder, trust authentication, stopped after the session."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.data = root / "data"
        bin_dir = _postgres_bin()
        # PostgreSQL refuses to run as root: the server runs as the package's `postgres` user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.pg_ctl = [*self._as, str(bin_dir / "pg_ctl")]
        root.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(root, "postgres")
        _must(
            [*self._as, str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"]
            + ["--auth=trust", "--encoding=UTF8", "--no-sync"]
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _must(
            [*self.pg_ctl, "-D", str(self.data), "-l", str(root / "server.log")]
            + ["-o", options, "-w", "-t", "60", "start"]
        )

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        # CREATE DATABASE cannot run inside a transaction
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], capture_output=True
        )


def _must(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stdout}{proc.stderr}"


def _postgres_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not versions:
        pytest.fail("PostgreSQL is not installed: `make test` installs Debian's postgresql")
    return versions[-1].parent


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """One PostgreSQL server for the whole test session. Its folder is outside pytest's
    (which only root may enter) so that the `postgres` user can reach it."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="dl-pipeline-postgres-"))
    root.chmod(0o755)
    server = Postgres(root, free_port())
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, request):
    """A real `prefect server` on loopback for the module that uses it (its start-up is paid
    once), its SQLite database in a temporary PREFECT_HOME; this process and its children
    talk to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect_home")
    # a module that checks its server's log keeps a SERVER_LOGS list (a list here would be
    # another one: pytest loads conftest.py apart from `tests.conftest`)
    getattr(request.module, "SERVER_LOGS", []).append(home / "server.log")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [os.path.join(os.path.dirname(sys.executable), "prefect"), "server", "start"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(f"{url}/health", server, timeout=180)
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: url}):
            mp.setenv("PREFECT_API_URL", url)
            yield url
    finally:
        interrupt(server)
        log.close()


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops `serve` or a worker; killed if it does not stop."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
