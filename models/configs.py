"""Every model family's hyperparameters, declared once and free of torch.

Each family is a frozen dataclass with its defaults and a `tiny()` preset (for tests and smoke
runs). The constraints in the type hints (`Ge`, `Interval`, `Literal`) and the `doc` of each
field are read by `pipeline.params.models` to build the params.yaml schema, so `check` validates a
model section without importing torch, and `docs/params.md` describes it. A family module
(`models/<name>.py`) builds the network from its config and registers it under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Interval

Width = Annotated[int, Ge(1)]
Fraction = Annotated[float, Interval(ge=0, lt=1)]
Activation = Literal["relu", "leaky_relu", "gelu", "tanh", "sigmoid"]


def doc(default, text: str):
    """A field's default (tuples, not lists: they are immutable) with its line in the docs."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class MLPConfig:
    hidden_sizes: tuple[Width, ...] = doc((256, 128), "widths of the hidden layers")
    activation: Activation = doc("relu", "nonlinearity after each hidden layer")
    dropout: Fraction = doc(0.1, "dropout after each hidden layer")
    batch_norm: bool = doc(True, "BatchNorm before each activation")

    @classmethod
    def tiny(cls) -> MLPConfig:
        return cls(hidden_sizes=(16,))


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[Width, ...] = doc((32, 64), "output channels of each conv block")
    kernel_size: Width = doc(3, "convolution kernel size")
    hidden_size: Width = doc(128, "width of the dense layer before the head")
    activation: Activation = doc("relu", "nonlinearity after each block")
    dropout: Fraction = doc(0.1, "dropout before the head")
    batch_norm: bool = doc(True, "BatchNorm in each conv block")
    residual: bool = doc(False, "residual connections inside blocks")

    @classmethod
    def tiny(cls) -> CNNConfig:
        return cls(channels=(4,), hidden_size=8)


@dataclass(frozen=True)
class RNNConfig:
    cell: Literal["lstm", "gru"] = doc("lstm", "recurrent cell")
    hidden_size: Width = doc(64, "hidden state width")
    num_layers: Width = doc(1, "stacked recurrent layers")
    bidirectional: bool = doc(False, "read sequences both ways")
    dropout: Fraction = doc(0.0, "dropout between stacked layers")
    embedding_dim: Width = doc(32, "token inputs only: embedding width")

    @classmethod
    def tiny(cls) -> RNNConfig:
        return cls(hidden_size=8)


@dataclass(frozen=True)
class TransformerConfig:
    d_model: Width = doc(64, "width of every token's vector")
    heads: Width = doc(4, "attention heads (divide d_model)")
    layers: Width = doc(2, "pre-norm Transformer blocks")
    ff_mult: Width = doc(4, "feed-forward width, as a multiple of d_model")
    dropout: Fraction = doc(0.1, "dropout on attention weights and block outputs")
    positions: Literal["learned", "sinusoidal"] = doc("learned", "position encoding")
    patch_size: Annotated[int, Ge(0)] = doc(
        0, "images only: square patches of this size as tokens; 0 reads one row per token"
    )

    @classmethod
    def tiny(cls) -> TransformerConfig:
        return cls(d_model=8, heads=2, layers=1, ff_mult=2)


@dataclass(frozen=True)
class Seq2SeqConfig:
    architecture: Literal["gru", "lstm", "transformer"] = doc(
        "gru", "encoder and decoder: recurrent (with attention) or Transformer"
    )
    attention: Literal["additive", "dot"] = doc(
        "additive",
        "recurrent only: how a decoder state scores the encoder states (Bahdanau's "
        "additive or Luong's scaled dot product)",
    )
    hidden_size: Width = doc(128, "width of encoder and decoder states (d_model)")
    embedding_dim: Width = doc(64, "recurrent only: token embedding width")
    layers: Width = doc(1, "stacked layers in the encoder and in the decoder")
    heads: Width = doc(4, "transformer only: attention heads (divide hidden_size)")
    dropout: Fraction = doc(0.1, "dropout on embeddings and decoder outputs")

    @classmethod
    def tiny(cls) -> Seq2SeqConfig:
        return cls(hidden_size=8, embedding_dim=8, heads=2)


@dataclass(frozen=True)
class VAEConfig:
    variant: Literal["conv", "mlp"] = doc("conv", "encoder/decoder architecture")
    latent_dim: Width = doc(16, "latent dimensions")
    channels: tuple[Width, ...] = doc((32, 64), "conv variant: encoder channels")
    hidden_size: Width = doc(256, "mlp variant: hidden width")
    activation: Activation = doc("relu", "nonlinearity")
    beta: Annotated[float, Ge(0)] = doc(1.0, "weight of the KL term (1: the ELBO)")
    conditional: bool = doc(False, "encoder and decoder see the class: samples of a chosen class")

    @classmethod
    def tiny(cls) -> VAEConfig:
        return cls(latent_dim=2, channels=(4, 4), hidden_size=8)


@dataclass(frozen=True)
class GANConfig:
    variant: Literal["conv", "mlp"] = doc("conv", "generator/discriminator architecture")
    latent_dim: Width = doc(32, "noise dimensions")
    channels: Width = doc(64, "conv variant: base width")
    hidden_size: Width = doc(256, "mlp variant: hidden width")
    conditional: bool = doc(True, "condition both networks on the class")

    @classmethod
    def tiny(cls) -> GANConfig:
        return cls(latent_dim=4, channels=4, hidden_size=8)


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: Annotated[int, Ge(2)] = doc(200, "noise steps")
    channels: tuple[Width, ...] = doc((32, 64), "U-Net widths at full and half resolution")
    time_dim: Annotated[int, Ge(2)] = doc(64, "timestep embedding width")
    schedule: Literal["cosine", "linear"] = doc("cosine", "noise schedule")
    beta_start: Annotated[float, Interval(gt=0, lt=1)] = doc(1e-4, "linear schedule: first beta")
    beta_end: Annotated[float, Interval(gt=0, lt=1)] = doc(0.02, "linear schedule: last beta")

    @classmethod
    def tiny(cls) -> DiffusionConfig:
        return cls(timesteps=10, channels=(8, 8), time_dim=8)


@dataclass(frozen=True)
class PretrainedConfig:
    backbone: Literal["resnet18", "mobilenet_v3_small", "vgg16"] = doc(
        "mobilenet_v3_small", "torchvision backbone"
    )
    weights: str | None = doc(None, "state_dict file, 'imagenet' (torch's cache) or null")
    freeze_backbone: bool = doc(False, "train only the new head")
    input_size: Annotated[int, Ge(16)] = doc(32, "images are resized to this square size")

    @classmethod
    def tiny(cls) -> PretrainedConfig:
        return cls(backbone="mobilenet_v3_small", input_size=32)


# family name -> config; a family module `models/<name>.py` registers a builder for each
CONFIGS: dict[str, type] = {
    "mlp": MLPConfig,
    "cnn": CNNConfig,
    "rnn": RNNConfig,
    "transformer": TransformerConfig,
    "seq2seq": Seq2SeqConfig,
    "vae": VAEConfig,
    "gan": GANConfig,
    "diffusion": DiffusionConfig,
    "pretrained": PretrainedConfig,
}
