"""`slmtune sweep`: one training config over a grid or a random search of its values, locally or on Ray Tune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from slmtune.cli.common import err, handle_errors, out
from slmtune.cli.options import ConfigArg, SetOpt


@handle_errors
def sweep(
    config: ConfigArg = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="section.key=v1,v2,... — every combination is a "
                                                   "trial (repeatable).")] = None,
    search: Annotated[list[str] | None, typer.Option("--search", help="section.key=low:high (uniform), "
                                                     "low:high:log (log scale); two integers draw integers "
                                                     "(repeatable; needs --trials).")] = None,
    trials: Annotated[int | None, typer.Option("--trials", help="How many trials: draws for --search; caps a grid.")
                      ] = None,
    metric: Annotated[str, typer.Option("--metric", help="What picks the best trial: valid_loss, "
                                        "valid_mean_token_accuracy, valid_reward_mean or train_loss (the kept step's "
                                        "figure in each run's result.json); in a scenario run also the scenario's "
                                        "metrics (accuracy, f1, chrf, …: its after-training evaluation).")
                  ] = "valid_loss",
    mode: Annotated[str | None, typer.Option("--mode", help="min or max (default: min for losses, max otherwise).")
                    ] = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: trial-NNN/ run folders, sweep.json, "
                                         "trials.csv, best.yaml.")] = Path("runs/sweep"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in --out: finished trials are kept, "
                                         "an interrupted one resumes from its checkpoint.")] = False,
    use_ray: Annotated[bool, typer.Option("--ray", help="Run the trials as Ray Tune trials on a Ray instance "
                                          "started here.")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Run them on this Ray cluster "
                                                    "(host:port of its head); trial folders must be on shared "
                                                    "storage.")] = None,
    asha: Annotated[bool, typer.Option("--asha", help="With Ray: stop trials that fall behind at an evaluation "
                                       "(Ray Tune's ASHA).")] = False,
    cpus_per_trial: Annotated[float, typer.Option("--cpus-per-trial", help="With Ray: CPUs each trial reserves.")
                              ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --search draws.")] = 0,
    set_: SetOpt = None,
) -> None:
    """Train CONFIG once per trial over a grid or a random search of config values and pick the best by a
    validation metric; every trial is an ordinary run folder.

    Examples:\n
      slmtune sweep examples/demo/lora.yaml --grid train.learning_rate=1e-4,3e-4 --grid method.r=8,16\n
      slmtune sweep lora.yaml --search train.learning_rate=1e-5:1e-3:log --trials 8 --ray --asha\n
      slmtune sweep lora.yaml --grid method.r=8,16,32 --ray-address 10.0.0.5:6379 -o /shared/sweeps/r\n
      slmtune sweep lora.yaml --grid method.r=8,16,32 -o runs/sweep --resume
    """
    import yaml

    from slmtune.config import apply_overrides
    from slmtune.display import ConsoleSink
    from slmtune.sweeps import parse_grid, parse_search, run_sweep

    raw = yaml.safe_load(config.read_text()) if config is not None else {}
    raw = apply_overrides(raw or {}, set_ or [])
    dims = [parse_grid(g) for g in grid or []], [parse_search(s) for s in search or []]
    result = run_sweep(raw, output, grid=dims[0], search=dims[1], trials=trials, metric=metric, mode=mode, seed=seed,
                       resume=resume, ray_address=ray_address, use_ray=use_ray, asha=asha,
                       cpus_per_trial=cpus_per_trial, log=lambda s: err.print(f"[bold]{s}[/]"),
                       sinks_for=lambda trial: [ConsoleSink()])
    keys = list(dict.fromkeys(k for t in result.trials for k in t.overrides))
    table = Table(title=f"sweep {output}: {len(result.trials)} trials by {result.metric} ({result.mode})")
    for c in ["trial", *keys, "status", result.metric, "kept step", "steps", "tokens/s"]:
        table.add_column(c, justify="right" if c not in ("status",) else "left")
    for t in result.trials:
        mark = " ★" if t.index == result.best else ""
        table.add_row(f"{t.index}{mark}", *[f"{t.overrides.get(k):g}" if isinstance(t.overrides.get(k), float)
                                            else str(t.overrides.get(k)) for k in keys],
                      t.status + (f": {t.error[:60]}" if t.error else ""),
                      "" if t.metric is None else f"{t.metric:.4f}", str(t.best_step or ""), str(t.global_step or ""),
                      "" if t.tokens_per_second is None else f"{t.tokens_per_second:.0f}")
    out.print(table, width=max(out.width, 110))  # a pipe's 80 columns would cut the values
    if result.best is None:
        err.print("[red]no trial finished with a figure for the metric[/]")
        raise typer.Exit(1)
    best = result.trials[result.best]
    out.print(f"best: trial {best.index} ({result.metric} {best.metric:.4f}) in {best.run_dir}; its config: "
              f"{Path(result.out) / 'best.yaml'}")
