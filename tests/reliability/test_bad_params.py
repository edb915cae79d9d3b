"""Malformed params.yaml: one clear error naming the dotted key, before any compute, nothing
written (no data, no artifacts, no MLflow store)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.conftest import shipped_params, shrink

BASE = shrink(shipped_params())


def edit(**changes):
    """BASE with dotted paths set (a value of DELETE removes the key)."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last)
        else:
            node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


DELETE = object()
TEXT = yaml.safe_dump(BASE, sort_keys=False)
LR_SPACE = {"type": "float", "low": 0.01, "high": 0.01}

# (name, params.yaml text, what the message must contain): the issue asks for 20 or more
CASES = [
    ("unknown top-level key", edit(experimentz={}), "experimentz: unknown key"),
    ("unknown dataset key", edit(datasets__digits__splitt={}), "datasets.digits.splitt"),
    ("unknown defaults key", edit(defaults__train__epoch=3), "defaults.train.epoch"),
    (
        "unknown model key",
        edit(experiments__mlp_digits__model__hidden=[8]),
        "experiments.mlp_digits.model.hidden",
    ),
    ("unknown tune key", edit(defaults__tune__trials=3), "defaults.tune.trials"),
    ("wrong type", edit(defaults__train__epochs="ten"), "defaults.train.epochs"),
    ("zero batch size", edit(defaults__train__batch_size=0), "defaults.train.batch_size"),
    (
        "negative epochs",
        edit(experiments__mlp_digits__train__epochs=-3),
        "experiments.mlp_digits.train.epochs",
    ),
    ("negative lr", edit(defaults__train__optimizer__lr=-0.1), "defaults.train.optimizer.lr"),
    ("split fraction over 1", edit(datasets__digits__split__val=1.5), "datasets.digits.split.val"),
    (
        "missing dataset",
        edit(experiments__mlp_digits__dataset="nope"),
        "experiments.mlp_digits.dataset: 'nope' is not a declared dataset",
    ),
    (
        "unknown model",
        edit(experiments__mlp_digits__model={"name": "mamba"}),
        "experiments.mlp_digits.model.name: 'mamba' is not a known model",
    ),
    (
        "unknown sampler",
        edit(experiments__cnn_digits__tune__sampler="bayes"),
        "experiments.cnn_digits.tune.sampler",
    ),
    (
        "empty search range",
        edit(experiments__cnn_digits__tune__space={"train.optimizer.lr": LR_SPACE}),
        "experiments.cnn_digits.tune.space",
    ),
    ("unknown source", edit(datasets__digits__source="mnyst"), "datasets.digits.source"),
    ("unknown device", edit(defaults__device="tpu"), "defaults.device"),
    (
        "experiment not a mapping",
        edit(experiments__mlp_digits=3),
        "experiments.mlp_digits: expected a mapping",
    ),
    ("missing datasets section", edit(datasets=DELETE), "datasets: missing section"),
    ("no experiment", edit(experiments={}), "experiments: empty; declare at least one"),
    (
        "table without a path",
        edit(datasets__digits={"source": "table", "target": "y"}),
        "datasets.digits.path: missing required key",
    ),
    ("bad cron", edit(schedule={"cron": "every night"}), "schedule.cron"),
    ("empty file", "", "is empty"),
    ("non-mapping top level", "- datasets\n- experiments\n", "expected a mapping"),
    (
        "duplicate key",
        TEXT.replace("experiments:\n", "experiments:\n  mlp_digits: {dataset: digits}\n", 1),
        "duplicate key 'mlp_digits'",
    ),
    ("not YAML at all", "datasets: [unclosed\n", "not valid YAML"),
]


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("name", "text", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_params_fail_before_any_work_and_write_nothing(
    tmp_path, monkeypatch, capsys, name, text, message
):
    from pipeline.stages import ingest, train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    before = snapshot(tmp_path)
    for stage, target in ((ingest, "digits"), (train, "mlp_digits")):
        assert stage.main([target]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err and err.count("\n") <= 4  # one message per problem
    assert snapshot(tmp_path) == before  # no data, artifacts or mlflow.db
