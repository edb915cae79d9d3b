"""reports/benchmarks.md: one table of every benchmark's rows (ours, reference, ratio, target)
from the result files in reports/benchmarks/. Run `python -m benchmarks.report` to rebuild it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import RESULTS

ORDER = ("train", "concurrency", "startup", "memory", "data", "flow", "parallel", "tune", "gpu")


def row_line(r: dict, file: str | None = None) -> str:
    """One row (benchmarks.common.row) of the markdown table; the file column when given."""
    ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}x"
    cells = [r["benchmark"], r["ours"], r["reference"], ratio, r["target"]]
    return "| " + " | ".join(cells + ([file] if file is not None else [])) + " |"


def write(results_dir: Path = RESULTS) -> Path:
    """Write <results_dir>.md (reports/benchmarks.md) from the JSON files in `results_dir`."""
    rank = {name: i for i, name in enumerate(ORDER)}
    files = sorted(results_dir.glob("*.json"), key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (each benchmark beside its reference, same machine, same run).",
        "",
        "| benchmark | ours | reference | ratio | target | file |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for path in files:
        results = json.loads(path.read_text())
        lines += [row_line(r, path.name) for r in results.get("rows", [])]
        notes += [f"{path.stem}: {note}" for note in results.get("notes", [])]
    cpus = {json.loads(p.read_text()).get("cpu_count") for p in files}
    lines += ["", *(f"- {note}" for note in notes)]
    lines += ["", f"CPU cores: {', '.join(map(str, sorted(c for c in cpus if c)))}", ""]
    markdown = results_dir.with_suffix(".md")
    markdown.write_text("\n".join(lines))
    return markdown


if __name__ == "__main__":
    print(write().read_text())
    sys.exit(0)
