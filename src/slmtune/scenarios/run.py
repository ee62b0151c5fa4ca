"""A scenario run wraps the engine: records → chat examples, the engine's ``train``, then the base and tuned
models scored on the held-out records and ``report.md`` written. The engine knows nothing of scenarios.

``slmtune.train()``, ``slmtune train`` and the service's jobs all call :func:`fine_tune` here; without a scenario in
the config it is the engine's ``train`` unchanged. The multi-process launcher is the engine's too: the records are
converted before it starts, and the evaluation runs once, here, after every process has finished.
"""

from __future__ import annotations

from pathlib import Path

from slmtune import events as ev
from slmtune.config import ConfigError
from slmtune.display import ConsoleSink
from slmtune.graders.spec import judge_models
from slmtune.inference.generate import ChatModel
from slmtune.inference.judge import EngineJudge
from slmtune.inference.rollout import EngineRollout
from slmtune.methods import get as get_method
from slmtune.models.loading import resolve_precision
from slmtune.models.registry import resolve
from slmtune.scenarios.catalog import LOWER_IS_BETTER, get
from slmtune.scenarios.evaluate import evaluate_scenario
from slmtune.scenarios.pipeline import evaluate_models, heldout_records, load_info, prepare
from slmtune.scenarios.report import write_report
from slmtune.training import grpo
from slmtune.training import run as engine
from slmtune.training.result import RunStatus, TrainResult


def fine_tune(config, *, resume: bool = False, sinks: list[ev.Sink] | None = None,
              progress: bool = False) -> TrainResult | None:
    """The engine's :func:`slmtune.training.run.train`, with a scenario's data preparation before it and its
    before/after evaluation and report after it when ``config`` names a scenario."""
    cfg = engine.coerce_config(config).model_copy(deep=True)
    if cfg.train.objective == "grpo":
        return _reinforce(cfg, resume=resume, sinks=sinks, progress=progress)
    if not cfg.scenario.name:
        return engine.train(cfg, resume=resume, sinks=sinks, progress=progress)
    engine.check_config(cfg)
    run_dir = engine.prepare_run_dir(cfg, resume)
    notes = prepare(cfg, run_dir)  # records → chat examples in RUN/data/; cfg.data now points there
    scorer = HeldOutScorer.for_run(cfg, run_dir)
    held = list(sinks or [])  # the engine closes its sinks when it ends; the evaluation still writes to these
    try:
        if notes:  # keys the records had beyond the scenario's: ignored, said once per file
            bus = _bus(held, run_dir, progress)
            for note in notes:
                bus.emit(ev.message(note, level="warn"))
            bus.close()
        result = engine.train(cfg, resume=resume, sinks=[_KeepOpen(s) for s in held], progress=progress,
                              run_dir_ready=True, scorer=scorer)
        if result is None or result.status != RunStatus.SUCCEEDED or not cfg.scenario.eval:
            return result
        bus, held = _bus(held, run_dir, progress, keep_open=False), []  # the bus closes them now
        try:
            evaluate_and_report(cfg, run_dir, bus, progress)
        except Exception as e:
            bus.emit(ev.message(f"Scenario evaluation failed: {type(e).__name__}: {e}", level="error"))
            raise
        finally:
            bus.close()
        return result
    finally:
        ev.EventBus(held).close()


