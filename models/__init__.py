"""The PyTorch model library: one family per module, its config in `models.configs`.

`from models import build_model` loads the registry (and torch) on first use; importing
`models.configs` alone stays light, for `python -m pipeline check`.
"""

__all__ = ["DataSpec", "build_model", "list_models", "model_from_saved", "register_model"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    from models import registry

    return getattr(registry, name)
