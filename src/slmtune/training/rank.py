"""One rank of a multi-process run: what torchrun starts (``python -m slmtune.training.rank RUN/launch.yaml``).

Each rank runs the engine's ``train()`` on the launcher's resolved config; rank 0 writes the run directory. An
error is written to ``RUN/errors/rank-N.txt`` for the launcher to report. Kept apart from
:mod:`slmtune.training.distributed` (which the engine imports to launch) so that the two never import each other.
"""

from __future__ import annotations

from pathlib import Path

from slmtune.config import load_config
from slmtune.training.distributed import ERRORS_DIR, rank, shutdown_process_group
from slmtune.training.run import train


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="slmtune.training.rank")
    ap.add_argument("config")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    import warnings

    # DeepSpeed calls collectives torch has renamed; one FutureWarning per call would flood the user's terminal
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    cfg = load_config(args.config)
    try:
        train(cfg, resume=args.resume, progress=args.progress and rank() == 0)
    except Exception as e:  # noqa: BLE001 - reported to the launcher, then this rank exits non-zero
        errors = Path(cfg.run.output) / ERRORS_DIR
        errors.mkdir(parents=True, exist_ok=True)
        (errors / f"rank-{rank()}.txt").write_text(f"rank {rank()}: {type(e).__name__}: {e}")
        raise SystemExit(1) from None
    finally:
        shutdown_process_group()


if __name__ == "__main__":
    main()
