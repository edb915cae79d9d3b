"""Small building blocks shared by the model families."""

from torch import nn

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
