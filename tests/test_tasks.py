"""Each task's step function learns on a fixed batch; the GAN collapse detector fires."""

import numpy as np
import pytest
import torch

from models import DataSpec, build_model
from models.registry import get_entry
from pipeline import engine
from pipeline.errors import PipelineError
from pipeline.experiment import data_spec
from pipeline.params.training import TrainParams
from pipeline.tasks import generative, make_task

IMAGE_SCHEMA = {
    "task": "classification",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "class_counts": {"train": [4] * 10},
    "normalization": {"mean": [0.3], "std": [0.35]},
}
SERIES_SCHEMA = {"task": "forecasting", "input_shape": [12, 1], "horizon": 2}
TEXT_SCHEMA = {"task": "language_model", "input_shape": [10], "vocab_size": 5}
PAIRS_SCHEMA = {
    "task": "seq2seq",
    "input_shape": [6],
    "vocab_size": 8,
    "num_classes": 10,
    "horizon": 7,
}


def digits_batch(n=40):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n, None] / 16.0 - 0.3) / 0.35
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.target[:n])


def series_batch(n=40):
    t = np.arange(n + 14)
    wave = np.sin(t / 3.0).astype(np.float32)
    x = np.stack([wave[i : i + 12] for i in range(n)])[:, :, None]
    y = np.stack([wave[i + 12 : i + 14] for i in range(n)])
    return torch.tensor(x), torch.tensor(y)


def text_batch(n=20):
    ids = torch.tensor([1, 2, 3, 4] * 10)  # a periodic "text": fully predictable
    x = torch.stack([ids[i : i + 10] for i in range(n)])
    y = torch.stack([ids[i + 1 : i + 11] for i in range(n)])
    return x, y


def pairs_batch(n=32):
    """Reverse six tokens: source ids 2-7, target BOS, the reversed ids + 2, EOS."""
    x = torch.randint(2, 8, (n, 6), generator=torch.Generator().manual_seed(0))
    body = x.flip(1) + 2
    y = torch.cat([torch.full((n, 1), 2), body, torch.full((n, 1), 3)], 1)
    return x, y


CASES = {  # kind: (model, schema, batch)
    "seq2seq": ("seq2seq", PAIRS_SCHEMA, pairs_batch),
    "language_model": ("rnn", TEXT_SCHEMA, text_batch),
    "classification": ("rnn", IMAGE_SCHEMA, digits_batch),
    "forecasting": ("rnn", SERIES_SCHEMA, series_batch),
    "vae": ("vae", IMAGE_SCHEMA, digits_batch),
    "diffusion": ("diffusion", IMAGE_SCHEMA, digits_batch),
    "gan": ("gan", IMAGE_SCHEMA, digits_batch),
}


# the transformer learns each predictive kind through the same tasks as the rnn
TRANSFORMER_CASES = {
    f"{kind}/transformer": ("transformer", schema, batch)
    for kind, (_, schema, batch) in CASES.items()
    if kind in ("language_model", "classification", "forecasting")
}


@pytest.mark.parametrize("case", list(CASES) + list(TRANSFORMER_CASES))
def test_step_function_learns_a_fixed_batch(case):
    torch.manual_seed(0)
    name, schema, batch = {**CASES, **TRANSFORMER_CASES}[case]
    kind = case.split("/")[0]
    model = build_model(name, get_entry(name).config_cls.tiny(), data_spec(schema))
    train = {"optimizer": {"lr": 0.01}}
    if kind == "gan":  # adversarial losses need not fall; with G frozen, D must learn
        train = {"optimizer": {"lr": 1e-12}, "adversarial": {"d_lr": 0.01}}
    cfg = TrainParams.model_validate(train)
    task = make_task(kind, cfg, schema)
    optimizers = task.optimizers(model)
    x, y = batch()
    model.train()
    key = "d_loss" if kind == "gan" else "loss"
    losses = [task.train_step(model, x, y, optimizers)[key].item() for _ in range(40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    metrics = task.validate(model, engine.Batches(x, y, 16, device="cpu", shuffle=False))
    assert set(metrics) == set(task.val_metrics)


class Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1, 1, 8, 8))

    def forward(self, z):
        return self.bias.expand(len(z), -1, -1, -1)


def test_collapse_detector_fires_on_a_constant_generator():
    model = build_model(
        "gan", {"latent_dim": 4, "channels": 4, "conditional": False}, DataSpec((1, 8, 8), 10)
    )
    model.generator = Constant()
    cfg = TrainParams()
    task = make_task("gan", cfg, IMAGE_SCHEMA)
    x, y = digits_batch()
    with pytest.raises(PipelineError, match="GAN collapsed: samples are near-identical"):
        task.validate(model, engine.Batches(x, y, 16, device="cpu", shuffle=False))


def test_collapse_detector_fires_on_a_winning_discriminator():
    model = build_model("gan", get_entry("gan").config_cls.tiny(), DataSpec((1, 8, 8), 10))
    cfg = TrainParams.model_validate({"adversarial": {"collapse_steps": 3, "collapse_loss": 10}})
    task = make_task("gan", cfg, IMAGE_SCHEMA)  # every D loss counts as "near zero"
    x, y = digits_batch()
    optimizers = task.optimizers(model)
    for _ in range(3):
        task.train_step(model, x, y, optimizers)
    with pytest.raises(PipelineError, match="discriminator loss stayed below 10.0 for 3 steps"):
        task.validate(model, engine.Batches(x, y, 16, device="cpu", shuffle=False))


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift():
    from pipeline.evaluation.generative import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-3)
    assert frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=0.05)
    assert generative.spread(torch.zeros(5, 1, 8, 8)) == 0


def test_every_task_kind_has_a_trainer_an_evaluator_and_a_reported_main_metric():
    """One table (pipeline/tasks/kinds.py) names the kinds; each has its training step and
    its test evaluation, and check's view of the families agrees with the model registry."""
    from models import list_models
    from pipeline.evaluation import generative as gen_eval
    from pipeline.evaluation import predictive as pred_eval
    from pipeline.evaluation import translation
    from pipeline.tasks import predictive
    from pipeline.tasks.kinds import KINDS

    assert set(KINDS) == set(predictive.TRAINERS) | set(generative.TRAINERS)
    evaluators = set(pred_eval.EVALUATORS) | set(gen_eval.EVALUATORS) | set(translation.EVALUATORS)
    assert set(KINDS) == evaluators
    for name, kind in KINDS.items():
        trainer = {**predictive.TRAINERS, **generative.TRAINERS}[name]
        assert trainer.val_metrics == kind.val_metrics, name
        assert set(kind.families) <= set(list_models()), name
    assert {f for kind in KINDS.values() for f in kind.families} == set(list_models())
