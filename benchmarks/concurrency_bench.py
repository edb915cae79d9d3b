"""`make bench` (sharing the cores): two train stages at once vs the same two one after the other.

Two torch processes that each run a thread per core on the same cores slow each other down
many times over (OpenMP threads spin while they wait). Every pipeline process takes its share
of the cores instead (pipeline/cores.py), so two stages at once should never take longer than
the same two in sequence. Measured on two CNN trainings (train@cnn_digits and a copy with
another seed), each its own `python -m pipeline.stages.train` process as `dvc repro` starts it:

1. in sequence (each alone: every core);
2. at once, each taking its share (the default);
3. at once with `OMP_NUM_THREADS` set to every core in both: what the share prevents.

Target: 2 <= 1.0x of 1. Run from the project root: `python -m benchmarks.concurrency_bench`.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import ROOT, out_argument, row, setup_project, venv_env, write_results
from pipeline import cores

EXPERIMENTS = ("cnn_digits", "cnn_digits_seed7")


def params(epochs: int, quick: bool) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["defaults"]["device"] = "cpu"
    raw["defaults"]["tracking"]["log_model"] = False
    cnn = raw["experiments"]["cnn_digits"]
    cnn["tune"] = {"enabled": False}
    if quick:  # the family's smallest preset
        from tests.conftest import tiny_model

        cnn["model"] = tiny_model("cnn")
    cnn.setdefault("train", {}).update(epochs=epochs, early_stopping={"patience": 0})
    raw["experiments"] = {
        "cnn_digits": cnn,
        "cnn_digits_seed7": {**copy.deepcopy(cnn), "seed": 7},
    }
    raw.pop("synthetic", None)  # its generator is not among these experiments
    return raw


def train_stages(workdir: Path, env: dict, names=EXPERIMENTS) -> tuple[float, list[dict]]:
    """Start the train stage of every experiment in `names` at once and wait for all:
    (wall seconds, their train.json summaries)."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.stages.train", name],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"concurrency_bench: a train stage failed:\n{err.decode()[-3000:]}")
    seconds = time.perf_counter() - start
    return seconds, [summary(workdir, name) for name in names]


def in_sequence(workdir: Path, env: dict) -> tuple[float, list[dict]]:
    """The same stages one after the other."""
    runs = [train_stages(workdir, env, [name]) for name in EXPERIMENTS]
    return sum(seconds for seconds, _ in runs), [s for _, [s] in runs]


def summary(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "artifacts" / name / "train.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency_bench")
    parser.add_argument("--quick", action="store_true", help="few epochs (a smoke run)")
    out_argument(parser)
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else 40
    n = cores.available()
    base = {k: v for k, v in venv_env().items() if k not in (*cores.THREAD_VARS, cores.SHARED)}
    everything = {**base, **dict.fromkeys(cores.THREAD_VARS, str(n))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup_project(workdir, params(epochs, args.quick))
        # a registry of this run's own, so that nothing else on the machine changes the shares
        base["TMPDIR"] = everything["TMPDIR"] = tmp
        for mode, run, env in (
            ("sequence", in_sequence, base),
            ("shared", train_stages, base),
            ("every_core", train_stages, everything),
        ):
            seconds, summaries = run(workdir, env)
            results[mode] = {
                "seconds": round(seconds, 2),
                "threads": [s["threads"] for s in summaries],
                "train_seconds": [s["train_seconds"] for s in summaries],
            }
            print(f"{mode}: {seconds:.1f} s, threads {results[mode]['threads']}")
    seq, shared, every = (results[m]["seconds"] for m in ("sequence", "shared", "every_core"))
    label = f"2 train stages (cnn_digits, {epochs} epochs each, {n} cores)"
    rows = [
        row(
            f"{label}: at once, each its share of the cores, vs one after the other",
            f"{shared} s (threads {results['shared']['threads']})",
            f"{seq} s (threads {results['sequence']['threads']})",
            shared / seq,
            "<= 1.0x",
        ),
        row(
            f"{label}: at once, both on every core (OMP_NUM_THREADS={n}), vs one after the other",
            f"{every} s",
            f"{seq} s",
            every / seq,
            "reported (what the share prevents)",
        ),
    ]
    write_results(
        "concurrency", {"quick": args.quick, "epochs": epochs, **results, "rows": rows}, args.out
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
