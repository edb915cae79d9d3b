"""`python -m pipeline compare`: the DVC experiments side by side, one row per (DVC experiment,
pipeline experiment): its main test metric with the 95% interval, its ratio to the task's
baseline, and the params it changed from the commit it was run on.

`dvc exp show` lists every param and every metric of every experiment as its own column (several
hundred for the shipped params); this is the short view. The data is DVC's own
(`Repo.experiments.show`): the workspace, HEAD and each experiment run from HEAD.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import flatten
from pipeline.metrics import with_interval
from pipeline.tasks.kinds import KINDS

COLUMNS = ("DVC experiment", "experiment", "main metric", "value [95% interval]", "vs baseline")


def main_metric(metrics: dict) -> tuple[str, str, str] | None:
    """(name, value with interval, ratio to the baseline) of the first task whose main metric
    the metrics hold; None when they hold none (an experiment not evaluated yet)."""
    for kind in KINDS.values():
        if kind.main_metric in metrics:
            ratio = metrics.get(kind.baseline_ratio)
            better = "higher" if kind.higher_is_better else "lower"
            return (
                f"{kind.main_metric} ({better} is better)",
                with_interval(metrics, kind.main_metric),
                "" if ratio is None else f"{ratio:.3f}x {kind.baseline}",
            )
    return None


def changed(params: dict, base: dict, experiment: str) -> list[str]:
    """`key=value` for the params of `experiment` (its own and the defaults) that differ from
    `base`."""
    mine, theirs = flatten(params), flatten(base)
    keys = [k for k in mine if k.startswith((f"experiments.{experiment}.", "defaults."))]
    keys += [k for k in theirs if k not in mine and k.startswith(f"experiments.{experiment}.")]
    return [f"{k}={mine.get(k, '(removed)')}" for k in keys if mine.get(k) != theirs.get(k)]


def _data(state, kind: str) -> dict:
    """{file: data} of a DVC experiment state's params or metrics (files with errors left out)."""
    found = (getattr(state.data, kind) if state.data else None) or {}
    return {path: result.get("data", {}) for path, result in found.items()}


def rows(states, experiments: list[str] | None = None) -> list[list[str]]:
    """The table's rows from DVC's experiment states (baselines and their experiments)."""
    out = []
    for baseline in states:
        base_params = _data(baseline, "params").get("params.yaml", {})
        entries = [(baseline.name or baseline.rev[:7], baseline)]
        for run in baseline.experiments or []:
            head = run.revs[0]
            entries.append((run.name or head.name or head.rev[:7], head))
        for label, state in entries:
            params = _data(state, "params").get("params.yaml", {})
            for path, metrics in sorted(_data(state, "metrics").items()):
                experiment = Path(path).parent.name
                found = main_metric(metrics)
                if found is None or (experiments and experiment not in experiments):
                    continue
                edits = changed(params, base_params, experiment) if state is not baseline else []
                out.append([label, experiment, *found, ", ".join(edits)])
    return out


def table(rows: list[list[str]]) -> str:
    header = [*COLUMNS, "changed params"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def compare(project: str = ".", experiments: list[str] | None = None, num: int = 1) -> str:
    from dvc.repo import Repo

    with Repo(project) as repo:
        states = repo.experiments.show(num=num)
    found = rows(states, experiments)
    if not found:
        return "compare: no evaluated experiments yet (run `dvc repro` or `dvc exp run`)"
    return table(found)
