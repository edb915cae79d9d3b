"""The import graph of pipeline/ and models/, read from the source (imports inside functions
count: they run). Arrows point one way, mlflow stays in the tracking module, and dvc.yaml's
code deps are the modules each stage really runs, so editing one re-runs the stage."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

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
    "pipeline.tracking.context",
    "pipeline.tracking.store",
    "pipeline.tracking.writer",
    "pipeline.tracking.registry",
    "pipeline.tracking.serving",
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
COMMANDS = {
    "pipeline.__main__",
    "pipeline.flows",
    "pipeline.parallel",
    "pipeline.results",
    "pipeline.verify",
}
# modules that start one of ours as a process (`python -m <module>`): a stage importing the
# starter runs what the process runs (the tune stage's trials run in its workers); a stage
# module started again (the train stage under torchrun) is that stage's own code
STARTS = {
    "pipeline.tuning.launch": {"pipeline.tuning.worker"},
    "pipeline.distributed": {"pipeline.stages.train"},
}


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
    tracking = {"store", "serving", "registry"}
    assert users == {f"pipeline.tracking.{name}" for name in tracking}


def test_every_process_one_of_our_modules_starts_is_listed():
    """STARTS holds every module that names one of our modules as a string (`python -m
    <module>`), so that code_deps counts what such a process runs."""
    named = {}
    for name, path in MODULES.items():
        found = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant)
            and node.value in MODULES.keys() - {name}
            and "." in node.value  # a module, not a package's name (`code_paths=["pipeline"]`)
        }
        if found:
            named[name] = found
    assert named == STARTS


def test_no_import_circles():
    circles = [
        (a, b)
        for a, b in itertools.combinations(sorted(MODULES), 2)
        if a in reach(b) and b in reach(a)
    ]
    assert circles == []


def code_deps(module: str) -> list[str]:
    """The files dvc.yaml should list for the stage running `module`: its own file first, then
    every module it runs (NOT_DEPS aside), and the model library as a whole or, where only
    the params schema is used, its torch-free configs.

    A package whose every file the stage runs is listed as its folder: one entry in dvc.lock
    instead of one per file. DVC rewrites the whole lock file after every stage, so its size
    is paid once per stage run (the shrunk zoo's lock: 2,498 dep entries and 405 KB one per
    file, 1,206 and 259 KB with folders; a rewrite 4.19 vs 2.62 s)."""
    runs = {module}
    while True:  # what it imports, and what the processes it starts import, followed through
        found = runs | {m for r in runs for m in reach(r, skip=NOT_DEPS)}
        found |= {
            p for r in found for p in STARTS.get(r, ()) if not p.startswith("pipeline.stages.")
        }
        if found == runs:
            break
        runs = found
    own = str(MODULES[module].relative_to(ROOT))
    files = {
        str(MODULES[m].relative_to(ROOT)) for m in runs - NOT_DEPS if m.split(".")[0] != "models"
    }
    for folder in sorted({str(Path(f).parent) for f in files - {own}}):
        # importing one module of a package runs its __init__ as well
        if folder != "pipeline" and set(package_files(folder)) <= files | {f"{folder}/__init__.py"}:
            files = {f for f in files if str(Path(f).parent) != folder} | {folder}
    needed = [own, *sorted(files - {own})]
    if any(m.split(".")[0] == "models" and m != "models.configs" for m in runs):
        needed.append("models")
    elif "models.configs" in runs:
        needed.append("models/configs.py")
    return needed


def package_files(folder: str) -> list[str]:
    """Every file DVC hashes for the folder (.dvcignore leaves out bytecode)."""
    return [
        str(p.relative_to(ROOT))
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def is_code(dep: str) -> bool:
    return dep.endswith(".py") or dep.split("/")[0] in ("pipeline", "models")


def test_dvc_yaml_code_deps_are_what_each_stage_imports():
    """On a failure, `python -m tests.test_imports` rewrites dvc.yaml's code deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = {}  # stage -> (code deps dvc.yaml misses, listed code it does not run)
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = {d for d in body["deps"] if isinstance(d, str)}
        needed = set(code_deps(body["cmd"].split()[2]))
        listed = {d for d in deps if is_code(d)}
        problems[name] = (sorted(needed - deps), sorted(listed - needed))
    print(problems)
    assert problems == {name: ([], []) for name in stages}


def write_code_deps(path: Path) -> None:
    """Rewrite each stage's code deps in dvc.yaml (other deps, comments and layout kept)."""
    stages = yaml.safe_load(path.read_text())["stages"]
    lines, out, stage = path.read_text().splitlines(keepends=True), [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if re.match(r"^  (\w+):", line):
            stage = re.match(r"^  (\w+):", line).group(1)
        if stage and re.match(r"^\s+deps:\s*$", line):
            indent = re.match(r"^(\s+)", line).group(1) + "  "
            body = stages[stage].get("do", stages[stage])
            rest = []
            while i < len(lines) and re.match(r"^\s+- ", lines[i]):
                if not is_code(lines[i].strip()[2:].split("#")[0].strip()):
                    rest.append(lines[i])
                i += 1
            out += [f"{indent}- {dep}\n" for dep in code_deps(body["cmd"].split()[2])] + rest
    path.write_text("".join(out))


def test_importing_a_stage_or_the_flows_loads_no_heavy_library():
    """`--help`, the flows' process and `check` pay no torch, MLflow or Optuna import: each is
    imported where the work that needs it starts."""
    import subprocess
    import sys

    stages = sorted(m for m in MODULES if m.startswith("pipeline.stages."))
    code = (
        "import sys, pipeline.flows, pipeline.tuning.worker, pipeline.tuning.launch, "
        f"{', '.join(stages)};"
        "print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_check_imports_no_heavy_library():
    """`python -m pipeline check` validates params.yaml (model sections included) and reads
    DVC's status without torch, MLflow, Optuna or Prefect."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "check", "--no-status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported_names = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "pipeline" in imported_names
    assert not imported_names & {"torch", "mlflow", "optuna", "prefect"}


if __name__ == "__main__":
    write_code_deps(ROOT / "dvc.yaml")
