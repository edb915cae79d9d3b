"""Image classifiers under corruption, and what a CNN's first layer sees."""

from __future__ import annotations

import torch

from pipeline import plots
from pipeline.engine import Batches, predict


@torch.no_grad()
def cnn_insight(model, sample: torch.Tensor, title: str) -> dict:
    """First-layer filters and the first block's feature maps of one test image."""
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    filters = first_conv.weight.detach()[:, :1].cpu()  # (C_out, 1, k, k): first input channel
    maps = model.features[0](sample[:1])[0][:, None].cpu()  # (C_out, 1, h, w)
    return {
        "filters": plots.image_grid(
            unit_range(filters).numpy(), f"{title}: first-layer filters", ncols=8
        ),
        "feature_maps": plots.image_grid(
            unit_range(maps).numpy(), f"{title}: block-1 feature maps of a test image", ncols=8
        ),
    }


def unit_range(t: torch.Tensor) -> torch.Tensor:
    """Scale each image to [0, 1] for display."""
    lo = t.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = t.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (t - lo) / (hi - lo).clamp_min(1e-8)


@torch.no_grad()
def robustness(model, batches: Batches, schema: dict, corruptions) -> dict[str, float]:
    """Test accuracy of an image classifier under each declared corruption (seeded), and its
    ratio to the clean accuracy. Batch by batch: the test split may be read from disk."""
    if len(batches.input_shape) != 3 or not corruptions:
        return {}  # before the imports: torchvision costs seconds to import
    from torchvision.transforms.v2 import functional as TF

    from pipeline.augment import ImageScale

    scale = ImageScale(schema["normalization"])
    clean = (predict(model, batches).argmax(1) == batches.y).float().mean().item()
    g = torch.Generator(device=batches.device).manual_seed(0)
    out = {}
    for c in corruptions:
        correct = torch.zeros((), device=batches.device)
        for xb, yb in batches:
            unit = scale.to_unit(xb)
            if c.name == "gaussian_noise":
                noise = torch.randn(unit.shape, generator=g, device=unit.device)
                unit = (unit + c.severity * noise).clamp(0, 1)
            else:
                unit = TF.rotate(unit, c.severity)
            correct += (model(scale.from_unit(unit)).argmax(1) == yb).sum()
        acc = correct.item() / len(batches.y)
        key = f"test/robust/{c.name}_{c.severity:g}"
        out[f"{key}/accuracy"] = acc
        out[f"{key}/accuracy_ratio_clean"] = acc / max(clean, 1e-12)
    return out
