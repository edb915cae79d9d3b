"""Secrets: none in params (refused, never echoed), none from the environment in anything the
pipeline writes: the MLflow store, artifacts, dvc.lock, reports, logs."""

from __future__ import annotations

import os

import pytest

from pipeline.tracking import REDACTED, public_params
from tests.conftest import TINY, make_project, run, shipped_params, shrink, write_params

CANARY = "c4n4ry-7f3e9a"


def test_keys_that_look_like_secrets_are_redacted():
    logged = public_params(
        {
            "train.lr": 0.1,
            "db.password": CANARY,
            "api_key": CANARY,
            "aws.secret_access_key": CANARY,
            "hf_token": CANARY,
            "private_key": CANARY,
            "monkey": "kept",
            "run_key": CANARY,
        }
    )
    assert logged["train.lr"] == 0.1 and logged["monkey"] == "kept"
    assert CANARY not in logged.values()
    assert logged["db.password"] == REDACTED


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("defaults", "tracking", "uri"), f"http://alice:{CANARY}@mlflow.internal:5000"),
        (("defaults", "tracking", "artifact_location"), f"s3://key:{CANARY}@bucket/mlflow"),
        (("experiments", "cnn_digits", "tune", "storage"), f"postgresql://u:{CANARY}@db/optuna"),
    ],
)
def test_a_password_in_params_is_refused_without_being_echoed(
    tmp_path, monkeypatch, capsys, path, value
):
    from pipeline.stages import ingest

    raw = shrink(shipped_params())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", raw)
    assert ingest.main(["digits"]) == 2
    err = capsys.readouterr().err
    assert f"{'.'.join(path)}: holds a password" in err and ":***@" in err
    assert CANARY not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
@pytest.mark.integration
def test_environment_credentials_never_reach_any_output(tmp_path, monkeypatch):
    secrets = {
        "MLFLOW_TRACKING_PASSWORD": CANARY + "-mlflow",
        "PGPASSWORD": CANARY + "-pg",
        "AWS_SECRET_ACCESS_KEY": CANARY + "-aws",
        "HF_TOKEN": CANARY + "-hf",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    project = make_project(tmp_path / "p", TINY)
    proc = run(["dvc", "repro"], project)
    assert (project / "reports" / "index.html").is_file()
    logs = proc.stdout + proc.stderr
    assert CANARY not in logs
    written = [
        p for p in project.rglob("*") if p.is_file() and p.relative_to(project).parts[0] != ".git"
    ]
    assert [str(p) for p in written if CANARY.encode() in p.read_bytes()] == []
    assert any(project.glob("mlartifacts/**/*")) and (project / "mlflow.db").is_file()
    assert os.environ["PGPASSWORD"].startswith(CANARY)  # the run really had them
