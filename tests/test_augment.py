"""Augmentation: torchvision v2 transforms from params, per-image draws, seeded, train only."""

import pytest
import torch

from pipeline import augment, engine
from pipeline.errors import PipelineError
from pipeline.params.training import TrainParams

NORM = {"mean": [0.3], "std": [0.4]}


def steps(*specs):
    return TrainParams.model_validate({"augment": list(specs)}).augment


def test_transforms_draw_per_image_and_repeat_with_the_seed():
    fn = augment.build(
        steps(
            {"name": "random_rotation", "args": {"degrees": 40}},
            {"name": "random_erasing", "args": {"p": 0.5}},
        ),
        NORM,
    )
    batch = torch.rand(6, 1, 8, 8)
    torch.manual_seed(0)
    first = fn(batch)
    torch.manual_seed(0)
    again = fn(batch)
    assert first.shape == batch.shape and torch.equal(first, again)
    assert not torch.equal(first, batch)
    # identical inputs, different outputs: each image has its own draw
    same = fn(batch[:1].expand(6, -1, -1, -1).clone())
    assert len({tuple(img.flatten().tolist()) for img in same}) > 1


def test_no_steps_means_no_transform_and_bad_args_are_named():
    assert augment.build((), NORM) is None
    with pytest.raises(PipelineError, match=r"train.augment\[0\] \(random_crop\): bad args"):
        augment.build(steps({"name": "random_crop", "args": {"sise": 4}}), NORM)
    with pytest.raises(Exception, match="random_twirl"):
        steps({"name": "random_twirl"})


def test_only_training_batches_are_augmented():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    flip = augment.build(steps({"name": "random_horizontal_flip", "args": {"p": 1.0}}), NORM)
    train = engine.Batches(x, y, 8, device="cpu", shuffle=False, transform=flip)
    val = engine.Batches(x, y, 8, device="cpu", shuffle=False)
    (xb, _), (xv, _) = next(iter(train)), next(iter(val))
    unit = (x * 0.4 + 0.3).clamp(0, 1)
    torch.testing.assert_close(xb, (unit.flip(-1) - 0.3) / 0.4)
    assert torch.equal(xv, x)
