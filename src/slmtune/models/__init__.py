"""Base models: registry ids → local folders (fetch, convert, build), and loading for training/inference."""

from slmtune.models import gguf, tiny  # noqa: F401 - the model sources register themselves with the registry
from slmtune.models.registry import REGISTRY, ModelNotAvailable, fetch_model, list_models, resolve

__all__ = ["REGISTRY", "ModelNotAvailable", "fetch_model", "list_models", "resolve"]
