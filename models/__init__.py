"""The PyTorch model library. Each family module registers itself; import them here, by name."""

from models import cnn, diffusion, gan, mlp, pretrained, rnn, vae  # noqa: F401  (registers)
from models.registry import DataSpec, build_model, list_models, model_from_saved, register_model

__all__ = ["DataSpec", "build_model", "list_models", "model_from_saved", "register_model"]
