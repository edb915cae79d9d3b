"""The search space of `tune:` made Optuna's: samplers, pruners, and each trial's values of the
declared entries (categorical lists travel as JSON)."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from pipeline.config import ExperimentParams, flatten
from pipeline.params.tuning import PRIMITIVE, CategoricalSpace, FloatSpace, TuneParams
from pipeline.tuning import experimental


def make_sampler(tune: TuneParams, seed: int):
    samplers = optuna.samplers
    with experimental():
        if tune.sampler == "tpe":
            return samplers.TPESampler(seed=seed, constant_liar=tune.workers > 1)
        if tune.sampler == "random":
            return samplers.RandomSampler(seed=seed)
        if tune.sampler == "cmaes":
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if tune.sampler == "gp":
            return samplers.GPSampler(seed=seed)
        if tune.sampler == "nsgaii":
            return samplers.NSGAIISampler(seed=seed)
        return samplers.GridSampler(grid(tune), seed=seed)


def grid(tune: TuneParams) -> dict[str, list]:
    """Every value of every space entry, as GridSampler wants them."""
    out = {}
    for path, item in tune.space.items():
        if isinstance(item, CategoricalSpace):
            out[path] = [_encode(c) for c in item.choices]
        elif isinstance(item, FloatSpace):
            count = int(round((item.high - item.low) / item.step)) + 1
            out[path] = [item.low + i * item.step for i in range(count)]
        else:
            out[path] = list(range(item.low, item.high + 1, item.step))
    return out


def make_pruner(tune: TuneParams, epochs: int):
    pruners = optuna.pruners
    warmup = max(tune.warmup_epochs, 1)
    if tune.pruner == "median":
        return pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    if tune.pruner == "hyperband":
        return pruners.HyperbandPruner(min_resource=warmup, max_resource=epochs)
    if tune.pruner == "successive_halving":
        return pruners.SuccessiveHalvingPruner(min_resource=warmup)
    return pruners.NopPruner()


def _encode(choice):
    """Optuna's categorical choices must be primitives; lists and mappings travel as JSON."""
    return choice if isinstance(choice, PRIMITIVE) else json.dumps(choice)


def _matches(value, wanted) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def sample(trial, tune: TuneParams, base: dict) -> dict[str, Any]:
    """The trial's values of the space entries whose `when` holds, keyed by dotted path.

    `when` is checked against values sampled earlier in this trial, else the experiment's own.
    """
    resolved = flatten(base)
    values: dict[str, Any] = {}
    for path, item in tune.space.items():
        known = {**resolved, **values}
        if not all(_matches(known.get(k), v) for k, v in item.when.items()):
            continue
        if isinstance(item, CategoricalSpace):
            encoded = [_encode(c) for c in item.choices]
            picked = trial.suggest_categorical(path, encoded)
            values[path] = item.choices[encoded.index(picked)]
        elif isinstance(item, FloatSpace):
            values[path] = trial.suggest_float(
                path, item.low, item.high, log=item.log, step=item.step
            )
        else:
            step = 1 if item.log else item.step
            values[path] = trial.suggest_int(path, item.low, item.high, step=step, log=item.log)
    return values


def decoded_params(trial: FrozenTrial, tune: TuneParams) -> dict[str, Any]:
    """A finished trial's params with categorical JSON choices turned back into values."""
    out = {}
    for path, value in trial.params.items():
        item = tune.space.get(path)
        if isinstance(item, CategoricalSpace):
            encoded = [_encode(c) for c in item.choices]
            value = item.choices[encoded.index(value)] if value in encoded else value
        out[path] = value
    return out


def trial_epochs(exp: ExperimentParams) -> int:
    return exp.tune.epochs or exp.train.epochs
