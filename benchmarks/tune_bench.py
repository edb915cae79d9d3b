"""`make bench` (tuning): Optuna studies on the shipped digits CNN, each beside a reference run
in the same process, reporting ratios.

1. pruning: the median pruner against no pruning, same sampler seed and trial count: total
   epochs trained and best validation accuracy.
2. storage: the same study on the journal file (with heartbeats) against in-memory storage.
3. workers: the tune stage with 2 worker processes against 1 worker, trials per minute.

Run from the project root: `python -m benchmarks.tune_bench [--quick]`. Results are printed and
written to reports/benchmarks/tune.json (and reports/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import out_argument, row, setup_project, write_results


def with_tune(exp, **tune):
    return exp.model_copy(update={"tune": exp.tune.model_copy(update=tune)})


def run_study(exp, storage, name: str):
    """Optimise in this process with the project's objective (no MLflow), like one worker."""
    import optuna

    from pipeline.errors import PipelineError
    from pipeline.tuning import objective, search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=list(exp.tune.directions()),
        sampler=search.make_sampler(exp.tune, exp.tune.seed),
        pruner=search.make_pruner(exp.tune, search.trial_epochs(exp)),
    )
    start = time.perf_counter()
    study.optimize(
        objective.Objective("cnn_digits", exp, None),
        n_trials=exp.tune.n_trials,
        catch=(PipelineError,),
    )
    return study, time.perf_counter() - start


def bench_pruning(exp) -> dict:
    out = {}
    for pruner in ("none", "median"):
        study, seconds = run_study(with_tune(exp, pruner=pruner), None, f"pruning-{pruner}")
        trials = study.get_trials()
        out[pruner] = {
            "total_epochs": sum(t.user_attrs["epochs"] for t in trials),
            "best_val_accuracy": max(
                t.user_attrs["val_best"]["val/accuracy"]
                for t in trials
                if t.state.name == "COMPLETE"
            ),
            "best_val_loss": study.best_value,
            "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "seconds": round(seconds, 1),
        }
    out["epochs_ratio"] = out["median"]["total_epochs"] / out["none"]["total_epochs"]
    out["accuracy_gap_pp"] = 100 * (
        out["none"]["best_val_accuracy"] - out["median"]["best_val_accuracy"]
    )
    return out


def bench_storage(exp, workdir: Path, reps: int) -> dict:
    from pipeline.tuning import studies

    times = {"memory": [], "journal": []}
    for rep in range(reps):  # interleaved, best of each: less noise from whatever else runs
        for kind in times:
            storage = None
            if kind == "journal":
                journal = workdir / f"bench-{rep}.journal"
                storage = studies.open_storage(str(journal), exp.tune.heartbeat_seconds)
            _, seconds = run_study(exp, storage, f"storage-{kind}-{rep}")
            times[kind].append(seconds)
    best = {k: min(v) for k, v in times.items()}
    return {
        "memory_s": round(best["memory"], 2),
        "journal_s": round(best["journal"], 2),
        "ratio": best["journal"] / best["memory"],
    }


