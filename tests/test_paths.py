"""dvc.yaml and pipeline/paths.py name the same files, so they cannot drift apart."""

import yaml

from pipeline import paths
from tests.conftest import ROOT

EXP, DS = "EXP", "DS"


def _render(value: str) -> str:
    return value.replace("${key}", EXP).replace("${item.dataset}", DS)


def _stage(name: str) -> dict:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    return stage.get("do", stage)


def _paths(entries) -> set[str]:
    out = set()
    for entry in entries or []:
        out.add(_render(next(iter(entry)) if isinstance(entry, dict) else entry))
    return out


def _outs(name: str) -> set[str]:
    stage = _stage(name)
    return _paths(stage.get("outs")) | _paths(stage.get("metrics")) | _paths(stage.get("plots"))


def test_ingest_preprocess_and_judge():
    assert _outs("ingest") == {str(paths.raw_dir(EXP))}
    assert _outs("preprocess") == {str(paths.processed_dir(EXP))}
    assert str(paths.raw_dir(EXP)) in _paths(_stage("preprocess")["deps"])
    assert _outs("judge") == {str(paths.judge_dir(EXP))}
    assert str(paths.processed_dir(EXP)) in _paths(_stage("judge")["deps"])


def test_tune():
    assert _outs("tune") == {
        str(p(EXP))
        for p in (
            paths.tuned_file,
            paths.study_journal,
            paths.trials_csv,
            paths.tuning_summary,
            paths.tuning_plots_dir,
        )
    }
    assert str(paths.processed_dir(DS)) in _paths(_stage("tune")["deps"])
    assert str(paths.tuned_file(EXP)) in _paths(_stage("train")["deps"])


def test_train():
    assert _outs("train") == {
        str(p(EXP))
        for p in (
            paths.model_file,
            paths.resolved_config_file,
            paths.train_summary_file,
            paths.checkpoint_file,
            paths.history_file,
            paths.augment_preview,
        )
    }
    assert str(paths.processed_dir(DS)) in _paths(_stage("train")["deps"])


def test_evaluate():
    assert _outs("evaluate") == {
        str(p(EXP))
        for p in (
            paths.metrics_file,
            paths.summary_file,
            paths.details_file,
            paths.plots_dir,
            paths.confusion_csv,
        )
    }
    deps = _paths(_stage("evaluate")["deps"])
    for p in (paths.model_file, paths.history_file, paths.train_summary_file):
        assert str(p(EXP)) in deps
    assert str(paths.processed_dir(DS)) in deps
    assert str(paths.judge_dir(DS)) in deps


def test_report():
    assert _outs("report") == {str(paths.REPORT_MD), str(paths.REPORT_HTML)}
    assert str(paths.EXPERIMENT_REPORTS) in _paths(_stage("report")["deps"])
    for exp_out in _outs("evaluate") | _outs("tune") - {
        str(paths.tuned_file(EXP)),
        str(paths.study_journal(EXP)),
    }:
        assert exp_out.startswith(str(paths.EXPERIMENT_REPORTS) + "/")


def test_every_stage_module_a_stage_runs_is_a_dependency():
    for name in ("ingest", "preprocess", "judge", "tune", "train", "evaluate", "report"):
        stage = _stage(name)
        module = stage["cmd"].split()[2]
        assert module.replace(".", "/") + ".py" in _paths(stage["deps"]), name
