"""`slmtune train` and `slmtune plan`: build a config from a YAML file, flags and --set, then train or plan it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import duration, err, handle_errors, out
from slmtune.cli.options import (
    METHODS_HELP,
    BatchSizeOpt,
    ConfigArg,
    DataOpt,
    EpochsOpt,
    LearningRateOpt,
    LoraROpt,
    MaxStepsOpt,
    ModelOpt,
    NprocOpt,
    OutputOpt,
    ScenarioOpt,
    SetOpt,
    StrategyOpt,
    ValidationOpt,
    build,
)


@handle_errors
def train_command(
    config: ConfigArg = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    validation: ValidationOpt = None,
    method: Annotated[str | None, typer.Option("--method", help=f"method.name: {METHODS_HELP}.")] = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = None,
    lora_r: LoraROpt = None,
    scenario: ScenarioOpt = None,
    output: OutputOpt = None,
    nproc: NprocOpt = None,
    strategy: StrategyOpt = None,
    set_: SetOpt = None,
    resume: Annotated[Path | None,
                      typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and its plan (memory, time), "
                                          "then exit without training.")] = False,
) -> None:
    """Fine-tune a model. Writes config.yaml, adapter/, checkpoints/step-N/, metrics.csv, events.jsonl.

    Examples:\n
      slmtune train examples/demo/lora.yaml\n
      slmtune train --model smollm2-135m-instruct --data train.jsonl --validation val.jsonl --epochs 2 -o runs/x\n
      slmtune train examples/demo/lora.yaml --max-steps 20 --learning-rate 2e-4 --lora-r 8 --dry-run\n
      slmtune train --resume runs/x\n
      slmtune train examples/demo/lora.yaml --nproc 2 --strategy zero2\n
      slmtune train --scenario classification --data sentiment/train.jsonl --validation sentiment/eval.jsonl
    """
    # the engine, wrapped by a scenario run when one is set
    from slmtune.scenarios.run import fine_tune
    from slmtune.training.result import RunStatus

    flags = dict(model=model, data=data, validation=validation, method=method, epochs=epochs, max_steps=max_steps,
                 learning_rate=learning_rate, batch_size=batch_size, lora_r=lora_r, scenario=scenario, output=output,
                 nproc=nproc, strategy=strategy)
    cfg = build(config, flags, set_, resume)
    if dry_run:
        _dry_run(cfg)
        return
    result = fine_tune(cfg, resume=resume is not None, progress=True)
    if result is None:  # a node other than 0 of a multi-node run: node 0 writes the run directory
        out.print(f"[green]done[/] node {cfg.distributed.node_rank}: its processes finished; the run directory, "
                  "metrics and artifact are on node 0")
        return
    if result.status == RunStatus.INTERRUPTED:
        err.print(f"[yellow]Interrupted at step {result.global_step}. Resume with:[/] "
                  f"slmtune train --resume {result.run_dir}")
        raise typer.Exit(130)
    if result.train_reward_mean is not None:  # grpo: the reward is what the run is about
        summary = f"train_reward_mean {result.train_reward_mean:.4f}" + (
            f", valid_reward_mean {result.valid_reward_mean:.4f}" if result.valid_reward_mean is not None else "")
    else:
        summary = (f"{result.tokens_per_second:.0f} tokens/s; train_loss {result.train_loss:.4f}"
                   + (f", valid_loss {result.valid_loss:.4f}" if result.valid_loss is not None else ""))
    out.print(f"[green]done[/] {result.global_step} steps in {result.train_runtime_s:.0f}s, {summary}"
              f"\nartifact: {result.artifact}")


@handle_errors
def plan_cmd(
    config: Annotated[Path | None, typer.Argument(help="YAML config (its method is marked in the table).")] = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    validation: ValidationOpt = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="Only these methods (repeatable; default: all); "
                                                     f"the first is method.name. One of: {METHODS_HELP}.")] = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    learning_rate: LearningRateOpt = None,
    batch_size: BatchSizeOpt = None,
    lora_r: LoraROpt = None,
    scenario: ScenarioOpt = None,
    nproc: NprocOpt = None,
    strategy: StrategyOpt = None,
    set_: SetOpt = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory limit (default: what this machine has free).")] = None,
    price_per_hour: Annotated[float | None, typer.Option(help="Machine price, for the cost column.")] = None,
    uncalibrated: Annotated[bool, typer.Option(
        "--uncalibrated", help="Predict tokens/s from the matmul probe and this class of CPU, not from the speeds "
        "earlier runs of the model measured on this machine.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict peak memory, tokens/s, wall time and cost for each method, before training. Takes the flags
    `slmtune train` takes.

    Methods that fit the memory limit come first, fastest first; the others say why they do not fit. Once the model
    has been trained on this machine, tokens/s comes from the speeds those runs measured ($SLMTUNE_SPEED_LOG,
    default $SLMTUNE_HOME/speeds.jsonl); a note under the table says which.
    """
    from slmtune.planner import plan_methods

    flags = dict(model=model, data=data, validation=validation, method=method[0] if method else None, epochs=epochs,
                 max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size, lora_r=lora_r,
                 scenario=scenario, nproc=nproc, strategy=strategy)
    cfg = build(config, flags, set_)
    with err.status("planning (builds the model on the meta device, probes matmul speed once)"):
        plans = plan_methods(cfg, memory_limit_mb=memory_gb * 1024 if memory_gb else None,
                             price_per_hour=price_per_hour, methods=method, calibrated=not uncalibrated)
    if as_json:
        print(json.dumps([p.to_dict() for p in plans], indent=2))
        return
    p0 = plans[0]
    title = f"{cfg.model.name}: {p0.steps} steps, ~{p0.tokens_total:,} tokens, batch {cfg.train.batch_size}"
    table = Table(title=title)
    for col in ("method", "precision", "trainable", "peak memory", "tokens/s", "time", "cost", "fits"):
        table.add_column(col)
    for p in plans:
        mark = " (config)" if p.method == cfg.method.name else ""
        table.add_row(p.method + mark, p.precision, f"{p.trainable_params:,}", f"{p.peak_memory_mb / 1024:.2f} GB",
                      f"{p.tokens_per_second:.0f}", duration(p.wall_seconds),
                      "-" if p.cost is None else f"{p.cost:.4f}", "yes" if p.fits else f"no: {p.reason}")
    out.print(table)
    for note in dict.fromkeys(n for p in plans for n in p.notes):  # the config's notes, once each
        out.print(f"[yellow]note:[/] {note}")
    out.print("[dim]Memory and the first estimate of speed calibrated on 2-core AMX, AVX512-BF16 and AVX2 CPUs "
              "(docs/methods.md shows predicted vs measured); speed then from this machine's own runs.[/]")


def _dry_run(cfg) -> None:
    """The config as training would use it, then its plan; nothing is trained or written."""
    from slmtune.planner import plan

    out.print("[bold]Resolved config[/] (what config.yaml of the run would hold, before auto values are resolved):")
    print(cfg.to_yaml())
    with err.status("planning"):
        p = plan(cfg)
    out.print(f"[bold]Plan[/] for {p.method} ({p.precision}): {p.steps} steps, ~{p.tokens_total:,} tokens; peak "
              f"memory {p.peak_memory_mb / 1024:.2f} GB ({'fits' if p.fits else 'does not fit: ' + p.reason}); "
              f"~{p.tokens_per_second:.0f} tokens/s, ~{duration(p.wall_seconds)}"
              + (f"; note: {'; '.join(p.notes)}" if p.notes else ""))
    out.print("[dim]--dry-run: nothing was trained.[/]")
