"""The flags `slmtune train`, `slmtune plan` and (in part) `slmtune eval` share, each the config key it sets, and
how they become a config: the YAML file (or a run's saved config.yaml), then the flags, then ``--set`` in order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slmtune.config import SCENARIO_NAMES
from slmtune.methods import names as method_names

METHODS_HELP = method_names()

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config (optional: flags and --set can give it all).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model.name: registry id or local model folder.")]
DataOpt = Annotated[str | None, typer.Option("--data", help="data.train: training data (JSONL, JSON, Parquet, CSV, "
                                             "a save_to_disk folder).")]
ValidationOpt = Annotated[str | None, typer.Option("--validation", help="data.validation: validation data.")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="train.epochs.")]
ScenarioOpt = Annotated[str | None, typer.Option("--scenario", help=f"scenario.name: {', '.join(SCENARIO_NAMES)} "
                                                 "(data files hold its records).")]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", help="run.output: the run directory.")]
NprocOpt = Annotated[int | None, typer.Option("--nproc", help="distributed.nproc: worker processes on this machine "
                                              "(launched by slmtune through torchrun).")]
StrategyOpt = Annotated[str | None, typer.Option("--strategy", help="distributed.strategy: ddp, zero1, zero2, "
                                                 "zero3, fsdp.")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="train.max_steps: stop after this many "
                                                 "optimizer steps (overrides epochs).")]
LearningRateOpt = Annotated[float | None, typer.Option("--learning-rate", "--lr", help="train.learning_rate.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="train.batch_size: examples per step and "
                                                  "process.")]
LoraROpt = Annotated[int | None, typer.Option("--lora-r", help="method.r: the adapter rank.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Any config key: section.key=value (repeatable; "
                                                  "applied last).")]

# flag (its parameter name) → the config key it sets
KEYS = {"model": "model.name", "data": "data.train", "validation": "data.validation", "method": "method.name",
        "epochs": "train.epochs", "scenario": "scenario.name", "output": "run.output", "nproc": "distributed.nproc",
        "strategy": "distributed.strategy", "max_steps": "train.max_steps", "learning_rate": "train.learning_rate",
        "batch_size": "train.batch_size", "lora_r": "method.r"}


def build(config: Path | None, flags: dict, set_: list[str] | None, resume: Path | None = None):
    """The config: ``config`` (or the saved config.yaml of ``resume``), then the flags given, then ``--set``."""
    from slmtune.cli.common import fail
    from slmtune.config import build_config, load_config

    overrides = [f"{KEYS[name]}={value}" for name, value in flags.items() if value is not None] + (set_ or [])
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.exists():
            fail(f"{resume}: nothing to resume (no config.yaml)", 2)
        return load_config(config or saved, overrides + [f"run.output={resume}"])
    if config is not None:
        return load_config(config, overrides)
    return build_config({}, overrides, source="command line")
