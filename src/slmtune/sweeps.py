"""``slmtune sweep``: the same training run over a grid or a random search of config values, each trial an ordinary
run folder, the best trial's config written out.

Trials are fixed before anything runs: a ``--grid key=v1,v2`` gives every combination (in order), a ``--search
key=low:high`` draws ``--trials`` seeded samples (``low:high:log`` draws on a log scale; two integers draw integers),
and the two combine (each draw paired with the grid's combinations in turn). Trial ``k`` trains in
``OUT/trial-k`` with ``run.output`` set there, so a sweep that is run again with ``--resume`` skips the trials that
finished, resumes one that was interrupted from its checkpoint, and starts the rest — locally and on Ray alike.

Locally the trials run one after another in this process. With ``--ray-address`` (or ``--ray`` for a Ray instance
started here) they run as Ray Tune trials across the cluster's nodes, one CPU bundle each (``--cpus-per-trial``);
``--asha`` adds Ray Tune's ASHA scheduler, which stops trials whose metric at an evaluation is behind the others'
(each evaluation is one Tune iteration). The trial folders must be on storage every node sees, as for the Ray
executor. Ray is the optional extra (``pip install 'slmtune[ray]'``).

Written on top of Ray Tune rather than with it alone because the trials have to be plain slmtune runs (config.yaml,
adapter/, checkpoints/ — what chat, serve and the exports read) that resume by slmtune's own rules, and the same
sweep has to run where Ray is not installed.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from slmtune.config import ConfigError, apply_overrides, build_config
from slmtune.scenarios.catalog import LOWER_IS_BETTER
from slmtune.scenarios.catalog import get as get_scenario
from slmtune.scenarios.pipeline import read_scores
from slmtune.scenarios.run import fine_tune
from slmtune.training.result import RunStatus

METRICS = {"valid_loss": "min", "valid_mean_token_accuracy": "max", "valid_reward_mean": "max", "train_loss": "min"}
SWEEP_FILE = "sweep.json"


@dataclass
class Dimension:
    key: str
    values: list | None = None  # grid
    low: float | None = None  # search
    high: float | None = None
    log: bool = False
    integer: bool = False

    def draw(self, rng: random.Random):
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return rng.uniform(self.low, self.high)


def _value(text: str):
    """A command-line value: an int, a float (``1e-4`` too, which YAML 1.1 reads as text), else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_grid(text: str) -> Dimension:
    """``section.key=v1,v2,...`` (each value read as YAML: numbers, booleans, names)."""
    key, sep, values = text.partition("=")
    if not sep or "." not in key or not values:
        raise ConfigError([f"--grid {text}: expected section.key=value1,value2"])
    return Dimension(key.strip(), values=[_value(v.strip()) for v in values.split(",")])


def parse_search(text: str) -> Dimension:
    """``section.key=low:high`` (uniform), ``low:high:log`` (log-uniform, both above 0); two integers draw
    integers."""
    key, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or "." not in key or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ConfigError([f"--search {text}: expected section.key=low:high or low:high:log"])
    try:
        low, high = (_value(p.strip()) for p in parts[:2])
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ValueError
    except (ValueError, yaml.YAMLError):
        raise ConfigError([f"--search {text}: low and high must be numbers with low < high"]) from None
    log = len(parts) == 3
    if log and low <= 0:
        raise ConfigError([f"--search {text}: a log scale needs low > 0"])
    return Dimension(key.strip(), low=low, high=high, log=log, integer=isinstance(low, int) and isinstance(high, int)
                     and not log)


def plan_trials(grid: list[Dimension], search: list[Dimension], trials: int | None, seed: int) -> list[dict]:
    """The trials' overrides, fixed by the arguments and the seed (so a resumed sweep finds the same ones)."""
    combos = [dict(zip([d.key for d in grid], values)) for values in itertools.product(*[d.values for d in grid])]
    if not search:
        return combos[:trials] if trials else combos
    rng = random.Random(seed)
    n = trials or len(combos)
    return [{**combos[i % len(combos)], **{d.key: d.draw(rng) for d in search}} for i in range(n)]


@dataclass
class Trial:
    index: int
    overrides: dict
    run_dir: str
    status: str = "pending"  # pending, succeeded, stopped (ASHA), interrupted, failed
    metric: float | None = None
    best_step: int | None = None
    global_step: int | None = None
    tokens_per_second: float | None = None
    error: str | None = None
    node: str | None = None  # the Ray node it ran on (None: here)


