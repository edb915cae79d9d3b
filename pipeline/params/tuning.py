"""The `tune` section: an Optuna search over dotted params of the experiment."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from pipeline.params.base import Strict, Url
from pipeline.tasks.kinds import higher_is_better

Direction = Literal["minimize", "maximize"]
# objectives that are not validation metrics: the model's size and its inference time
EXTRA_OBJECTIVES = ("parameters", "latency_ms")
PRIMITIVE = (str, int, float, bool, type(None))


class _SpaceItem(Strict):
    when: dict[str, Any] = Field(
        {}, description="sample only when these dotted params have these values (or lists)"
    )


class _RangeSpace(_SpaceItem):
    @model_validator(mode="after")
    def _range(self):
        _check_range(self)
        return self


class FloatSpace(_RangeSpace):
    type: Literal["float"]
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value")
    log: bool = Field(False, description="sample on a log scale")
    step: float | None = Field(None, gt=0, description="spacing of values; null: continuous")


class IntSpace(_RangeSpace):
    type: Literal["int"]
    low: int = Field(description="lowest value")
    high: int = Field(description="highest value")
    log: bool = Field(False, description="sample on a log scale")
    step: int = Field(1, ge=1, description="spacing of values")


class CategoricalSpace(_SpaceItem):
    type: Literal["categorical"]
    choices: tuple[Any, ...] = Field(min_length=1, description="values to choose from")


def _check_range(item) -> None:
    if not item.low < item.high:
        raise ValueError(f"empty range: low ({item.low}) must be below high ({item.high})")
    if item.log and item.low <= 0:
        raise ValueError(f"log: true needs low > 0, got {item.low}")
    if item.log and item.step not in (None, 1):
        raise ValueError("step does not combine with log: true")


SpaceItem = Annotated[
    Union[FloatSpace, IntSpace, CategoricalSpace],  # noqa: UP007
    Field(discriminator="type"),
]


class TuneParams(Strict):
    """An Optuna search over dotted params (model.*, train.*, seed) of one experiment."""

    enabled: bool = Field(False, description="run an Optuna search in tune@<experiment>")
    use_tuned: bool = Field(True, description="train merges the best trial's params")
    space: dict[str, SpaceItem] = Field(
        {}, description="dotted param path -> search range (float, int or categorical)"
    )
    metric: str | tuple[str, ...] = Field(
        "val/loss", description="a val/... metric, or several for multi-objective"
    )
    direction: Direction | tuple[Direction, ...] | None = Field(
        None, description="per metric; null: maximize accuracy-like metrics, else minimize"
    )
    n_trials: int = Field(20, ge=1, description="finished trials in total, across resumes")
    timeout: float | None = Field(
        None, gt=0, description="seconds; stop starting new trials (at least one runs)"
    )
    seed: int = Field(0, description="seed of the sampler")
    sampler: Literal["tpe", "random", "cmaes", "gp", "grid", "nsgaii"] = Field(
        "tpe", description="Optuna sampler"
    )
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field(
        "median", description="stops unpromising trials early"
    )
    startup_trials: int = Field(5, ge=0, description="median pruner: trials before pruning")
    warmup_epochs: int = Field(3, ge=0, description="epochs before a trial can be pruned")
    epochs: int | None = Field(None, ge=1, description="epochs per trial; null: train.epochs")
    pareto_choice: Literal["knee", "first"] = Field(
        "knee", description="multi-objective: the Pareto trial nearest the ideal, or best first"
    )
    workers: int = Field(1, ge=1, description="local worker processes")
    storage: Url | None = Field(
        None, description="null: the journal artifacts/<exp>/tuning/study.journal; or an RDB URL"
    )
    heartbeat_seconds: int = Field(10, ge=1, description="a trial silent for 2x this is failed")

    @model_validator(mode="after")
    def _objectives_fit(self):
        metrics = self.metrics()
        for metric in metrics:
            if not (metric.startswith("val/") or metric in EXTRA_OBJECTIVES):
                raise ValueError(
                    f"metric {metric!r}: use a val/... metric or one of "
                    f"{', '.join(EXTRA_OBJECTIVES)}"
                )
        if len(metrics) == 1 and not metrics[0].startswith("val/"):
            raise ValueError("a single objective must be a val/... metric")
        if isinstance(self.direction, tuple) and len(self.direction) != len(metrics):
            raise ValueError(
                f"direction has {len(self.direction)} entries for {len(metrics)} metrics"
            )
        if len(metrics) > 1 and self.pruner != "none":
            raise ValueError("pruning needs a single objective; set pruner: none")
        if self.sampler == "grid":
            for path, item in self.space.items():
                if isinstance(item, FloatSpace) and item.step is None:
                    raise ValueError(
                        f"sampler grid: space {path!r} needs a step (or categorical choices)"
                    )
        return self

    def metrics(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else self.metric

    def directions(self) -> tuple[str, ...]:
        """One direction per metric (the declared ones, or inferred from the metric's name)."""
        if self.direction is None:
            return tuple(_default_direction(m) for m in self.metrics())
        if isinstance(self.direction, str):
            return (self.direction,) * len(self.metrics())
        return self.direction


def _default_direction(metric: str) -> str:
    return "maximize" if higher_is_better(metric) else "minimize"
