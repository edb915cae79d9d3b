"""The `train`, `evaluate` and `tracking` sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.params.base import Strict, Url, unsafe_name


class OptimizerParams(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("adamw", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    nesterov: bool = Field(False, description="sgd only")
    beta1: float = Field(0.9, ge=0, lt=1, description="adam/adamw first-moment decay (GANs: 0.5)")


class SchedulerParams(Strict):
    name: Literal["none", "cosine", "step", "plateau", "onecycle"] = Field(
        "cosine", description="learning-rate schedule"
    )
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step/plateau: decay factor")
    patience: int = Field(5, ge=0, description="plateau: epochs without improvement")
    warmup_epochs: int = Field(0, ge=0, description="linear warmup before cosine/step")

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs and self.name in ("plateau", "onecycle"):
            raise ValueError(f"warmup_epochs does not combine with {self.name!r}")
        return self


class EarlyStoppingParams(Strict):
    metric: str = Field("val/loss", pattern=r"^val/", description="a val/... metric of the task")
    patience: int = Field(10, ge=0, description="epochs without improvement; 0 disables")
    restore_best: bool = Field(True, description="end with the weights of the best epoch")


class AdversarialParams(Strict):
    """GAN training: discriminator steps per generator step, smoothing, collapse detection."""

    d_steps: int = Field(1, ge=1, description="discriminator steps per generator step")
    d_lr: float | None = Field(None, gt=0, description="discriminator lr; null: optimizer.lr")
    real_label: float = Field(0.9, gt=0.5, le=1, description="one-sided label smoothing")
    collapse_steps: int = Field(300, ge=1, description="steps of near-zero D loss = collapse")
    collapse_loss: float = Field(0.01, gt=0, description="D loss below this counts as near zero")
    min_diversity: float = Field(0.1, ge=0, description="sample spread / real spread floor")


class AugmentStep(Strict):
    """One torchvision.transforms.v2 transform by name, with its keyword arguments."""

    name: Literal[
        "random_rotation",
        "random_affine",
        "random_crop",
        "random_horizontal_flip",
        "random_vertical_flip",
        "color_jitter",
        "random_erasing",
        "gaussian_noise",
    ]
    args: dict[str, Any] = Field({}, description="keyword arguments of the torchvision transform")


class AdversarialTraining(Strict):
    """PGD examples mixed into an image classifier's training batches (Madry et al.)."""

    epsilon: float = Field(
        0.0, ge=0, le=1, description="L-infinity budget on [0, 1] pixels; 0: off"
    )
    steps: int = Field(5, ge=1, description="PGD steps per example")
    fraction: float = Field(
        0.5, gt=0, le=1, description="share of each batch replaced by its adversarial examples"
    )


class TrainParams(Strict):
    epochs: int = Field(30, ge=1, description="passes over the train split")
    batch_size: int = Field(64, ge=1, description="samples per step")
    optimizer: OptimizerParams = OptimizerParams()
    scheduler: SchedulerParams = SchedulerParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null disables")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification only")
    binary_head: bool = Field(
        False,
        description="two-class classification: one logit with a sigmoid, trained by binary "
        "cross-entropy (instead of two softmax logits)",
    )
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights inverse to class counts"
    )
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle", description="weighted: draw classes equally often (imbalanced data)"
    )
    init: Literal["default", "kaiming", "xavier", "orthogonal"] = Field(
        "default",
        description="weight initialisation of Linear/Conv layers (recurrent weights: orthogonal)",
    )
    adversarial: AdversarialParams = AdversarialParams()
    adversarial_training: AdversarialTraining = AdversarialTraining()
    exclude_classes: tuple[int | str, ...] = Field(
        (),
        description="vae only: classes left out of the train and val splits; evaluate scores "
        "every test image by its negative ELBO and reports how well that separates these "
        "unseen classes from the rest (test/anomaly_auroc, ROC curve)",
    )
    augment: tuple[AugmentStep, ...] = Field((), description="image transforms, training only")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward passes and losses under autocast (supervised models; GPUs "
        "with bf16 tensor cores gain most); weights and optimizer state stay fp32",
    )
    channels_last: bool = Field(
        False, description="image models: NHWC memory layout, faster convolutions on GPUs"
    )
    compile: bool = Field(
        False, description="torch.compile the model's forward (a one-off compile of seconds)"
    )
    checkpoint_interval: float = Field(
        10.0,
        ge=0,
        description="seconds between resumable checkpoints (0: after every epoch); the last "
        "epoch is always saved. Saving costs milliseconds, a tiny model's epoch about as much",
    )
    deterministic: bool = Field(
        False,
        description="torch.use_deterministic_algorithms: bit-identical reruns on one machine "
        "(some CUDA ops are slower or refused; checked before the first epoch)",
    )
    distributed: Literal["none", "ddp"] = Field(
        "none",
        description="ddp: DistributedDataParallel over nproc_per_node processes started by "
        "torchrun (gloo on CPU, nccl on CUDA); batch_size stays the global batch",
    )
    nproc_per_node: int = Field(
        2, ge=1, description="processes with distributed: ddp (on CUDA: one per GPU)"
    )


