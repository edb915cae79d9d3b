"""Each benchmark runs at tiny sizes and reports ours beside its reference (timings are not
asserted here: performance is measured by `make bench`, not tested)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def bench(tmp_path, module: str, *args: str) -> dict:
    out = tmp_path / "benchmarks"
    run(["python", "-m", f"benchmarks.{module}", "--quick", "--out", str(out), *args], cwd=ROOT)
    name = module.removesuffix("_bench")
    results = json.loads((out / f"{name}.json").read_text())
    assert results["rows"], "no result rows"
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert all(r["benchmark"] in markdown for r in results["rows"])
    return results


def test_train_bench(tmp_path):
    results = bench(tmp_path, "train_bench")
    for name in ("mlp_digits", "cnn_digits"):
        r = results["throughput"][name]
        assert r["ours_samples_per_s"] > 0 and r["hand_written_samples_per_s"] > 0
        assert r["ratio"] == pytest.approx(
            r["ours_samples_per_s"] / r["hand_written_samples_per_s"], rel=0.01
        )
        t = results["tracking"][name]
        assert t["wall_on_s"] > 0 and t["wall_off_s"] > 0
        # the stage's fixed cost is its wall time less the training loop; its MLflow writer
        # reported opening the store, the run, the model and how long the stage waited
        assert 0 < t["fixed_on_s"] < t["wall_on_s"] and 0 < t["fixed_off_s"] < t["wall_off_s"]
        writer = t["writer"]
        assert writer["open"] > 0 and writer["start"] > 0 and writer["log_raw_input_model"] > 0
        assert 0 < writer["waited_s"] < t["wall_on_s"]
    existing = results["tracking"]["fixed_costs"]["existing_store"]
    for part in ("import_torch_s", "optimizer_s", "import_mlflow_s", "store_open_s"):
        assert existing[part] > 0, part
    assert existing["run_start_s"] > 0 and existing["register_s"] > 0
    assert existing["log_model_s"] > 0 and existing["package_scan_s"] > 0


def test_startup_bench(tmp_path):
    results = bench(tmp_path, "startup_bench")
    assert results["check_s"] > 0
    # an lr change re-runs that experiment's train and evaluate, the report and the plan
    # (which changes no judge's answer, and no search: mlp_digits does not tune), nothing else
    assert results["dvc"]["after_lr_change"]["stages_run"] == [
        "plan",
        "train@mlp_digits",
        "evaluate@mlp_digits",
        "report",
    ]
    assert results["stages"]["train@mlp_digits"]["peak_rss_mb"] > 100


def test_tune_bench(tmp_path):
    results = bench(tmp_path, "tune_bench", "--only", "storage")
    assert results["storage"]["journal_s"] > 0 and results["storage"]["memory_s"] > 0


def test_gpu_bench_on_cpu(tmp_path):
    results = bench(tmp_path, "gpu_bench", "--device", "cpu")
    assert set(results["variants"]) == {"fp32", "bf16 + channels_last"}
    # a fraction of a peak measured in the same run on a shared CPU: only its sign is stable
    assert results["variants"]["fp32"]["fraction_of_peak"] > 0


def test_flow_bench(tmp_path):
    results = bench(tmp_path, "flow_bench", "--targets", "train@mlp_digits")
    assert results["task_runs"] == results["stages"]  # one task run per stage
    assert results["plain"]["plain_s"] > 0 and results["plain"]["flow_s"] > 0


def test_memory_bench(tmp_path):
    results = bench(tmp_path, "memory_bench")
    assert results["csv_rows"] > 0 and set(results["stages"]) == {"ingest", "preprocess"}
    assert results["pandas_read_csv"]["peak_rss_mb"] > 0


def test_data_bench(tmp_path):
    results = bench(tmp_path, "data_bench")
    images, table, loader = results["images"], results["table"], results["loader"]
    assert list(images["stages"]) == [
        "ingest@photos",
        "preprocess@photos",
        "train@cnn_photos",
        "evaluate@cnn_photos",
    ]
    assert sum(images["counts"].values()) == images["images"] == 2000
    assert all(
        s["peak_rss_mb"] > 0 for s in [*images["stages"].values(), *table["stages"].values()]
    )
    assert table["rows"] > 0 and table["train_samples_per_s"] > 0
    for workers in (0, 2):
        disk = loader[f"disk_{workers}_workers"]
        assert disk["identical_weights"] and disk["samples_per_s"] > 0


def test_concurrency_bench(tmp_path):
    from pipeline import cores

    results = bench(tmp_path, "concurrency_bench")
    half = max(1, cores.available() // 2)
    # alone, a stage takes every core; two at once take half each (the one that ends last
    # may take the cores back for its last epoch), unless told otherwise
    assert results["sequence"]["threads"] == [cores.available()] * 2
    assert min(results["shared"]["threads"]) == half
    assert results["every_core"]["threads"] == [cores.available()] * 2
    assert [r["ratio"] for r in results["rows"]] == [
        pytest.approx(results[m]["seconds"] / results["sequence"]["seconds"], rel=0.01)
        for m in ("shared", "every_core")
    ]


def test_parallel_bench(tmp_path):
    results = bench(tmp_path, "parallel_bench")
    assert results["sequential_dvc_repro_s"] > 0 and results["parallel_run_s"] > 0
    assert results["pinned_dvc_repro_s"] > 0 and results["threads_per_stage"] >= 1
    # each stage's start and end, from the run's console lines
    assert set(results["timeline"]) >= {"ingest@digits", "train@mlp_digits", "report"}
    # the same results either way: every deterministic output and every metric
    assert results["outputs_compared"] >= 5 and results["outputs_differing"] == []
    assert results["metrics_identical"] and results["experiments"] == 1
    assert "artifacts/mlp_digits/model.pt" not in results["outputs_not_compared"]


def test_system_metrics_bench(tmp_path):
    results = bench(tmp_path, "system_metrics_bench")
    assert results["cpu_seconds_per_sample"] > 0 and results["interval_seconds"] == 10
