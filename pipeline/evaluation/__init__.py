"""Test-split evaluation by task kind: `evaluate(kind, inputs)` runs the kind's evaluator.

Every evaluator returns an `Evaluation`: `split/metric` numbers for DVC, MLflow and the
report, details for JSON, and figures saved as PNG.
"""

from __future__ import annotations

from pipeline.evaluation.base import Evaluation, Inputs


def evaluate(kind: str, inputs: Inputs) -> Evaluation:
    from pipeline.evaluation import generative, predictive

    return {**predictive.EVALUATORS, **generative.EVALUATORS}[kind](inputs)