class Corruption(Strict):
    """A test-time corruption of images: gaussian noise (severity = std on [0, 1] pixels) or
    a rotation (severity = degrees)."""

    name: Literal["gaussian_noise", "rotation"]
    severity: float = Field(
        gt=0, description="noise std in [0, 1] pixel units, or rotation degrees"
    )


class Attack(Strict):
    """An adversarial attack on an image classifier's test inputs: each pixel moved by at
    most `epsilon` on the [0, 1] scale, in the direction that raises the loss."""

    name: Literal["fgsm", "pgd"] = Field(
        description="fgsm: one signed-gradient step of epsilon; pgd: `steps` steps of 2.5 * "
        "epsilon / steps from a random start, projected back within epsilon after each"
    )
    epsilon: float = Field(gt=0, le=1, description="L-infinity budget on [0, 1] pixels")
    steps: int = Field(10, ge=1, description="pgd only: gradient steps")


class EvaluateParams(Strict):
    batch_size: int = Field(512, ge=1, description="samples per evaluation batch")
    corruptions: tuple[Corruption, ...] = Field(
        (), description="image classifiers: test accuracy under each, as test/robust/..."
    )
    attacks: tuple[Attack, ...] = Field(
        (),
        description="image classifiers: test accuracy (bootstrap 95% interval) under each "
        "attack, as test/attack/<name>_<epsilon>/accuracy, and a figure of accuracy against "
        "epsilon",
    )
    beam_size: int = Field(
        4, ge=1, description="sequence-to-sequence models: hypotheses kept by beam search"
    )


class DataParams(Strict):
    """Where a split is read from while training and evaluating."""

    in_memory_max_mb: int | None = Field(
        None,
        ge=0,
        description="train and val inputs up to this many MB are held in memory (on the GPU "
        "when training there), the fastest path; larger ones are read from disk in batches by "
        "DataLoader workers (same batches, same results). null: a quarter of the memory "
        "available when the stage starts (on CUDA, also of the free GPU memory)",
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader processes reading batches of a split kept on disk (0: the "
        "training process reads them). null: none up to 3 cores (a reader takes a core from "
        "training; measured on 2 cores), then one per 2 cores beyond 2, at most 4",
    )

    def workers(self) -> int:
        """`loader_workers`, or the default for this process's share of the cores."""
        from pipeline import cores

        if self.loader_workers is not None:
            return self.loader_workers
        return max(0, min(4, (cores.own_threads() - 2) // 2))


class TrackingParams(Strict):
    enabled: bool = Field(
        True, description="false: no MLflow at all (no runs, no registry, no champion decision)"
    )
    uri: Url = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking store: sqlite:///file, postgresql://, http(s)://, or a folder",
    )
    artifact_location: Url = Field(
        "mlartifacts", description="where new MLflow experiments store artifacts (folder or s3://)"
    )
    experiment_name: str = Field("dl-pipeline", description="MLflow experiment of every run")

    @field_validator("experiment_name")
    @classmethod
    def _safe(cls, name: str) -> str:
        problem = unsafe_name(name)
        if problem:
            raise ValueError(problem)
        return name

    system_metrics: bool | None = Field(
        None,
        description="log CPU/GPU/memory use of each run; null: of train and tune runs, the "
        "long ones (MLflow samples them every 10 s in the tracking process)",
    )
    log_model: bool = Field(True, description="log and register the trained model")
