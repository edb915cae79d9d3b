"""The training engine: learns, stops early, resumes from a checkpoint exactly, guards NaN."""

import re

import numpy as np
import pytest
import torch

from models import DataSpec, build_model
from pipeline import engine
from pipeline.errors import PipelineError
from pipeline.params.training import TrainParams
from pipeline.tasks.predictive import Classification

SCHEMA = {"task": "classification", "class_counts": {"train": [60, 60, 60]}}


def blobs(n=240, seed=0):
    """Three well-separated Gaussian classes in 6 dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = rng.normal(0, 4, (3, 6))
    x = (centers[y] + rng.normal(0, 1, (n, 6))).astype(np.float32)
    return x, y.astype(np.int64)


def setup(seed=0, dropout=0.1, **train):
    engine.seed_everything(seed)
    model = build_model("mlp", {"hidden_sizes": (16,), "dropout": dropout}, DataSpec((6,), 3))
    x, y = blobs()
    tr = engine.Batches(x[:180], y[:180], 32, device="cpu", shuffle=True, seed=seed)
    va = engine.Batches(x[180:], y[180:], 64, device="cpu", shuffle=False)
    train = {"epochs": 6, "optimizer": {"lr": 0.01}, "checkpoint_interval": 0, **train}
    cfg = TrainParams.model_validate(train)
    return model, tr, va, cfg


def fit(model, tr, va, cfg, **kw):
    return engine.fit(model, tr, va, cfg, Classification(cfg, SCHEMA), **kw)


def val_accuracy(model, va, cfg):
    return Classification(cfg, SCHEMA).validate(model, va)["val/accuracy"]


def test_fit_learns_and_records_history():
    model, tr, va, cfg = setup()
    result = fit(model, tr, va, cfg)
    assert len(result.history) == cfg.epochs
    assert [row["epoch"] for row in result.history] == list(range(1, cfg.epochs + 1))
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert val_accuracy(model, va, cfg) > 0.9
    assert result.samples_per_second > 0


def test_early_stopping_restores_the_best_epoch(capsys):
    model, tr, va, cfg = setup(epochs=40, early_stopping={"metric": "val/accuracy", "patience": 2})
    result = fit(model, tr, va, cfg, desc="blobs")
    assert result.stopped_early and len(result.history) < 40
    best = max(row["val/accuracy"] for row in result.history)
    assert result.best_score == best
    assert val_accuracy(model, va, cfg) == pytest.approx(best)
    assert result.kept_epoch == result.best_epoch
    # the last line says why training ended early and which weights the model has
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        f"blobs: stopped early at epoch {len(result.history)} of 40 (val/accuracy did not "
        f"improve for 2 epochs); best val/accuracy {best:.4f} at epoch {result.best_epoch}, "
        f"model weights of epoch {result.best_epoch}; {result.seconds:.1f} s"
    )


def test_without_restore_best_the_model_keeps_the_last_epoch_and_says_so(capsys):
    early = {"metric": "val/accuracy", "patience": 0, "restore_best": False}
    model, tr, va, cfg = setup(epochs=3, early_stopping=early)
    result = fit(model, tr, va, cfg, desc="blobs")
    assert result.kept_epoch == 3
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("blobs: trained 3 of 3 epochs; best val/accuracy ")
    assert ", model weights of epoch 3; " in last


class Crash(Exception):
    """Stands in for a process dying mid-training."""


def crash_after(last: int, each=lambda epoch: None):
    """An `on_epoch` callback that calls `each(epoch)`, then crashes once `last` has ended."""

    def on_epoch(epoch, row):
        each(epoch)
        if epoch == last:
            raise Crash

    return on_epoch


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    model, tr, va, cfg = setup()
    fit(model, tr, va, cfg)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    ckpt = tmp_path / "checkpoint.pt"

    model, tr, va, cfg = setup()
    with pytest.raises(Crash):
        fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", on_epoch=crash_after(3))
    assert ckpt.is_file()

    # a new process would rebuild everything from scratch with other RNG draws in between
    model, tr, va, cfg = setup(seed=123)
    tr.generator.manual_seed(0)
    result = fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", desc="blobs")
    assert result.resumed_from_epoch == 3
    assert len(result.history) == cfg.epochs
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_checkpoints_are_spaced_by_the_interval_and_the_last_epoch_is_always_saved(tmp_path):
    saves = []

    def record(epoch):
        saves.append(engine.load_tensors(ckpt)["state"]["epoch"] if ckpt.is_file() else 0)

    crash_after_3 = crash_after(3, record)

    ckpt = tmp_path / "every-epoch.pt"
    model, tr, va, cfg = setup()
    with pytest.raises(Crash):
        fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", on_epoch=crash_after_3)
    assert saves == [1, 2, 3]

    saves.clear()
    ckpt = tmp_path / "hourly.pt"
    model, tr, va, cfg = setup(checkpoint_interval=3600)
    with pytest.raises(Crash):
        fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", on_epoch=crash_after_3)
    assert saves == [0, 0, 0] and not ckpt.exists()
    model, tr, va, cfg = setup(checkpoint_interval=3600)
    fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k")
    saved = engine.load_tensors(ckpt)
    assert saved["finished"] and saved["state"]["epoch"] == cfg.epochs


def test_checkpoint_of_another_config_is_not_resumed(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    model, tr, va, cfg = setup()
    fit(model, tr, va, cfg.model_copy(update={"epochs": 2}), checkpoint_path=ckpt, run_key="a")
    model, tr, va, cfg = setup()
    result = fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="b")
    assert result.resumed_from_epoch == 0


def test_nan_loss_stops_with_a_clear_error():
    model, tr, va, cfg = setup()
    tr.x[0, 0] = float("nan")
    with pytest.raises(
        PipelineError, match=r"training diverged at epoch 1, step \d+ of 6 \(loss=nan\)"
    ):
        fit(model, tr, va, cfg)


def test_regularisers_and_class_weights_train():
    model, tr, va, cfg = setup(
        l1=1e-4,
        class_weights="balanced",
        label_smoothing=0.1,
        optimizer={"name": "sgd", "lr": 0.05, "nesterov": True},
    )
    result = fit(model, tr, va, cfg)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_unknown_early_stopping_metric_is_named():
    model, tr, va, cfg = setup(early_stopping={"metric": "val/rmse"})
    with pytest.raises(PipelineError, match="'val/rmse' is not reported by this task; choose"):
        fit(model, tr, va, cfg)


def test_device_auto_falls_back_to_cpu():
    if torch.cuda.is_available():
        assert engine.select_device("auto").type == "cuda"
    else:
        assert engine.select_device("auto").type == "cpu"
        with pytest.raises(PipelineError, match="no CUDA device"):
            engine.select_device("cuda")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("scheduler", ["none", "cosine", "step", "plateau", "onecycle", "warmup"])
def test_optimizers_and_schedulers_train(name, scheduler):
    sched = {"name": "cosine", "warmup_epochs": 1} if scheduler == "warmup" else {"name": scheduler}
    lr = 0.001 if name == "rmsprop" else 0.01
    model, tr, va, cfg = setup(epochs=3, optimizer={"name": name, "lr": lr}, scheduler=sched)
    result = fit(model, tr, va, cfg)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_bf16_runs_forward_passes_under_autocast_and_still_learns():
    model, tr, va, cfg = setup(precision="bf16", epochs=8)
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)
    fit(model, tr, va, cfg)
    assert set(seen) == {torch.bfloat16}  # training forwards; validation stays fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert val_accuracy(model, va, cfg) > 0.9


def test_bf16_is_refused_for_generative_models():
    from pipeline import tasks

    cfg = TrainParams(precision="bf16")
    with pytest.raises(PipelineError, match=r"train.precision: 'bf16' is for supervised"):
        tasks.make_task("vae", cfg, {"task": "classification", "input_shape": [1, 8, 8]})


def image_setup(**train):
    engine.seed_everything(0)
    spec = DataSpec((1, 8, 8), 3)
    model = build_model("cnn", {"channels": (4,), "hidden_size": 8}, spec)
    x, y = blobs()
    images = np.repeat(x, 11, axis=1)[:, :64].reshape(-1, 1, 8, 8)  # blobs as 8x8 images
    tr = engine.Batches(images[:180], y[:180], 32, device="cpu", shuffle=True, seed=0)
    va = engine.Batches(images[180:], y[180:], 64, device="cpu", shuffle=False)
    cfg = TrainParams.model_validate({"epochs": 6, "optimizer": {"lr": 0.01}, **train})
    return model, tr, va, cfg


def test_channels_last_trains_an_image_model_in_nhwc_with_the_same_results():
    model, tr, va, cfg = image_setup()
    fit(model, tr, va, cfg)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, tr, va, cfg = image_setup(channels_last=True)
    fit(model, tr, va, cfg)
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert tr.x.is_contiguous(memory_format=torch.channels_last)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_channels_last_needs_image_inputs():
    model, tr, va, cfg = setup(channels_last=True)
    with pytest.raises(PipelineError, match=r"train.channels_last: needs image inputs.*\(6,\)"):
        fit(model, tr, va, cfg)


@pytest.mark.slow
def test_compile_trains_the_same_weights_and_saves_plain_keys():
    # no dropout: compiled code draws its random masks from another generator
    model, tr, va, cfg = setup(dropout=0.0)
    fit(model, tr, va, cfg)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, tr, va, cfg = setup(dropout=0.0, compile=True)
    fit(model, tr, va, cfg)
    assert model.state_dict().keys() == expected.keys()  # no torch.compile prefixes
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_progress_without_a_terminal_is_a_line_every_few_seconds(capsys, monkeypatch):
    """Under `dvc repro` stderr is a pipe: no bar, but a line per PIPELINE_PROGRESS_SECONDS
    and one for the last epoch."""
    model, tr, va, cfg = setup(epochs=4)
    fit(model, tr, va, cfg, desc="blobs")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # 4 quick epochs: the last one only, then how training ended
    assert re.fullmatch(
        r"blobs: epoch 4/4, loss \d\.\d{4}, val/loss \d\.\d{4}, \d+ s, done", lines[0]
    )
    assert re.fullmatch(
        r"blobs: trained 4 of 4 epochs; best val/loss \d\.\d{4} at epoch \d, "
        r"model weights of epoch \d; \d+\.\d s",
        lines[1],
    )
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "0")
    model, tr, va, cfg = setup(epochs=4)
    fit(model, tr, va, cfg, desc="blobs")
    lines = capsys.readouterr().out.splitlines()[:-1]
    assert [line.split(",")[0] for line in lines] == [f"blobs: epoch {i}/4" for i in range(1, 5)]
    assert re.search(r", ETA \d+ s$", lines[0]) and lines[-1].endswith(", done")


def test_a_resumed_run_says_so(tmp_path, capsys):
    model, tr, va, cfg = setup()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Crash):
        fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", on_epoch=crash_after(3))
    capsys.readouterr()
    model, tr, va, cfg = setup()
    fit(model, tr, va, cfg, checkpoint_path=ckpt, run_key="k", desc="blobs")
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(
        r"blobs: resumed from epoch 3 of 6 \(checkpoint \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", first
    )
