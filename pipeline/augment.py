"""On-the-fly augmentation of training images, declared in params as torchvision
transforms.v2 by name with arguments, e.g.

    train:
      augment:
        - {name: random_rotation, args: {degrees: 10}}
        - {name: random_erasing, args: {p: 0.25}}

Transforms see pixels in [0, 1] (the stored data is mapped back with its train statistics and
forward again), so fills, jitter and noise mean what they say. Each image of a training batch
gets its own random draw from torch's RNG, which the engine seeds and checkpoints, so runs
repeat exactly. Validation and test data are never augmented.
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
    compose = v2.Compose(transforms)
    if normalization is None:
        raise PipelineError(f"{where}: augmentation needs image data")
    scale = ImageScale(normalization)

    def augment(batch: torch.Tensor) -> torch.Tensor:
        unit = scale.to_unit(batch)
        return scale.from_unit(torch.stack([compose(image) for image in unit]))  # a draw each

    return augment


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
