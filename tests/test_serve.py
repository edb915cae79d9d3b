"""`python -m pipeline serve` refuses clearly, before serving anything, when it cannot work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, free_port


def serve(tmp_path, env_updates: dict, schedule: dict | None = None):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if schedule is not None:
        params["schedule"] = schedule
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), **env_updates)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_without_a_configured_server_refuses(tmp_path):
    proc = serve(tmp_path, {})
    assert proc.returncode == 2
    assert "no Prefect server configured: set PREFECT_API_URL" in proc.stderr
    assert "make serve" in proc.stderr
    assert not list((tmp_path / "prefect-home").glob("*.db"))  # no temporary server started


def test_serve_with_no_server_answering_refuses(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    proc = serve(tmp_path, {"PREFECT_API_URL": url})
    assert proc.returncode == 2
    assert f"no Prefect server answers at PREFECT_API_URL={url}" in proc.stderr


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"cron": "0 3 * *"}, "schedule.cron: '0 3 * *' is not a cron expression"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "schedule.timezone: 'Mars/Olympus'"),
        ({"cron": "0 3 * * *", "pul": True}, "schedule.pul: unknown key; did you mean 'pull'?"),
    ],
)
def test_a_bad_schedule_is_rejected_before_any_server_is_contacted(tmp_path, schedule, message):
    proc = serve(tmp_path, {"PREFECT_API_URL": "http://127.0.0.1:9/api"}, schedule)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Prefect server" not in proc.stderr
