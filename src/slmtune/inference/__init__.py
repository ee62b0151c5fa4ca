"""Inference: chat with base models, runs, adapters and checkpoints (PyTorch)."""

from slmtune.inference.generate import ChatModel, load, locate

__all__ = ["ChatModel", "load", "locate"]
