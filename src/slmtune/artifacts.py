"""The run directory layout, shared by training (writes it) and inference/evaluation (read it).

    RUN/config.yaml            the fully resolved TrainConfig
    RUN/adapter/               plain PEFT adapter + tokenizer (adapter methods), or
    RUN/model/                 plain transformers model + tokenizer (full fine-tuning)
    RUN/checkpoints/step-N/    adapter/model weights + optimizer, scheduler, RNG and trainer state
    RUN/metrics.csv            OpenAI result-file columns
    RUN/events.jsonl           every event
    RUN/result.json            summary of the finished (or interrupted) run
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_PREFIX = "step-"
RESULT_FILE = "result.json"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of a run's complete checkpoints, oldest first."""
    out = []
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").exists():
                try:
                    out.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
                except ValueError:
                    continue
    return sorted(out)
