"""On-the-fly augmentation of training images, declared in params as torchvision
transforms.v2 by name with arguments, e.g.

    train:
      augment:
        - {name: random_rotation, args: {degrees: 10}}
        - {name: random_erasing, args: {p: 0.25}}

Transforms see pixels in [0, 1] (the stored data is mapped back with its train statistics and
forward again), so fills, jitter and noise mean what they say. Each image of a training batch
gets its own random draw. The engine gives each batch a seed drawn from its seeded,
checkpointed shuffle generator (`engine.Batches`), so runs repeat exactly, and a batch read
from disk is augmented where it is read (by a DataLoader worker, in parallel with training)
exactly as the in-memory path augments it. Validation and test data are never augmented.
"""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError

# params name -> torchvision.transforms.v2 class
TRANSFORMS = {
    "random_rotation": "RandomRotation",
    "random_affine": "RandomAffine",
    "random_crop": "RandomCrop",
    "random_horizontal_flip": "RandomHorizontalFlip",
    "random_vertical_flip": "RandomVerticalFlip",
    "color_jitter": "ColorJitter",
    "random_erasing": "RandomErasing",
    "gaussian_noise": "GaussianNoise",
}


def build(steps, normalization: dict | None, where: str = "train.augment"):
    """A function batch -> augmented batch, or None when no steps are declared.

    `normalization` is schema.json's per-channel mean/std of the stored images."""
    if not steps:
        return None
    import torchvision.transforms.v2 as v2

    transforms = []
    for i, step in enumerate(steps):
        try:
            transforms.append(getattr(v2, TRANSFORMS[step.name])(**step.args))
        except (TypeError, ValueError) as err:
            raise PipelineError(
                f"{where}[{i}] ({step.name}): bad args {step.args}: {err}"
            ) from None
    if normalization is None:
        raise PipelineError(f"{where}: augmentation needs image data")
    return Augment(v2.Compose(transforms), ImageScale(normalization))


class Augment:
    """batch -> augmented batch, a draw per image from torch's RNG (on the batch's device).
    A class, not a closure: DataLoader workers started by spawn receive it pickled."""

    def __init__(self, compose, scale: ImageScale):
        self.compose, self.scale = compose, scale

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        unit = self.scale.to_unit(batch)
        return self.scale.from_unit(torch.stack([self.compose(image) for image in unit]))


def seeded(transform, batch: torch.Tensor, seed: int | None) -> torch.Tensor:
    """`transform(batch)` with the CPU RNG (where transforms draw their parameters) set to
    `seed` for the call and restored after: the batch's draws depend on its seed alone, not
    on what ran before it or in which process. No transform or seed: the batch as is."""
    if transform is None:
        return batch
    if seed is None:
        return transform(batch)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(batch)


class ImageScale:
    """Between standardised pixels (what preprocess saved) and [0, 1] intensities."""

    def __init__(self, normalization: dict):
        """`normalization`: schema.json's per-channel mean and std of the stored images."""
        self.mean = torch.tensor(normalization["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(normalization["std"]).view(1, -1, 1, 1)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0, 1)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return (u - self.mean.to(u.device)) / self.std.to(u.device)
