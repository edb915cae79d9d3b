"""`make bench` (memory): a generated 1 GB CSV through the table source's ingest and
preprocess stages, each as its own process, beside reading the same file whole with pandas.
Both stages stream (batches of rows in, split files written batch by batch): what grows
with the file is per row, not per cell (labels, the NaN flags and the split's indices, about
100 bytes a row). The stated bound: 1.5 GB of peak RSS for a 1 GB file (11.8 M rows),
imports and MLflow included.

Run from the project root: `python -m benchmarks.memory_bench [--quick] [--size-mb N]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import ROOT, out_argument, row, timed_process, write_results

BOUND_MB = 1536


def write_csv(path: Path, size_mb: float) -> int:
    """A churn-like table of about `size_mb` MB: 10 float and 2 int features, a plan category,
    a yes/no label that depends on them. Written in chunks; returns the row count."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(0)
    rows = 0
    with open(path, "wb") as f:
        writer = None
        while f.tell() < size_mb * 2**20:
            n = 200_000
            cols = {f"f{i}": rng.normal(0, 1, n).round(4) for i in range(10)}
            cols["tenure"] = rng.integers(1, 72, n)
            cols["calls"] = rng.integers(0, 20, n)
            cols["plan"] = rng.choice(np.array(["basic", "plus", "pro", "family"]), n)
            score = cols["f0"] + 0.5 * cols["f1"] - 0.02 * cols["tenure"]
            cols["label"] = np.where(score > 0, "yes", "no")
            batch = pa.record_batch(cols)
            if writer is None:
                writer = pacsv.CSVWriter(f, batch.schema)
            writer.write_batch(batch)
            rows += n
        writer.close()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench")
    parser.add_argument("--quick", action="store_true", help="an 8 MB file")
    parser.add_argument("--size-mb", type=float, default=None, help="CSV size (default 1024)")
    out_argument(parser)
    args = parser.parse_args(argv)
    size_mb = args.size_mb or (8 if args.quick else 1024)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "big.csv"
        rows = write_csv(csv, size_mb)
        actual_mb = csv.stat().st_size / 2**20
        params = {
            "datasets": {"big": {"source": "table", "path": "big.csv", "target": "label"}},
            "experiments": {"mlp_big": {"dataset": "big"}},
        }
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        os.environ["PYTHONPATH"] = str(ROOT)  # the stages run from the scratch folder
        print(f"{actual_mb:.0f} MB CSV, {rows:,} rows", file=sys.stderr)
        stages = {}
        for stage in ("ingest", "preprocess"):
            seconds, rss = timed_process([py, "-m", f"pipeline.stages.{stage}", "big"], work)
            stages[stage] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss)}
        read = "import sys, pandas; pandas.read_csv(sys.argv[1])"
        seconds, rss = timed_process([py, "-c", read, str(csv)], work)
        pandas_whole = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss)}

    peak = max(s["peak_rss_mb"] for s in stages.values())
    for stage, s in stages.items():
        print(f"{stage}: {s['seconds']} s, peak RSS {s['peak_rss_mb']} MB")
    print(
        f"pandas.read_csv of the whole file: {pandas_whole['seconds']} s, peak RSS "
        f"{pandas_whole['peak_rss_mb']} MB; streamed stages peak {peak} MB "
        f"(bound {BOUND_MB} MB)"
    )
    rows_out = [
        row(
            f"table source on a {actual_mb:.0f} MB CSV ({rows:,} rows): peak RSS of ingest / "
            "preprocess",
            f"{stages['ingest']['peak_rss_mb']} / {stages['preprocess']['peak_rss_mb']} MB "
            f"({stages['ingest']['seconds']} + {stages['preprocess']['seconds']} s)",
            f"{pandas_whole['peak_rss_mb']} MB (`pandas.read_csv` of the whole file, "
            f"{pandas_whole['seconds']} s)",
            peak / pandas_whole["peak_rss_mb"],
            f"<= {BOUND_MB} MB",
        )
    ]
    write_results(
        "memory",
        {
            "quick": args.quick,
            "csv_mb": round(actual_mb),
            "rows": rows_out,
            "csv_rows": rows,
            "stages": stages,
            "pandas_read_csv": pandas_whole,
            "bound_mb": BOUND_MB,
            "within_bound": peak <= BOUND_MB,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
