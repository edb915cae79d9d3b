"""Test-split evaluation by task kind: `evaluate(kind, inputs)` runs the kind's evaluator.

Every evaluator returns an `Evaluation`: `split/metric` numbers for DVC, MLflow and the
report, details for JSON, and figures saved as PNG.
"""

from __future__ import annotations

from pipeline.evaluation.base import Evaluation, Inputs


def evaluate(kind: str, inputs: Inputs) -> Evaluation:
    from pipeline.evaluation import generative, predictive, translation

    evaluators = {**predictive.EVALUATORS, **generative.EVALUATORS, **translation.EVALUATORS}
    result = evaluators[kind](inputs)
    if hasattr(inputs.model, "attention_maps"):  # the transformer family
        result.figures["attention"] = attention(inputs)
    return result


def attention(i: Inputs):
    """The last layer's attention (mean over heads) on the first test inputs: which
    positions (rows, patches, characters, words) each position reads from."""
    from pipeline import plots

    tokens = len(i.batches.input_shape) == 1  # token inputs get wider, labelled panels
    x = i.batches.head(2 if tokens else 4)
    if i.model.per_step:  # causal: the first 32 steps are read exactly as in the full input
        x = x[:, :32]
    maps = i.model.attention_maps(x)[-1].float().cpu().numpy()
    labels = None
    if tokens and "vocab" in i.schema and x.shape[1] <= 40:
        vocab = i.schema["vocab"]
        labels = [[vocab[t] for t in row] for row in x.tolist()]
    title = f"{i.experiment}: last-layer attention on {len(x)} test inputs (mean over heads)"
    return plots.attention_figure(maps, title, labels)
