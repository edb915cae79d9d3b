"""A pipeline process ends through shutdown.exit: the exit code, exit handlers and buffered
output are kept, only the interpreter's final garbage collection is skipped."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, run

SCRIPT = """
import atexit, gc, sys
from pathlib import Path
from pipeline import shutdown

out = Path(sys.argv[1])
atexit.register(lambda: out.write_text(f"handler ran, frozen {gc.get_freeze_count()}"))
print("buffered line")  # stdout is a pipe here: block-buffered until the process ends
shutdown.exit(int(sys.argv[2]))
"""


def test_exit_keeps_code_handlers_and_output(tmp_path):
    for code in (0, 3):
        marker = tmp_path / f"handler-{code}.txt"
        proc = run([sys.executable, "-c", SCRIPT, str(marker), str(code)], cwd=ROOT, check=False)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == "buffered line\n"
        text = marker.read_text()
        assert text.startswith("handler ran, frozen ")
        assert int(text.rsplit(" ", 1)[1]) > 1000  # the live objects were frozen before exit


def test_stage_cli_exit_code_on_bad_input(tmp_path):
    """A stage run as a script still exits 2 with its one message on a bad name."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = run(
        [sys.executable, "-m", "pipeline.stages.train", "no_such_experiment"],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "no_such_experiment" in proc.stderr


def test_stage_cli_reports_its_error_to_a_file_and_stops_at_its_timeout(tmp_path):
    """Started by the Prefect flow (which cannot read its stderr), a stage also writes its
    error to PIPELINE_ERROR_FILE; past PIPELINE_STAGE_TIMEOUT it stops through SystemExit
    with exit 142 and leaves no output behind."""
    import os
    import signal

    from pipeline import paths
    from pipeline.stages import ERROR_FILE, TIMEOUT, TIMEOUT_EXIT
    from tests.conftest import TINY, write_params

    write_params(tmp_path / "params.yaml", TINY)
    error_file = tmp_path / "error.txt"
    env = {**os.environ, ERROR_FILE: str(error_file)}
    cmd = [sys.executable, "-m", "pipeline.stages.train", "no_such_experiment"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    [line] = error_file.read_text().splitlines()
    assert line.startswith("error: train@no_such_experiment: ") and line in proc.stderr

    assert TIMEOUT_EXIT == 128 + signal.SIGALRM
    env[TIMEOUT] = "0.2"  # ingest imports MLflow and opens its store: over 0.2 s
    cmd = [sys.executable, "-m", "pipeline.stages.ingest", "digits"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == TIMEOUT_EXIT, proc.stderr
    assert not (tmp_path / paths.raw_dir("digits")).exists()
    assert error_file.read_text().count("\n") == 1  # a stop is not an error of the stage's


def test_a_stop_signal_during_a_store_write_waits_for_the_write_to_end():
    """Interrupted inside an SQLite transaction, a write would keep the store locked and the
    stage could not mark its own run KILLED: the signal takes effect once the write is done."""
    import os
    import signal

    import pytest

    from pipeline import shutdown

    steps = []

    @shutdown.holding_signals
    def write():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-write
        steps.append("the write went on after the signal")

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        write()
    assert steps == ["the write went on after the signal"]
    assert signal.getsignal(signal.SIGINT) is before
    # SIGTERM reaches the handler the stage installed, as it would have
    handler = signal.signal(signal.SIGTERM, lambda signum, _: steps.append(signum))
    try:
        with shutdown.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("still writing")
        assert steps[1:] == ["still writing", signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, handler)
