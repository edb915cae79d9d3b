"""The import graph of pipeline/ and models/, read from the source (imports inside functions
count: they run). Arrows point one way, mlflow stays in the tracking module, and dvc.yaml's
code deps are the modules each stage really runs, so editing one re-runs the stage."""

from __future__ import annotations

import ast
import itertools

import yaml

from tests.conftest import ROOT

# modules that do not change what a stage computes, left out of dvc.yaml's deps so that
# editing them re-runs nothing: the stage CLI wrapper, logging to MLflow and the console,
# atomic file writes, locks, thread shares, process exit, error types, and file names
# (dvc.yaml declares each output path itself; tests/test_paths.py keeps the two in step)
NOT_DEPS = {
    "pipeline",
    "pipeline.stages",
    "pipeline.tracking",
    "pipeline.serving",
    "pipeline.progress",
    "pipeline.atomic",
    "pipeline.locks",
    "pipeline.cores",
    "pipeline.shutdown",
    "pipeline.errors",
    "pipeline.schema_errors",
    "pipeline.paths",
}
# commands above the stages: they may run stages
COMMANDS = {"pipeline.__main__", "pipeline.flows", "pipeline.verify"}


def module_files() -> dict[str, object]:
    found = {}
    for folder in ("pipeline", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = module_files()


def imported(name: str) -> set[str]:
    """Every module name `name` imports, ours and others' (`from a import b`: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def ours(name: str) -> set[str]:
    """Our modules `name` imports. A package's `__init__` counts only where it is imported
    itself (`from models import build_model`), not on the way to one of its modules."""
    return (imported(name) & MODULES.keys()) - {name}


GRAPH = {name: ours(name) for name in MODULES}


def reach(start: str, skip: set[str] = frozenset()) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen - skip:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_stage_imports_another_and_nothing_below_imports_the_stages():
    stages = {m for m in MODULES if m.startswith("pipeline.stages.")}
    for name in MODULES:
        upward = {m for m in GRAPH[name] if m in stages or m == "pipeline.flows"}
        if name in COMMANDS:
            continue
        assert not upward - {name}, f"{name} imports {sorted(upward)}"


def test_models_import_nothing_from_the_pipeline():
    for name in (m for m in MODULES if m.split(".")[0] == "models"):
        assert not {m for m in GRAPH[name] if m.startswith("pipeline")}, name


def test_only_the_tracking_modules_import_mlflow():
    users = {m for m in MODULES if any(i.split(".")[0] == "mlflow" for i in imported(m))}
    assert users == {"pipeline.tracking", "pipeline.serving"}


def test_no_import_circles():
    circles = [
        (a, b)
        for a, b in itertools.combinations(sorted(MODULES), 2)
        if a in reach(b) and b in reach(a)
    ]
    assert circles == []


def test_dvc_yaml_code_deps_are_what_each_stage_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = {}  # stage -> (code deps dvc.yaml misses, listed code it does not run)
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split()[2]
        deps = {d for d in body["deps"] if isinstance(d, str)}
        runs = {module} | reach(module, skip=NOT_DEPS)
        needed = {
            str(MODULES[m].relative_to(ROOT)) for m in runs - NOT_DEPS if not m.startswith("models")
        }
        # the model library as a whole, or only its torch-free configs (the params schema)
        if any(m.startswith("models") and m != "models.configs" for m in runs):
            needed.add("models")
        elif "models.configs" in runs:
            needed.add("models/configs.py")
        listed = {d for d in deps if d.endswith(".py") or d == "models"}
        problems[name] = (sorted(needed - deps), sorted(listed - needed))
    print(problems)
    assert problems == {name: ([], []) for name in stages}


def test_importing_a_stage_or_the_flows_loads_no_heavy_library():
    """`--help`, the flows' process and `check` pay no torch, MLflow or Optuna import: each is
    imported where the work that needs it starts."""
    import subprocess
    import sys

    stages = sorted(m for m in MODULES if m.startswith("pipeline.stages."))
    code = (
        f"import sys, pipeline.flows, pipeline.tune_worker, {', '.join(stages)};"
        "print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