@dataclass
class SweepResult:
    out: str
    metric: str
    mode: str
    trials: list[Trial] = field(default_factory=list)
    best: int | None = None  # index of the best trial

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "trials": [asdict(t) for t in self.trials]}, indent=2)


def trial_config(raw: dict, overrides: dict, run_dir: Path) -> dict:
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + [f"run.output={run_dir}"]
    return apply_overrides(raw, sets)


def _result(run_dir: Path) -> dict | None:
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _finished(run_dir: Path) -> dict | None:
    result = _result(run_dir)
    return result if result is not None and result.get("status") == RunStatus.SUCCEEDED else None


def run_trial(raw: dict, trial: Trial, metric: str, sinks=None, progress: bool = False) -> Trial:
    """Train one trial (or read it back when it finished before; resume it when it was interrupted)."""
    run_dir = Path(trial.run_dir)
    done = _finished(run_dir)
    if done is None:
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        cfg = trial_config(raw, trial.overrides, run_dir)
        if not resume:
            cfg = apply_overrides(cfg, ["run.overwrite=true"])
        try:
            fine_tune(cfg, resume=resume, sinks=sinks, progress=progress)
        except Exception as e:  # noqa: BLE001 - one trial's failure (a diverging rate, memory) is a result
            trial.status, trial.error = "failed", f"{type(e).__name__}: {e}"
            return trial
        done = _result(run_dir)
    if done is None:
        trial.status = "interrupted"
        return trial
    trial.status = "succeeded" if done.get("status") == RunStatus.SUCCEEDED else "interrupted"
    trial.metric = done.get(metric) if metric in METRICS else read_scores(run_dir).get("tuned", {}).get(metric)
    trial.best_step, trial.global_step = done.get("kept_step") or done.get("best_step"), done.get("global_step")
    trial.tokens_per_second = done.get("tokens_per_second")
    return trial


def metric_modes(config: dict) -> dict[str, str]:
    """What a sweep over ``config`` can pick its best trial by, each with its direction: the run's own figures
    (result.json) and, for a scenario run, the scenario's metrics as its after-training evaluation measured them on
    the run's adapter (the kept step's with train.keep: best)."""
    name = build_config(config).scenario.name
    return METRICS | ({m: "min" if m in LOWER_IS_BETTER else "max" for m in get_scenario(name).metrics} if name else {})


def run_sweep(config: dict, out: str | Path, *, grid: list[Dimension] = (), search: list[Dimension] = (),
              trials: int | None = None, metric: str = "valid_loss", mode: str | None = None, seed: int = 0,
              resume: bool = False, ray_address: str | None = None, use_ray: bool = False, asha: bool = False,
              cpus_per_trial: float = 1.0, log=lambda s: None, sinks_for=None) -> SweepResult:
    """Run every trial (locally, or as Ray Tune trials) and write ``sweep.json``, ``trials.csv`` and ``best.yaml``
    into ``out``. ``sinks_for(trial)``: event sinks for a local trial (the CLI's progress display)."""
    modes = metric_modes(config)
    if metric not in modes:
        raise ConfigError([f"--metric {metric}: choose one of {', '.join(modes)}"])
    mode = mode or modes[metric]
    if not grid and not search:
        raise ConfigError(["give at least one --grid or --search dimension"])
    if search and not trials:
        raise ConfigError(["--search needs --trials N (how many draws)"])
    build_config(config)  # the base config is valid before any trial starts
    for d in [*grid, *search]:
        build_config(apply_overrides(config, [f"{d.key}={json.dumps(d.values[0] if d.values else d.low)}"]))
    config = absolute_paths(config)  # Ray runs trials in other working directories (and on other machines)
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError([f"{out}: not empty; run again with --resume to continue that sweep, or choose --out"])
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_trials(list(grid), list(search), trials, seed)
    saved = out / SWEEP_FILE
    result = SweepResult(str(out), metric, mode, [Trial(i, o, str(out / f"trial-{i:03d}")) for i, o in enumerate(plan)])
    if resume and saved.exists():  # the same sweep: the same trials; those ASHA stopped stay stopped
        before = json.loads(saved.read_text())
        if [t["overrides"] for t in before["trials"]] != [json.loads(json.dumps(p)) for p in plan]:
            raise ConfigError([f"{out}: --resume with other dimensions than the sweep there was started with"])
        result.trials = [Trial(**t) if t["status"] == "stopped" else new for t, new in zip(before["trials"],
                                                                                             result.trials)]
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _write(result)
    if use_ray or ray_address:
        _run_on_ray(config, result, ray_address, asha, cpus_per_trial, log)
    else:
        if asha:
            raise ConfigError(["--asha stops trials early through Ray Tune: add --ray (a Ray instance started here) "
                               "or --ray-address"])
        for trial in result.trials:
            if trial.status == "stopped":
                continue
            log(f"trial {trial.index + 1}/{len(result.trials)}: "
                + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.overrides.items()))
            run_trial(config, trial, metric, sinks=sinks_for(trial) if sinks_for else None)
            _write(result)
    scored = [t for t in result.trials if t.metric is not None and t.status == "succeeded"]
    if scored:
        best = (min if mode == "min" else max)(scored, key=lambda t: t.metric)
        result.best = best.index
        shutil.copy2(Path(best.run_dir) / "config.yaml", out / "best.yaml")
    _write(result)
    return result


