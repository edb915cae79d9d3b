"""Transfer learning: a torchvision backbone (resnet18, mobilenet_v3_small, vgg16) with a new
head.

Weights never download at run time. `weights` is a path to a saved state_dict, or "imagenet"
to use torchvision's file when it is already in torch's cache ($TORCH_HOME/hub/checkpoints);
otherwise a clear error says where to put it. `weights: null` trains from scratch.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from models.configs import PretrainedConfig
from models.layers import head
from models.registry import DataSpec, register_model

BACKBONES = {  # name -> (torchvision builder, weights enum)
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "mobilenet_v3_small": ("mobilenet_v3_small", "MobileNet_V3_Small_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"),  # 138 M parameters, 124 M of them in its head
}


def imagenet_file(backbone: str) -> str:
    """Where torch's cache keeps torchvision's ImageNet weights for `backbone`."""
    import torchvision.models as tvm

    enum = getattr(tvm, BACKBONES[backbone][1]).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))


def load_weights(backbone: nn.Module, config: PretrainedConfig) -> None:
    path = imagenet_file(config.backbone) if config.weights == "imagenet" else config.weights
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights for {config.backbone} not found at {path}; nothing is downloaded "
            "at run time: copy the file there (e.g. fetched once with torchvision on a machine "
            "with network) or set model.weights to a saved state_dict, or null to train from "
            "scratch"
        )
    backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class Pretrained(nn.Module):
    def __init__(self, config: PretrainedConfig, spec: DataSpec):
        super().__init__()
        import torchvision.models as tvm

        if config.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {config.backbone!r}; choose from {', '.join(BACKBONES)}"
            )
        if len(spec.input_shape) != 3:
            raise ValueError(f"pretrained backbones need (C, H, W) images, got {spec.input_shape}")
        self.config = config
        self.backbone = getattr(tvm, BACKBONES[config.backbone][0])(weights=None)
        if config.weights is not None:
            load_weights(self.backbone, config)
        if config.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        # a new head for our classes (trainable even when the backbone is frozen)
        if config.backbone == "resnet18":
            self.backbone.fc = head(self.backbone.fc.in_features, spec.num_classes, spec.binary)
        else:
            last = self.backbone.classifier[-1]
            self.backbone.classifier[-1] = head(last.in_features, spec.num_classes, spec.binary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> the 3 channels the backbone expects
        size = self.config.input_size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.backbone(x)  # (B, 3, S, S) -> (B, num_classes)


@register_model("pretrained", PretrainedConfig)
def build_pretrained(*, config: PretrainedConfig, spec: DataSpec) -> Pretrained:
    return Pretrained(config, spec)
