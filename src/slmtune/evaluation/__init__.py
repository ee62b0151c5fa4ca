"""Evaluation: loss and token accuracy with the training mask."""

from slmtune.evaluation.loss import evaluate_encoded, evaluate_file

__all__ = ["evaluate_encoded", "evaluate_file"]
