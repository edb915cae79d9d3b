"""What an evaluator of any task receives (`Inputs`) and returns (`Evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from pipeline.config import ExperimentParams
    from pipeline.engine import Batches


@dataclass(frozen=True)
class Inputs:
    experiment: str
    exp: ExperimentParams  # resolved: defaults < experiment < tuned
    schema: dict  # the dataset's processed schema
    model: nn.Module  # the trained model, on the device
    batches: Batches  # the test split, on the device
    arrays: dict  # every array of the test split file


CONFUSION_HEADER = "actual,predicted\n"


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)  # file stem -> matplotlib figure
    confusion_csv: str | None = None  # (actual, predicted) rows; classification only
