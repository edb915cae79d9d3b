"""Small building blocks shared by the model families."""

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}"
        ) from None


class BinaryLogit(nn.Module):
    """A two-class head of one logit z (a sigmoid trained with binary cross-entropy), given to
    the rest of the pipeline as the two logits (0, z): their softmax is (1 - sigmoid(z),
    sigmoid(z)) and their cross-entropy is z's binary cross-entropy, so training, argmax,
    attacks and the served probabilities read it as any classifier's output."""

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.linear(x), (1, 0))  # (B, 1) -> (B, 2): (0, z)


def head(in_features: int, outputs: int, binary: bool = False) -> nn.Module:
    """The last layer of a predictive model: one output per class or horizon step, or one
    logit for two classes (`DataSpec.binary`)."""
    return BinaryLogit(in_features) if binary else nn.Linear(in_features, outputs)


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise Linear and Conv weights (biases to zero); `default` keeps PyTorch's.

    Recurrent models set orthogonal recurrent weights themselves.
    """
    if scheme == "default":
        return
    schemes = {
        "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier": nn.init.xavier_uniform_,
        "orthogonal": nn.init.orthogonal_,
    }
    if scheme not in schemes:
        raise ValueError(f"unknown init {scheme!r}; choose default or {', '.join(schemes)}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            schemes[scheme](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
