"""The task kinds: what each kind of model learns, reports and is judged by, in one table.

Torch-free, so `check`, the report and the flows read it without loading the model code. The
training step of each kind is in `pipeline/tasks/` (`make_task`), its test evaluation in
`pipeline/evaluation/` (`evaluate`); tests/test_tasks.py checks that every kind has both.
"""

from __future__ import annotations

from dataclasses import dataclass

# the last part of a metric name whose higher values are better (the rest: lower is better)
HIGHER_IS_BETTER = ("accuracy", "f1", "r2", "diversity", "elbo", "exact_match", "bleu", "chrf")


def higher_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER


@dataclass(frozen=True)
class TaskKind:
    name: str
    families: tuple[str, ...]  # the model families that learn it
    val_metrics: tuple[str, ...]  # reported every epoch: early stopping and tuning watch one
    main_metric: str  # the headline test metric (report, registry champion)
    baseline_ratio: str  # main metric / the classical baseline's, computed by evaluate
    served: bool = False  # registered as an MLflow pyfunc over raw inputs
    generative: bool = False  # models the images of a labelled dataset, judged by its judge
    baseline: str = ""  # what baseline_ratio divides by, in words (the report names it)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.main_metric)


_KINDS = (  # in the order the report lists them
    TaskKind(
        "classification",
        ("mlp", "cnn", "rnn", "transformer", "pretrained"),
        ("val/loss", "val/accuracy"),
        "test/accuracy",
        "test/accuracy_ratio_baseline",  # logistic regression
        baseline="logistic regression",
        served=True,
    ),
    TaskKind(
        "forecasting",
        ("mlp", "rnn", "transformer"),
        ("val/loss", "val/rmse"),
        "test/rmse",
        "test/rmse_ratio_persistence",
        baseline="persistence (last value)",
        served=True,
    ),
    TaskKind(
        "regression",
        ("mlp",),
        ("val/loss", "val/rmse"),
        "test/rmse",
        "test/rmse_ratio_baseline",  # the better of ridge and the train mean
        baseline="ridge or the train mean, the better",
        served=True,
    ),
    TaskKind(
        "language_model",
        ("rnn", "transformer"),
        ("val/loss", "val/perplexity"),
        "test/perplexity",
        "test/perplexity_ratio_unigram",
        baseline="unigram frequencies",
    ),
    TaskKind(
        "seq2seq",
        ("seq2seq",),
        ("val/loss", "val/exact_match"),
        "test/exact_match",  # greedy decoding
        "test/bleu_ratio_nearest",  # the target of the most similar train source
        baseline="nearest train source (BLEU)",
        served=True,
    ),
    TaskKind(
        "vae",
        ("vae",),
        ("val/loss", "val/recon", "val/kl"),
        "test/elbo",
        "test/frechet_distance_ratio_untrained",
        baseline="the untrained model",
        generative=True,
    ),
    TaskKind(
        "gan",
        ("gan",),
        ("val/loss", "val/d_loss", "val/diversity"),
        "test/frechet_distance",
        "test/frechet_distance_ratio_untrained",
        baseline="the untrained model",
        generative=True,
    ),
    TaskKind(
        "diffusion",
        ("diffusion",),
        ("val/loss",),
        "test/frechet_distance",
        "test/frechet_distance_ratio_untrained",
        baseline="the untrained model",
        generative=True,
    ),
)
KINDS = {kind.name: kind for kind in _KINDS}
GENERATIVE = tuple(name for name, kind in KINDS.items() if kind.generative)
# token-id text needs an embedding: only these families read it
TOKEN_FAMILIES = ("rnn", "transformer")


def task_kind(model_name: str, data_task: str) -> str:
    """Generative families have their own objective; predictive ones learn the dataset's task."""
    return model_name if model_name in GENERATIVE else data_task


def families_for(data_task: str) -> tuple[str, ...]:
    """The model families that can learn a dataset whose task is `data_task`."""
    if data_task == "text_classification":
        return TOKEN_FAMILIES
    families = KINDS[data_task].families
    # generative models learn labelled images: their judge is a classifier of them
    return families + GENERATIVE if data_task == "classification" else families