def bench_workers(exp) -> dict:
    """The real stage (worker processes, journal, MLflow child runs) with 1 and 2 workers."""
    import optuna

    from pipeline.stages.tune import tune_experiment
    from pipeline.tuning import studies

    out = {}
    # trials of equal cost: the width (channels) stays fixed, so the two runs differ only in
    # how many workers share the study
    space = {k: v for k, v in exp.tune.space.items() if not k.startswith("model.channels")}
    for workers in (1, 2):
        # a journal of its own per run, so neither resumes the other's study
        journal = str(Path(f"workers-{workers}.journal").resolve())
        run_exp = with_tune(exp, workers=workers, space=space, storage=journal)
        start = time.perf_counter()
        tune_experiment("cnn_digits", run_exp)
        wall = time.perf_counter() - start
        storage = studies.open_storage(str(studies.storage_url("cnn_digits", run_exp.tune)), 10)
        study = optuna.load_study(
            study_name=studies.study_name("cnn_digits", run_exp), storage=storage
        )
        trials = study.get_trials()
        window = (
            max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        ).total_seconds()
        out[workers] = {
            "trials": len(trials),
            "wall_s": round(wall, 1),
            "trial_window_s": round(window, 1),
            "trials_per_minute": 60 * len(trials) / window,
            "trials_per_minute_wall": 60 * len(trials) / wall,
        }
    out["throughput_ratio"] = out[2]["trials_per_minute"] / out[1]["trials_per_minute"]
    out["wall_ratio"] = out[2]["trials_per_minute_wall"] / out[1]["trials_per_minute_wall"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune_bench")
    parser.add_argument("--quick", action="store_true", help="fewer trials (a smoke run)")
    parser.add_argument(
        "--only", choices=("pruning", "storage", "workers"), action="append", help="repeatable"
    )
    out_argument(parser)
    args = parser.parse_args(argv)
    only = set(args.only or ("pruning", "storage", "workers"))
    pruning = storage = workers = None
    scale = 0.3 if args.quick else 1.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        params = setup_project(Path(tmp))
        cnn = params.experiments["cnn_digits"]
        if "pruning" in only:
            # the shipped search (val/loss, median pruner), with and without pruning
            pruning = bench_pruning(with_tune(cnn, n_trials=max(4, int(20 * scale))))
            med, none = pruning["median"], pruning["none"]
            print(
                f"pruning: median {med['total_epochs']} epochs vs none {none['total_epochs']} "
                f"-> {pruning['epochs_ratio']:.2f}x; best val accuracy "
                f"{med['best_val_accuracy']:.4f} vs {none['best_val_accuracy']:.4f} "
                f"({pruning['accuracy_gap_pp']:+.2f} pp)"
            )
            rows.append(
                row(
                    "tuning: epochs trained, median pruner vs none (same trials)",
                    f"{med['total_epochs']} epochs, best val acc {med['best_val_accuracy']:.4f}",
                    f"{none['total_epochs']} epochs, {none['best_val_accuracy']:.4f}",
                    pruning["epochs_ratio"],
                    "fewer epochs, accuracy within 1 pp",
                )
            )
        if "storage" in only:
            # --quick: a smoke run of the code path (2 short trials), not a measurement
            n, epochs, reps = (2, 2, 1) if args.quick else (10, 8, 2)
            storage = bench_storage(with_tune(cnn, n_trials=n, epochs=epochs), Path(tmp), reps)
            print(
                f"storage: journal {storage['journal_s']} s vs memory {storage['memory_s']} s "
                f"-> {storage['ratio']:.3f}x"
            )
            rows.append(
                row(
                    f"tuning: {n} trials on the journal file (heartbeats) vs in memory",
                    f"{storage['journal_s']} s",
                    f"{storage['memory_s']} s",
                    storage["ratio"],
                    "reported (per-trial storage cost)",
                )
            )
        if "workers" in only:
            n = max(4, int(24 * scale))
            workers = bench_workers(with_tune(cnn, n_trials=n, epochs=10, pruner="none"))
            print(
                f"workers: 2 workers {workers[2]['trials_per_minute']:.1f} trials/min vs 1 "
                f"worker {workers[1]['trials_per_minute']:.1f} -> "
                f"{workers['throughput_ratio']:.2f}x (wall clock incl. worker start-up: "
                f"{workers['wall_ratio']:.2f}x)"
            )
            rows.append(
                row(
                    "tuning: 2 worker processes vs 1 (trials per minute, 1 thread each)",
                    f"{workers[2]['trials_per_minute']:.1f} trials/min",
                    f"{workers[1]['trials_per_minute']:.1f} trials/min",
                    workers["throughput_ratio"],
                    "reported (2 cores)",
                )
            )
    results = {"quick": args.quick, "pruning": pruning, "storage": storage, "workers": workers}
    write_results("tune", {**results, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
