"""What a training run returns (and writes to RUN/result.json): shared by the engine and its multi-process launcher,
which reads rank 0's result back from the run directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class RunStatus(StrEnum):
    """How a training run ended (``TrainResult.status``)."""

    SUCCEEDED = "succeeded"  # every step done, the artifact saved
    INTERRUPTED = "interrupted"  # stopped at a checkpoint (Ctrl-C, SIGTERM, a pause): resume continues it


@dataclass
class TrainResult:
    run_dir: str
    status: RunStatus
    global_step: int
    total_steps: int
    train_loss: float | None
    valid_loss: float | None
    valid_mean_token_accuracy: float | None
    trained_tokens: int
    tokens_per_second: float  # non-padding tokens per second of training
    train_runtime_s: float
    artifact: str | None
    last_checkpoint: str | None
    padding_fraction: float = 0.0  # share of the batches' token slots that were padding
    train_reward_mean: float | None = None  # train.objective grpo: the last step's mean reward
    valid_reward_mean: float | None = None  # and the last evaluation's
    best_step: int | None = None  # the best evaluation's step (train.early_stopping, train.keep: best)
    kept_step: int | None = None  # the step whose weights the artifact holds (the last one unless keep: best)
    stopped_early: bool = False  # train.early_stopping ended the run before its last step
    valid_scored: dict[str, float] = field(default_factory=dict)  # the kept evaluation's scored metrics (a scenario's)
    history: list[dict] = field(default_factory=list, repr=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("history")
        return json.dumps(d, indent=2)
