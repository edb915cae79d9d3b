"""`python -m pipeline verify-determinism <experiment>`: train the experiment twice in this
process, as train@ would (same seed, same data, tracking off), and compare the weights and
every metric of every epoch bit for bit. Exit 0 when identical, 1 with the differences."""

from __future__ import annotations

import sys

from pipeline.config import Params


def train_once(params: Params, experiment: str, epochs: int | None):
    from pipeline import engine
    from pipeline.stages.train import prepare, resolved_experiment

    exp, _ = resolved_experiment(params, experiment)
    if epochs is not None:
        exp = exp.model_copy(update={"train": exp.train.model_copy(update={"epochs": epochs})})
    prep = prepare(exp, experiment)
    result = engine.fit(prep.model, prep.train, prep.val, exp.train, prep.task, desc="verify")
    weights = {k: v.detach().cpu() for k, v in prep.model.state_dict().items()}
    return weights, result.history


def differences(first, second) -> list[str]:
    """What differs between two (weights, history) results; empty when bit-identical."""
    import torch

    (w1, h1), (w2, h2) = first, second
    out = [
        f"weights {k}: max |diff| {(w1[k].double() - w2[k].double()).abs().max().item():.3g}"
        for k in w1
        if not torch.equal(w1[k], w2[k])
    ]
    for row1, row2 in zip(h1, h2, strict=True):
        out += [
            f"epoch {row1['epoch']} {k}: {row1[k]!r} vs {row2[k]!r}"
            for k in row1
            if row1[k] != row2[k]
        ]
    return out


def run(params: Params, experiment: str, epochs: int | None) -> int:
    runs = [train_once(params, experiment, epochs) for _ in range(2)]
    found = differences(*runs)
    weights, history = runs[0]
    if found:
        print(f"{experiment}: the two runs differ in {len(found)} places:", file=sys.stderr)
        for line in found[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(
        f"{experiment}: deterministic: {len(weights)} weight tensors and "
        f"{len(history)} epochs of metrics are bit-identical across two runs"
    )
    return 0
