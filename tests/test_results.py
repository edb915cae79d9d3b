"""README.md's results table is generated from reports/results.json (the report's leaderboard
of a `dvc repro` of the shipped params), and both are current with params.yaml.
(`--record` itself runs in tests/test_pipeline_e2e.py, after a real `dvc repro`.)"""

import json
import shutil

import pytest
import yaml

from pipeline import results
from tests.conftest import ROOT


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_the_readme_table_is_the_recorded_results_of_the_shipped_params(at_root):
    assert results.problems() == []
    recorded = json.loads(results.RESULTS.read_text())
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["experiments"]
    assert sorted(row[0] for row in recorded["rows"]) == sorted(shipped)
    block = results.readme_block((ROOT / "README.md").read_text())
    assert recorded["machine"]["cpu"] in block and recorded["made"] in block


def test_a_hand_edit_of_the_table_is_found(at_root, tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    row = "| " + " | ".join(json.loads(results.RESULTS.read_text())["rows"][0]) + " |"
    assert row in text
    readme.write_text(text.replace(row, row.replace(" | ", " | 0", 1)))
    found = results.problems(readme=readme)
    assert len(found) == 1 and "not what reports/results.json gives" in found[0]
    readme.write_text(text.replace(results.END, ""))
    with pytest.raises(Exception, match="no results block"):
        results.problems(readme=readme)


def named(found: list[str], what: str) -> set[str]:
    """The experiments `problems` names as `what` ("changed since", "not in", ...)."""
    lead = f"experiments {what} the run behind the README's results: "
    return {
        n for f in found if f.startswith(lead) for n in f[len(lead) :].split(";")[0].split(", ")
    }


def test_params_edited_since_the_run_are_named(at_root, tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    first, *_ = raw["experiments"]
    raw["experiments"][first].setdefault("train", {})["epochs"] = 1
    # another dataset's section: every experiment on it is stale, the others are not
    other = next(d for d in raw["datasets"] if d != raw["experiments"][first]["dataset"])
    raw["datasets"][other]["seed"] = 123
    on_other = {n for n, e in raw["experiments"].items() if e["dataset"] == other}
    raw["experiments"]["brand_new"] = dict(raw["experiments"][first])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    found = results.problems(params_file=params)
    assert on_other and named(found, "changed since") == {first} | on_other
    assert named(found, "not in") == {"brand_new"}
    del raw["experiments"][first]
    params.write_text(yaml.safe_dump(raw))
    assert first in named(results.problems(params_file=params), "removed since")
    # the tracking settings change no number: not a reason to re-run
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["defaults"]["tracking"]["enabled"] = False
    params.write_text(yaml.safe_dump(raw))
    assert results.problems(params_file=params) == []


def test_the_command_rewrites_only_the_block(at_root, tmp_path, monkeypatch):
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "reports").mkdir()
    recorded = json.loads(results.RESULTS.read_text())
    recorded["rows"] = recorded["rows"][:1]
    (tmp_path / results.RESULTS).write_text(json.dumps(recorded))
    monkeypatch.chdir(tmp_path)
    before = (tmp_path / "README.md").read_text()
    assert results.main() == 0
    after = (tmp_path / "README.md").read_text()
    old = results.readme_block(before)
    assert after == before.replace(old, results.render(recorded))
    assert after.count("\n| ") < before.count("\n| ")


def test_without_a_recorded_run_the_command_says_what_to_run(tmp_path, monkeypatch, capsys):
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    monkeypatch.chdir(tmp_path)
    for args in ({}, {"check": True}):
        assert results.main(**args) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "python -m pipeline results --record" in err
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()
