"""A pipeline process ends through shutdown.exit: the exit code, exit handlers and buffered
output are kept, only the interpreter's final garbage collection is skipped."""

from __future__ import annotations

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
