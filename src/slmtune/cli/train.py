"""`slmtune train` and `slmtune plan`: build a config from a YAML file, flags and --set, then train or plan it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import duration, err, fail, handle_errors, out


@handle_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (optional: flags and --set can give it all).")] = None,
    model: Annotated[str | None, typer.Option(help="model.name: registry id or local model folder.")] = None,
    data: Annotated[str | None, typer.Option(help="data.train: training JSONL.")] = None,
    validation: Annotated[str | None, typer.Option(help="data.validation: validation JSONL.")] = None,
    method: Annotated[str | None, typer.Option(help="method.name: lora, dora, qlora, ia3, prompt_tuning, "
                                               "prefix_tuning, p_tuning, adalora, loha, lokr, vera, full.")] = None,
    epochs: Annotated[float | None, typer.Option(help="train.epochs.")] = None,
    scenario: Annotated[str | None, typer.Option(help="scenario.name: domain, classification, ner, translation, "
                                                 "qa, chat, creative (data files hold the scenario's records).")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="run.output: the run directory.")] = None,
    nproc: Annotated[int | None, typer.Option(help="distributed.nproc: worker processes on this machine "
                                              "(launched by slmtune through torchrun).")] = None,
    strategy: Annotated[str | None, typer.Option(help="distributed.strategy: ddp, zero1, zero2, zero3, fsdp.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config key: section.key=value (repeatable).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
) -> None:
    """Fine-tune a model. Writes config.yaml, adapter/, checkpoints/step-N/, metrics.csv, events.jsonl.

    Examples:\n
      slmtune train examples/demo/lora.yaml\n
      slmtune train --model smollm2-135m-instruct --data train.jsonl --validation val.jsonl --method lora --epochs 2 --output runs/x\n
      slmtune train --resume runs/x\n
      slmtune train examples/demo/lora.yaml --nproc 2 --strategy zero2\n
      slmtune train --scenario classification --data ~/.slmtune/data/sentiment/train.jsonl --validation ~/.slmtune/data/sentiment/eval.jsonl -o runs/sent
    """
    from slmtune.config import build_config, load_config
    from slmtune.scenarios.run import (
        train as run_train,  # the engine, wrapped by a scenario run when one is set
    )

    overrides = []
    for key, val in (("model.name", model), ("data.train", data), ("data.validation", validation),
                     ("method.name", method), ("train.epochs", epochs), ("scenario.name", scenario),
                     ("run.output", output), ("distributed.nproc", nproc), ("distributed.strategy", strategy)):
        if val is not None:
            overrides.append(f"{key}={val}")
    overrides += set_ or []
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.exists():
            fail(f"{resume}: nothing to resume (no config.yaml)", 2)
        cfg = load_config(config or saved, overrides + [f"run.output={resume}"])
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        cfg = build_config({}, overrides, source="command line")
    result = run_train(cfg, resume=resume is not None, progress=True)
    if result is None:  # a node other than 0 of a multi-node run: node 0 writes the run directory
        out.print(f"[green]done[/] node {cfg.distributed.node_rank}: its processes finished; the run directory, "
                  "metrics and artifact are on node 0")
        return
    if result.status == "interrupted":
        err.print(f"[yellow]Interrupted at step {result.global_step}. Resume with:[/] slmtune train --resume {result.run_dir}")
        raise typer.Exit(130)
    out.print(
        f"[green]done[/] {result.global_step} steps in {result.train_runtime_s:.0f}s, "
        f"{result.tokens_per_second:.0f} tokens/s; train_loss {result.train_loss:.4f}"
        + (f", valid_loss {result.valid_loss:.4f}" if result.valid_loss is not None else "")
        + f"\nartifact: {result.artifact}"
    )


@handle_errors
def plan_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML config (its method is marked in the table).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override section.key=value.")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory limit (default: what this machine has free).")] = None,
    price_per_hour: Annotated[float | None, typer.Option(help="Machine price, for the cost column.")] = None,
    method: Annotated[list[str] | None, typer.Option(help="Only these methods (repeatable; default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict peak memory, tokens/s, wall time and cost for each method, before training.

    Methods that fit the memory limit come first, fastest first; the others say why they do not fit.
    """
    from slmtune.config import build_config, load_config
    from slmtune.planner import plan_methods

    cfg = load_config(config, set_ or []) if config else build_config({}, set_ or [])
    with err.status("planning (builds the model on the meta device, probes matmul speed once)"):
        plans = plan_methods(cfg, memory_limit_mb=memory_gb * 1024 if memory_gb else None,
                             price_per_hour=price_per_hour, methods=method)
    if as_json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
        return
    p0 = plans[0]
    table = Table(title=f"{cfg.model.name}: {p0.steps} steps, ~{p0.tokens_total:,} tokens, batch {cfg.train.batch_size}")
    for col in ("method", "precision", "trainable", "peak memory", "tokens/s", "time", "cost", "fits"):
        table.add_column(col)
    for p in plans:
        mark = " (config)" if p.method == cfg.method.name else ""
        table.add_row(p.method + mark, p.precision, f"{p.trainable_params:,}", f"{p.peak_memory_mb / 1024:.2f} GB",
                      f"{p.tokens_per_second:.0f}", duration(p.wall_seconds),
                      "-" if p.cost is None else f"{p.cost:.4f}", "yes" if p.fits else f"no: {p.reason}")
    out.print(table)
    out.print("[dim]Calibrated on a 2-core AMX Xeon (docs/methods.md shows predicted vs measured).[/]")