def absolute_paths(config: dict) -> dict:
    """The config with its data files as absolute paths (relative ones are relative to this working directory, as
    for `slmtune train`)."""
    out = copy.deepcopy(config)
    data = out.get("data") or {}
    for key in ("train", "validation"):
        if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(Path(data[key]).resolve())
    for source in data.get("mix") or []:
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source["path"] = str(Path(source["path"]).expanduser().resolve())
    return out


def _write(result: SweepResult) -> None:
    out = Path(result.out)
    (out / SWEEP_FILE).write_text(result.to_json())
    keys = list(dict.fromkeys(k for t in result.trials for k in t.overrides))
    with (out / "trials.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", *keys, "status", result.metric, "best_step", "steps", "tokens_per_second", "run"])
        for t in result.trials:
            w.writerow([t.index, *[t.overrides.get(k) for k in keys], t.status,
                        "" if t.metric is None else f"{t.metric:.6g}", t.best_step or "", t.global_step or "",
                        t.tokens_per_second or "", t.run_dir])


def _run_on_ray(config: dict, result: SweepResult, address: str | None, asha: bool, cpus: float, log) -> None:
    """Each pending trial as a Ray Tune trial: it reports the metric at every evaluation (one Tune iteration each),
    and ASHA, when asked, stops the ones behind."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
    except ImportError:
        raise ConfigError(["sweeps on Ray need Ray Tune: pip install 'slmtune[ray]'"]) from None
    # "local": a fresh instance here, never a cluster some earlier `ray start` on this machine left its address for
    ray.init(address=address or "local", ignore_reinit_error=True, log_to_driver=False,
             **({"include_dashboard": False} if address is None else {}))
    metric, mode = result.metric, result.mode
    # a scenario metric is in the events as valid_<metric> when early stopping scores it at each evaluation
    event_key = metric if metric in METRICS else "valid_" + metric

    def trainable(params):
        trial = Trial(**params["trial"])

        def report(event):  # a sink in the trial's training: each evaluation's figure goes to Tune
            if event.type == "metrics" and event.data.get(event_key) is not None:
                tune.report({metric: event.data[event_key], "step": event.data["step"]})

        done = run_trial(config, trial, metric, sinks=[report])
        done.node = ray.get_runtime_context().get_node_id()
        tune.report({metric: done.metric if done.metric is not None else float("nan"), "step": done.global_step or 0,
                     "trial_json": json.dumps(asdict(done))})

    pending = [t for t in result.trials if _finished(Path(t.run_dir)) is None and t.status != "stopped"]
    for t in result.trials:
        if t not in pending and t.status != "stopped":
            run_trial(config, t, metric)  # read back
    if pending:
        log(f"{len(pending)} trials on Ray Tune ({ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster)")
        scheduler = ASHAScheduler(grace_period=1, reduction_factor=2) if asha else None
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": cpus}),
            param_space={"trial": tune.grid_search([asdict(t) for t in pending])},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler),
            run_config=tune.RunConfig(name="tune", storage_path=str(Path(result.out).resolve() / "ray"),
                                      verbose=0))
        grid = tuner.fit()
        for r in grid:
            index = r.config["trial"]["index"]
            trial = result.trials[index]
            final = r.metrics.get("trial_json") if r.metrics else None
            if final:
                done = Trial(**json.loads(final))
                result.trials[index] = done
            else:  # stopped by ASHA (or failed) before its run ended: its last reported figure
                trial.status = "failed" if r.error else "stopped"
                trial.metric = r.metrics.get(metric) if r.metrics else None
                trial.error = str(r.error)[:500] if r.error else None
    if address is None:
        ray.shutdown()
