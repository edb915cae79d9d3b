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


def test_synthesize():
    assert _outs("synthesize") == {str(paths.processed_dir(EXP)), str(paths.judge_dir(EXP))}
    assert paths.synthetic_samples_file(EXP).parent == paths.processed_dir(EXP)
    deps = _paths(_stage("synthesize")["deps"])
    assert {str(paths.processed_dir("${item.base}")), str(paths.model_file("${item.from}"))} <= deps


def test_tune():
    assert _outs("tune") == {str(paths.tuning_dir(EXP)), str(paths.tuning_report_dir(EXP))}
    for p in (paths.tuned_file, paths.study_journal):
        assert p(EXP).parent == paths.tuning_dir(EXP)
    for p in (paths.trials_csv, paths.tuning_summary, paths.tuning_plots_dir):
        assert p(EXP).parent == paths.tuning_report_dir(EXP)
    [kept] = [e for e in _stage("tune")["outs"] if isinstance(e, dict)]
    assert kept == {str(paths.tuning_dir("${key}")): {"persist": True}}  # a study resumes
    assert str(paths.processed_dir(DS)) in _paths(_stage("tune")["deps"])
    assert str(paths.tuned_file(EXP)) in _paths(_stage("train")["deps"])
    assert str(paths.tuned_file(EXP)) in _paths(_stage("evaluate")["deps"])


def test_train():
    assert _outs("train") == {
        str(p(EXP))
        for p in (
            paths.model_file,
            paths.resolved_config_file,
            paths.train_summary_file,
            paths.checkpoint_file,
            paths.history_file,
            paths.train_plots_dir,
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
    for exp_out in _outs("evaluate") | _outs("tune") - {str(paths.tuning_dir(EXP))}:
        assert exp_out.startswith(str(paths.EXPERIMENT_REPORTS) + "/")


def test_every_stage_module_a_stage_runs_is_a_dependency():
    for name in ("ingest", "preprocess", "judge", "tune", "train", "evaluate", "report"):
        stage = _stage(name)
        module = stage["cmd"].split()[2]
        assert module.replace(".", "/") + ".py" in _paths(stage["deps"]), name


def _plot(stage: str, path) -> dict:
    [entry] = [
        e
        for e in _stage(stage)["plots"]
        if isinstance(e, dict) and next(iter(e)) and _render(next(iter(e))) == str(path(EXP))
    ]
    return next(iter(entry.values()))


def test_learning_curves_plot_loss_and_the_metric_not_the_learning_rate():
    """DVC draws every quantity of the history on its own panel (template `curves`): the
    fields it is told to plot are the columns that train writes."""
    import json

    from pipeline.metrics import curves_csv

    plot = _plot("train", paths.train_plots_dir)
    assert plot == {"template": "curves", "x": "epoch", "y": "value"}
    assert paths.curves_file(EXP).parent == paths.train_plots_dir(EXP)
    template = json.loads((ROOT / ".dvc" / "plots" / "curves.json").read_text())
    assert template["facet"]["row"]["field"] == "panel"
    assert template["spec"]["encoding"]["color"]["field"] == "series"
    history = [
        {"epoch": e, "train/loss": 1 / e, "val/loss": 2 / e, "val/accuracy": 0.5, "lr": 0.1}
        for e in (1, 2)
    ]
    rows = curves_csv(history).splitlines()
    assert rows[0] == "epoch,panel,series,value"
    assert rows[1:4] == ["1,loss,train,1.0", "1,loss,val,2.0", "1,accuracy,val,0.5"]
    assert len(rows) == 7 and not any(",lr," in r for r in rows)


def test_confusion_table_sits_with_the_figures_under_the_confusion_template():
    plot = _plot("evaluate", paths.plots_dir)  # PNGs in it are drawn as images
    assert plot == {"template": "confusion", "x": "predicted", "y": "actual"}
    assert paths.confusion_csv(EXP).parent == paths.plots_dir(EXP)
