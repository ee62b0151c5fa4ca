"""Training: the recipe (run.py) on transformers' Trainer (trainer.py)."""

from slmtune.training.run import TrainResult, train

__all__ = ["TrainResult", "train"]
