"""What MLflow's system metrics cost a train or tune stage (they are on there by default).

MLflow's monitor thread runs in the stage's tracking process (tracking/writer.py), not in
the training one: every `sampling_interval` seconds (10) it reads CPU, memory, disk and network
with psutil (and the GPUs, when there are any), checks that the run is still RUNNING and logs
the sample. This measures the CPU time of those steps on a real SQLite store, per sample, and
reports it as a fraction of one core over the interval (target: under 1%).

Run from the project root: `python -m benchmarks.system_metrics_bench [--quick]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import out_argument, row, write_results

INTERVAL = 10.0  # MLflow's default sampling interval, which the pipeline keeps


def cpu_per_sample(samples: int) -> float:
    """CPU seconds of one monitor step: collect, the run-status check, log."""
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        with mlflow.start_run() as run:
            monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=INTERVAL)
            client = mlflow.MlflowClient()
            for step in range(samples + 1):
                if step == 1:  # the first step pays one-off set-up: not timed
                    start = time.process_time()
                monitor.collect_metrics()
                client.get_run(run.info.run_id)
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            spent = (time.process_time() - start) / samples
        mlflow.set_tracking_uri(None)
    return spent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.system_metrics_bench")
    parser.add_argument("--quick", action="store_true", help="5 samples instead of 50")
    out_argument(parser)
    args = parser.parse_args(argv)
    cpu = cpu_per_sample(5 if args.quick else 50)
    fraction = cpu / INTERVAL
    print(f"system metrics: {cpu * 1000:.1f} ms CPU per sample every {INTERVAL:.0f} s")
    print(f"  = {fraction:.2%} of one core")
    rows = [
        row(
            "MLflow system metrics: CPU per sampling interval",
            f"{cpu * 1000:.1f} ms per {INTERVAL:.0f} s sample",
            f"one core for {INTERVAL:.0f} s",
            fraction,
            "<= 0.01 (1%)",
        )
    ]
    write_results(
        "system_metrics",
        {"rows": rows, "cpu_seconds_per_sample": cpu, "interval_seconds": INTERVAL},
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
