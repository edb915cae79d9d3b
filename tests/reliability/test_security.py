"""Security: untrusted files never run code, and names never escape the project's folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from pipeline.errors import ParamsError, PipelineError
from tests.conftest import ROOT, shipped_params, shrink, write_params

CODE_DIRS = ("pipeline", "models", "benchmarks", "tests")


def torch_load_calls():
    """(file, line, call) for every `torch.load(...)` in the project's code."""
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    yield path.relative_to(ROOT), node.lineno, node


def test_every_torch_load_passes_weights_only_true():
    calls = list(torch_load_calls())
    assert len(calls) >= 2  # engine.load_tensors (every project file) and pretrained weights
    unsafe = [
        f"{path}:{line}"
        for path, line, call in calls
        if not any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in call.keywords
        )
    ]
    assert unsafe == []


class Payload:
    """Unpickling this runs `touch <marker>`: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    import torch

    from tests.test_engine import fit, setup

    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"run_key": "k", "model": Payload(marker)}, checkpoint)
    model, tr, va, cfg = setup()
    with pytest.raises(PipelineError, match=r"checkpoint\.pt.*refused"):
        fit(model, tr, va, cfg, checkpoint_path=checkpoint, run_key="k")
    assert not marker.exists()


def test_yaml_with_a_python_tag_is_rejected_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    params = tmp_path / "params.yaml"
    text = yaml.safe_dump(shrink(shipped_params()), sort_keys=False)
    params.write_text(f"{text}extra: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ParamsError, match=r"python/object/apply.*not allowed"):
        load_params(params)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("experiments", "../escape"),
        ("experiments", "/etc/passwd"),
        ("experiments", "nested/name"),
        ("experiments", "dots..here"),
        ("datasets", "../../outside"),
        ("datasets", "back\\slash"),
    ],
)
def test_names_that_could_leave_the_project_folders_are_rejected(tmp_path, where, name):
    raw = shrink(shipped_params())
    first = next(iter(raw[where]))
    raw[where][name] = raw[where].pop(first)
    if where == "datasets":
        for exp in raw["experiments"].values():
            if exp["dataset"] == first:
                exp["dataset"] = name
    with pytest.raises(ParamsError) as err:
        load_params(write_params(tmp_path / "params.yaml", raw))
    assert f"{where}.{name}: not a safe name" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("value", ["team/../../etc", "/absolute", "a\\b"])
def test_a_tracking_experiment_name_with_path_parts_is_rejected(tmp_path, value):
    raw = shrink(shipped_params())
    raw["defaults"]["tracking"]["experiment_name"] = value
    with pytest.raises(ParamsError, match=r"defaults\.tracking\.experiment_name"):
        load_params(write_params(tmp_path / "params.yaml", raw))