class HeldOutScorer:
    """The engine's ``Scorer`` for a scenario run: the scenario's generated metrics (accuracy, entity F1, …) on
    its held-out records (at most scenario.eval_max_records), scored with the model as it is at each evaluation —
    what ``train.early_stopping.metric`` judges when it names one of them. The same code and prompts as the
    after-training evaluation, so the kept step's figure is what that evaluation measures on its weights."""

    def __init__(self, name: str, meta: dict, records: list):
        sc = get(name)
        self.name, self.meta, self.records = name, meta, records
        self.metrics = sc.scored
        self.lower = LOWER_IS_BETTER & frozenset(self.metrics)

    @classmethod
    def for_run(cls, cfg, run_dir: Path) -> HeldOutScorer | None:
        """The run's scorer when it stops early and its scenario scores by generation, else None. The engine calls
        it only when early_stopping.metric names one of its metrics, and lists them when the metric is unknown."""
        if cfg.train.early_stopping is None or not get(cfg.scenario.name).scored:
            return None
        info = load_info(run_dir)
        return cls(info["name"], info["meta"], heldout_records(run_dir)[: cfg.scenario.eval_max_records])

    def __call__(self, model, tokenizer) -> dict[str, float]:
        scores = evaluate_scenario(ChatModel.around(model, tokenizer), self.name, self.meta, self.records)
        return {m: float(scores[m]) for m in self.metrics if m in scores}


def _reinforce(cfg, *, resume: bool, sinks, progress: bool) -> TrainResult | None:
    """train.objective grpo: the engine's run, with the batching engine sampling the rollouts (rl.rollout: engine,
    for methods it batches per row, on one process) and judging a model grader's samples."""
    try:  # the engine's train() checks the config and names its problems; only the judges are read here
        models = judge_models(grpo.load_grader(cfg.rl.grader)) if cfg.rl.grader else set()
    except ConfigError:
        models = set()
    judge = None
    if models:
        judges = cfg.rl.judges  # adapters by name (a job's fine-tuned judges); other names are base models
        judge = EngineJudge(resolve=lambda m: (judges[m]["base"], (m, Path(judges[m]["adapter"]))) if m in judges
                            else (m, None))
    rollout = None
    method = get_method(cfg.method.name)
    if cfg.rl.rollout == "engine" and method.batchable and not method.quantized \
            and cfg.distributed.nproc * cfg.distributed.nnodes == 1:
        precision = resolve_precision(cfg.model.precision, method.precisions, resolve(cfg.model.name))
        rollout = EngineRollout(cfg.model.name, "bf16" if precision.startswith("bf16") else precision,
                                seed=cfg.train.seed)
    try:
        return engine.train(cfg, resume=resume, sinks=sinks, progress=progress, judge=judge, rollout=rollout)
    finally:
        for part in (judge, rollout):
            if part is not None:
                part.close()


def _bus(sinks: list, run_dir: Path, progress: bool, keep_open: bool = True) -> ev.EventBus:
    """A bus to the caller's sinks (left open unless ``keep_open`` is False), the console and the run's
    events.jsonl, for what the scenario run says before and after the engine."""
    bus = ev.EventBus([_KeepOpen(s) for s in sinks] if keep_open else sinks)
    if progress:
        bus.add(ConsoleSink())
    bus.add(ev.JsonlSink(run_dir / "events.jsonl"))
    return bus


class _KeepOpen:
    """A caller's sink handed to the engine without its ``close`` (the scenario run closes it at its own end)."""

    def __init__(self, sink: ev.Sink):
        self.sink = sink

    def __call__(self, event: ev.Event) -> None:
        self.sink(event)


def evaluate_and_report(cfg, run_dir: Path, bus: ev.EventBus, progress: bool) -> None:
    """Base vs tuned on the held-out records, then report.md (the scenario's before/after)."""
    info = load_info(run_dir)
    records = heldout_records(run_dir)
    if not records:
        bus.emit(ev.message("Scenario: no validation records (data.validation or data.validation_split), so no "
                            "before/after metric", level="warn"))
        return
    scores = evaluate_models(run_dir, info["name"], info["meta"], records, ("base", "tuned"),
                             max_records=cfg.scenario.eval_max_records, progress=progress,
                             log=lambda s: bus.emit(ev.message(s)))
    sc = get(info["name"])
    b, t = scores["base"].get(sc.headline), scores["tuned"].get(sc.headline)
    report = write_report(run_dir)
    bus.emit(ev.message(f"Scenario {sc.name}: {sc.headline} base {b:.4g} → tuned {t:.4g}; report: {report}",
                        scenario=sc.name, metric=sc.headline, base=b, tuned=t))
