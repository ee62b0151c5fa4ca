"""The engine: ``train(config)`` prepares the run directory (or launches the processes of a multi-process run) and
runs the recipe, ``_train``, which reads top to bottom as its steps:

    resolve_run → (model source, tokenizer) → setup_data → count_steps → trainer_settings → setup_model
    → setup_trainer (SFT or DPO: the one switch) → attach (fast paths, callbacks) → fit → save → finish

The CLI, the Python API and the service call it through :func:`slmtune.scenarios.run.fine_tune`, which adds a
scenario's data preparation and before/after evaluation around it when the config names one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from slmtune import events as ev
from slmtune.artifacts import CHECKPOINT_PREFIX, RESULT_FILE, list_checkpoints
from slmtune.config import ConfigError, TrainConfig, coerce_config
from slmtune.data.formats import DataError, Problem, objective_mismatch
from slmtune.data.tokenize import PackCollator, PadCollator, SFTDataset
from slmtune.data.validate import load_encoded
from slmtune.display import ConsoleSink
from slmtune.graders.grade import check_grader, read_graded_prompts
from slmtune.methods import BuildContext, get
from slmtune.models.loading import (
    FP32_WEIGHTS_SHARE,
    available_memory_mb,
    bitsandbytes_available,
    fast_bf16,
    linear_names,
    load_base_model,
    load_tokenizer,
    resolve_precision,
    weights_mb,
)
from slmtune.models.registry import resolve
from slmtune.training import distributed, grpo, speed
from slmtune.training.attention import use_train_attention
from slmtune.training.head_loss import unsupported_reason
from slmtune.training.preference import REFERENCE_FREE, build_preference_trainer
from slmtune.training.result import RunStatus, TrainResult
from slmtune.training.trainer import (
    ENGINE_VALIDATION,
    AfterOptimizerStep,
    EventCallback,
    Scorer,
    Selection,
    SLMTrainer,
    scores_early_stopping,
    validation_metrics,
)


class RunDirError(ValueError):
    pass


def check_config(cfg: TrainConfig) -> None:
    """Checks that need no model or data loading; every problem at once."""
    problems = []
    method = get(cfg.method.name)
    if method.quantized:
        if not bitsandbytes_available():
            problems.append(f"method.name: {method.name} needs the bitsandbytes package (pip install bitsandbytes); "
                            "or choose lora, which needs no quantization")
    if cfg.model.precision != "auto" and cfg.model.precision not in method.precisions:
        problems.append(
            f"model.precision: {cfg.model.precision!r} is not supported by method {method.name!r}; "
            f"allowed: {', '.join(method.precisions)}"
        )
    if not cfg.data.train and not cfg.data.mix:
        problems.append("data.train: required (a data file or folder; --data on the command line), or data.mix")
    for tracker in cfg.train.report_to:
        if importlib.util.find_spec(TRACKER_PACKAGES[tracker]) is None:
            problems.append(f"train.report_to: {tracker} needs the {tracker} package (pip install "
                            f"{'mlflow-skinny' if tracker == 'mlflow' else tracker}, "
                            "or pip install 'slmtune[tracking]')")
    if cfg.data.train and cfg.data.mix:
        problems.append("data.mix: give either data.train or data.mix (its sources with weights), not both")
    for key in ("train", "validation"):
        p = getattr(cfg.data, key)
        if p and not Path(p).is_file():
            problems.append(f"data.{key}: no such file: {p}")
    if cfg.data.packing and method.prompt_learning:
        problems.append(f"data.packing: not possible with {method.name} (virtual tokens are per sequence)")
    if cfg.data.packing and cfg.train.objective != "sft":
        problems.append(f"data.packing: not supported with train.objective {cfg.train.objective}")
    if cfg.train.objective == "grpo":
        problems += _check_rl(cfg)
    elif cfg.rl.grader or cfg.rl.reward:
        problems.append(f"rl: a grader or reward is for train.objective grpo, not {cfg.train.objective}")
    if cfg.data.validation and cfg.data.validation_split:
        problems.append("data.validation_split: give either data.validation or data.validation_split, not both")

    problems += distributed.check(cfg, method)
    if problems:
        raise ConfigError(problems)


def _check_rl(cfg: TrainConfig) -> list[str]:
    """train.objective grpo: one reward source, a grader that can run (its templates, formula, python source)."""
    rl = cfg.rl
    if bool(rl.grader) == bool(rl.reward):
        return ["rl: give rl.grader (an OpenAI grader) or rl.reward ('module:function'), one of them"]
    if cfg.method.name == "full":
        return ["train.objective: grpo needs an adapter method (the starting model is the base with the adapter "
                "off); method 'full' is not supported with grpo yet"]
    try:
        if rl.reward:
            grpo.load_reward(rl.reward)
            return []
        return [f"rl.grader.{p}" for p in check_grader(grpo.load_grader(rl.grader))]
    except ConfigError as e:
        return e.problems


def _holds_training(run_dir: Path) -> bool:
    """A run directory is in use once it has a checkpoint or an artifact; one whose start failed (bad data, a
    missing model) holds only config.yaml and events.jsonl and can be reused."""
    names = {"checkpoints", "adapter", "model", RESULT_FILE}
    return any((run_dir / n).exists() for n in names) or any(
        p.name not in {"config.yaml", "events.jsonl", "metrics.csv"} for p in run_dir.iterdir())


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    run_dir = Path(cfg.run.output)
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir}: nothing to resume (no config.yaml); start the run without --resume")
    elif run_dir.exists() and _holds_training(run_dir) and not cfg.run.overwrite:
        raise RunDirError(
            f"{run_dir}: run directory exists and is not empty; continue it with --resume, choose another "
            "--output, or set run.overwrite=true to start over in it"
        )
    elif run_dir.exists() and any(run_dir.iterdir()):  # overwrite, or a start that failed before any training
        import shutil

        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def holdout_split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded share of ``items`` held out for validation (at least one), both parts in their original order."""
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, int(round(len(idx) * fraction)))
    val = set(idx[:n_val])
    return [e for i, e in enumerate(items) if i not in val], [e for i, e in enumerate(items) if i in val]


def _examples_for_objective(cfg: TrainConfig, reports: list, train_set: list, val_set: list):
    """DPO trains on preference records; SFT refuses them. Every mismatch is named. Returns the parsed examples
    behind ``train_set`` and ``val_set`` (looked up by line in the reports that encoded them)."""
    problems = []
    source = {id(enc): (rep.examples[enc.line], rep.file) for rep in reports for enc in rep.encoded}
    out = []
    for subset in (train_set, val_set):
        pairs = [source[id(enc)] for enc in subset]
        bad = [(e, path, why) for e, path in pairs if (why := objective_mismatch(e.kind, cfg.train.objective))]
        if bad:
            e, path, why = bad[0]
            problems.append(Problem(path, e.line, "(root)", why))
        out.append([e for e, _ in pairs])
    if problems:
        raise DataError(problems)
    return out[0], out[1]


def train(
    config: TrainConfig | dict | str | Path,
    *,
    resume: bool = False,
    sinks: list[ev.Sink] | None = None,
    progress: bool = False,
    run_dir_ready: bool = False,
    judge=None,
    rollout=None,
    scorer: Scorer | None = None,
) -> TrainResult | None:
    """Fine-tune a model as ``config`` says; return a :class:`TrainResult` (None on a node other than 0 of a
    multi-node run: node 0 writes the run directory and holds the result).

    ``config`` is a TrainConfig, a dict of sections or a YAML path. ``resume=True`` continues from the last
    checkpoint in ``run.output``. ``sinks`` receive every :class:`slmtune.events.Event`; ``progress=True`` adds the
    terminal progress display. The run directory always gets ``events.jsonl`` and ``metrics.csv``.
    ``run_dir_ready``: a wrapper (a scenario run, :mod:`slmtune.scenarios.run`) prepared ``run.output`` and wrote
    the training data into it; it is used as it is. The engine reads ``cfg.data`` and nothing of scenarios.
    ``judge`` and ``rollout`` (train.objective grpo): what a model grader calls, and what samples the completions
    instead of TRL's generate — both from the layers above (``scenarios.run.fine_tune`` gives the batching engine's).
    ``scorer``: metrics scored by generation at each evaluation (a scenario's, which train.early_stopping.metric may
    name); one process only.
    """
    cfg = coerce_config(config).model_copy(deep=True)  # resolved below; the caller's object stays as given
    check_config(cfg)
    worker = distributed.is_worker()
    if worker:  # a rank of a multi-process run: the launcher prepared the run directory
        run_dir = Path(cfg.run.output)
    else:
        run_dir = Path(cfg.run.output) if run_dir_ready else prepare_run_dir(cfg, resume)
        if distributed.world_size(cfg) > 1:
            if scores_early_stopping(cfg, scorer):
                raise ConfigError([f"train.early_stopping.metric: {cfg.train.early_stopping.metric} is scored by "
                                   "generation in one process; multi-process runs stop on valid_loss or "
                                   "valid_mean_token_accuracy"])
            return distributed.launch(cfg, run_dir, resume, progress, sinks)

    ckpt = None
    if resume:
        ckpts = list_checkpoints(run_dir)
        ckpt = ckpts[-1] if ckpts else None

    bus = ev.EventBus(sinks or [])
    if not worker or distributed.rank() == 0:  # one set of events, metrics and progress for the whole run
        if progress:
            bus.add(ConsoleSink())
        bus.add(ev.JsonlSink(run_dir / "events.jsonl"))
        bus.add(ev.MetricsCsvSink(run_dir / "metrics.csv",
                                  resume_step=ckpt[0] if ckpt else (0 if resume else None)))
    if resume and not ckpt:
        bus.emit(ev.message(f"{run_dir} has no checkpoint yet: starting from step 0", level="warn"))
    try:
        return _train(cfg, run_dir, ckpt, bus, judge=judge, rollout=rollout, scorer=scorer)
    except (DataError, ConfigError, RunDirError) as e:
        bus.emit(ev.message(str(e), level="error"))
        raise
    except KeyboardInterrupt:
        bus.emit(ev.message("Aborted (second interrupt); the last saved checkpoint is intact", level="error"))
        raise
    except Exception as e:
        bus.emit(ev.message(f"Training failed: {type(e).__name__}: {e}", level="error"))
        raise
    finally:
        bus.close()


def disable_adapter_input_casts(model) -> bool:
    """Stop PEFT layers from copying their (bf16) input to the adapter's fp32 dtype; under autocast the adapter
    matmuls then run in bf16 on the activation the base layer already holds. Returns whether any layer had it."""
    found = False
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            found = True
    return found


# --- the recipe ---------------------------------------------------------------------------------------------------
# Each step below is one function, in the order the run takes them. torch, transformers and peft are imported inside
# the steps on purpose: `slmtune --help`, `slmtune plan` and the API server start without loading them.


@dataclass
class Data:
    """The encoded training and validation sets, and the parsed examples behind them (DPO trains on those)."""

    train_set: list
    val_set: list
    train_examples: list
    val_examples: list

    @property
    def has_val(self) -> bool:
        return bool(self.val_set)


def _train(cfg: TrainConfig, run_dir: Path, ckpt, bus: ev.EventBus, judge=None, rollout=None,
           scorer: Scorer | None = None) -> TrainResult:
    """One training run in this process (a rank of a multi-process run included)."""
    model_dir = resolve(cfg.model.name, progress=lambda s: bus.emit(ev.message(s)))
    method, strategy = resolve_run(cfg, run_dir, ckpt, bus, model_dir)
    tokenizer = load_tokenizer(model_dir)
    data = setup_data(cfg, tokenizer, bus)  # before the weights: a bad file fails before any load
    judging = selection(cfg, data, scorer)
    total_steps = count_steps(cfg, data)
    arg_kw, early_args = trainer_settings(cfg, method, strategy, run_dir, model_dir, data)  # before the weights too
    model, peft_config = setup_model(cfg, method, model_dir, total_steps, bus)
    if strategy in ("ddp", "fsdp"):
        arg_kw |= distributed.trainer_args(cfg, strategy, run_dir, model)
    with tracking_env(cfg, run_dir):  # where train.report_to's trackers write (read by their callbacks)
        trainer = setup_trainer(cfg, model, peft_config, tokenizer, data, arg_kw, early_args,
                                judge=judge, rollout=rollout, bus=bus)
        callback = attach(trainer, cfg, method, strategy, run_dir, model, bus, judging, data.has_val)
        if scores_early_stopping(cfg, scorer):
            trainer.scorer = functools.partial(scorer, tokenizer=tokenizer)
        status, runtime = fit(trainer, callback, ckpt, data)
    if status == RunStatus.SUCCEEDED and cfg.train.keep == "best":
        keep_best(trainer, callback, run_dir, bus)
    artifact = save(trainer, method, strategy, run_dir, tokenizer) if status == RunStatus.SUCCEEDED else None
    result = finish(cfg, trainer, callback, run_dir, status, runtime, artifact, strategy, bus)
    if strategy == "none" and cfg.train.objective == "sft":  # GRPO's steps are mostly sampling, DPO's two passes
        remember_speed(cfg, method, model_dir, data, callback, bus)
    return result


def resolve_run(cfg: TrainConfig, run_dir: Path, ckpt, bus: ev.EventBus, model_dir: Path):
    """The method and the distributed strategy; "auto" precision and strategy resolved and written to
    config.yaml (rank 0)."""
    method = get(cfg.method.name)
    strategy = distributed.resolve_strategy(cfg)
    cfg.distributed.strategy = strategy
    asked = cfg.model.precision
    cfg.model.precision = distributed.resolve_precision(
        cfg, resolve_precision(asked, method.precisions, model_dir), strategy)
    if asked == "auto" and cfg.model.precision == "bf16" and not fast_bf16():
        bus.emit(ev.message(
            f"model.precision auto: bf16 base weights, as fp32 ones ({weights_mb(model_dir):,.0f} MB) would take more "
            f"than {FP32_WEIGHTS_SHARE:.0%} of the memory available ({available_memory_mb():,.0f} MB); this "
            "machine has no fast bf16, so steps are slower than in fp32 (model.precision: fp32 to insist)", "warn"))
    if distributed.rank() == 0:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())  # fully resolved: "auto" is written as what it chose
    if ckpt:
        bus.emit(ev.message(f"Resuming from {ckpt[1].relative_to(run_dir)} (step {ckpt[0]})", step=ckpt[0]))
    return method, strategy


def setup_data(cfg: TrainConfig, tokenizer, bus: ev.EventBus) -> Data:
    """Encode the training source(s) (and validation) through the chat template, with its loss mask; or hold out a
    seeded share of the training examples."""
    d = cfg.data
    if cfg.train.objective == "grpo":
        return _setup_prompts(cfg, bus)
    read = dict(columns=d.columns or None, strict=d.strict)
    sources = [(d.train, 1.0)] if d.train else [(m.path, m.weight) for m in d.mix]
    reports = [load_encoded(path, tokenizer, d.max_seq_length, d.truncate, **read) for path, _ in sources]
    train_set = mix_sources([(r.encoded, w) for r, (_, w) in zip(reports, sources)], cfg.train.seed)
    val_set = []
    if d.validation:
        reports.append(load_encoded(d.validation, tokenizer, d.max_seq_length, d.truncate, **read))
        val_set = reports[-1].encoded
    elif d.validation_split:
        train_set, val_set = holdout_split(train_set, d.validation_split, cfg.train.seed)
    if len(train_set) < 1:
        raise DataError([Problem(sources[0][0], 1, "(file)", "no training examples")])
    train_examples, val_examples = _examples_for_objective(cfg, reports, train_set, val_set)
    for rep in reports:
        for note in rep.notes():
            bus.emit(ev.message(note, level="warn"))
    truncated = sum(r.n_truncated for r in reports[:len(sources)])
    if truncated:
        dropped = sum(r.n_dropped for r in reports[:len(sources)])
        bus.emit(ev.message(f"{truncated} training example(s) truncated to {d.max_seq_length} tokens"
                            + (f"; {dropped} of them left out, no trained token was left" if dropped else ""),
                            level="warn"))
    if d.mix:
        bus.emit(ev.message("Data mix: " + ", ".join(f"{p} ×{w:g} ({len(r.encoded)} → {_weighted(len(r.encoded), w)})"
                                                   for (p, w), r in zip(sources, reports))))
    n_tok = sum(e.n_tokens for e in train_set)
    bus.emit(ev.message(
        f"Data: {len(train_set)} training examples ({n_tok} tokens), {len(val_set)} validation examples",
        train_examples=len(train_set), train_tokens=n_tok, validation_examples=len(val_set),
    ))
    return Data(train_set, val_set, train_examples, val_examples)


def _setup_prompts(cfg: TrainConfig, bus: ev.EventBus) -> Data:
    """train.objective grpo: prompt records (data.prompts), each checked against the grader's templates."""
    d = cfg.data
    if d.mix:
        raise ConfigError(["data.mix: not supported with train.objective grpo; give data.train"])
    grader = grpo.load_grader(cfg.rl.grader) if cfg.rl.grader else None
    train, problems = read_graded_prompts(d.train, grader)
    val, bad_val = read_graded_prompts(d.validation, grader) if d.validation else ([], [])
    problems += bad_val
    if problems:
        raise DataError(problems)
    if not d.validation and d.validation_split:
        train, val = holdout_split(train, d.validation_split, cfg.train.seed)
    bus.emit(ev.message(f"Data: {len(train)} training prompts, {len(val)} validation prompts; "
                        f"{cfg.rl.group_size} completions each", train_examples=len(train),
                        validation_examples=len(val)))
    return Data(train, val, train, val)


def _weighted(n: int, weight: float) -> int:
    return int(weight) * n + round((weight - int(weight)) * n)


def mix_sources(parts: list[tuple[list, float]], seed: int) -> list:
    """Examples of several sources, each counted ``weight`` times: whole copies for the integer part, a seeded
    sample (without repeats) for the fraction. One source of weight 1 is returned as it is."""
    if len(parts) == 1 and parts[0][1] == 1.0:
        return list(parts[0][0])
    rng = random.Random(seed)
    out = []
    for items, weight in parts:
        out += list(items) * int(weight)
        out += rng.sample(list(items), round((weight - int(weight)) * len(items)))
    return out


def count_steps(cfg: TrainConfig, data: Data) -> int:
    t = cfg.train
    steps_per_epoch = math.ceil(math.ceil(len(data.train_set) / t.batch_size) / t.grad_accum)
    return t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@contextlib.contextmanager
def tracking_env(cfg: TrainConfig, run_dir: Path):
    """Where the trackers of ``train.report_to`` write, unless the user's environment already says: TensorBoard
    event files in RUN/tensorboard, an MLflow store in RUN/mlruns (experiment "slmtune", the run named after the
    run directory). The Trainer's integrations read these from the environment; they are set for this run only."""
    want = {}
    if "tensorboard" in cfg.train.report_to:
        want["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "mlflow" in cfg.train.report_to:
        want["MLFLOW_TRACKING_URI"] = f"sqlite:///{(run_dir / 'mlruns.db').resolve()}"
        want["MLFLOW_EXPERIMENT_NAME"] = "slmtune"
    added = [k for k in want if k not in os.environ]
    os.environ.update({k: want[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def trainer_settings(cfg: TrainConfig, method, strategy: str, run_dir: Path, model_dir: Path, data: Data):
    """The Trainer's arguments, and under ZeRO the TrainingArguments themselves: DeepSpeed's config must exist
    before the weights load (ZeRO-3 then loads each process's partition only)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    arg_kw = dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=1,
        eval_strategy=("steps" if t.eval_every else "epoch") if data.has_val else "no",
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "epoch",
        save_steps=t.save_every or 500,
        save_total_limit=None,  # rotation is ours (checkpoints are renamed to step-N)
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        prediction_loss_only=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        report_to=list(t.report_to),
        run_name=run_dir.name,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.model.precision == "bf16-mixed",
        gradient_checkpointing=t.gradient_checkpointing and not method.quantized,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
    )
    training_args = None
    if strategy.startswith("zero"):
        arg_kw |= distributed.deepspeed_args(cfg, strategy, run_dir, model_dir)
        distributed.skip_shared_memory_allreduce()  # before DeepSpeed's engine starts its communication backend
        # made before from_pretrained and kept alive: transformers then loads the weights under deepspeed.zero.Init
        # for ZeRO-3, each process materialising only its own partition (not the whole model first)
        training_args = TrainingArguments(**arg_kw) if t.objective == "sft" else None
        if training_args is not None and strategy == "zero3":
            import deepspeed

            # join the process group now: zero.Init sizes the partitions by DeepSpeed's world size
            _ = training_args.device  # a property: reading it sets up accelerate's state
            deepspeed.init_distributed(dist_backend=distributed.backend())
    return arg_kw, training_args


def setup_model(cfg: TrainConfig, method, model_dir: Path, total_steps: int, bus: ev.EventBus):
    """The base model (quantized for qlora), made trainable by the method (a PEFT adapter, or every weight)."""
    from transformers import set_seed

    t0 = time.perf_counter()
    model = load_base_model(model_dir, cfg.model.precision,
                            quantize_bits=cfg.method.bits if method.quantized else None)
    model.config.use_cache = False
    if cfg.model.attention == "auto" and next(model.parameters()).device.type == "cpu":
        use_train_attention(model)
    ctx = BuildContext(linear_names=linear_names(model), total_steps=total_steps)
    set_seed(cfg.train.seed)  # before wrapping: adapter init must be the same on every run and rank
    try:
        peft_config = method.build(cfg.method, ctx)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    if method.quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    # under ZeRO-3 a parameter holds only this process's partition; ds_numel is its whole size
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    bus.emit(ev.message(
        f"Model {cfg.model.name} ({total / 1e6:.1f}M params, {cfg.model.precision}) with {method.name}: "
        f"{trainable:,} trainable parameters ({100 * trainable / total:.2f}%), "
        f"loaded in {time.perf_counter() - t0:.1f}s",
        trainable_params=trainable, total_params=total,
    ))
    return model, peft_config


def setup_trainer(cfg: TrainConfig, model, peft_config, tokenizer, data: Data, arg_kw: dict, early_args, *,
                  judge=None, rollout=None, bus: ev.EventBus | None = None):
    """The one place the objectives differ: TRL's preference trainers (dpo, orpo, simpo, kto), TRL's GRPOTrainer on
    prompt records, or our SLMTrainer."""
    from transformers import TrainingArguments

    if cfg.train.objective == "grpo":
        return grpo.build_grpo_trainer(cfg, model, tokenizer, data.train_examples, data.val_examples, arg_kw,
                                       judge=judge, rollout=rollout, bus=bus)
    objective = cfg.train.objective
    if objective != "sft":
        if peft_config is None and objective not in REFERENCE_FREE:
            raise ConfigError([f"train.objective: {objective} needs an adapter method (its reference model is the "
                               f"base with the adapter off); method 'full' is not supported with {objective} yet "
                               f"(orpo and simpo need no reference and work with it)"])
        return build_preference_trainer(cfg, model, tokenizer, data.train_examples, data.val_examples, arg_kw)
    return SLMTrainer(
        model=model,
        args=early_args or TrainingArguments(**arg_kw),
        train_dataset=SFTDataset(data.train_set),
        eval_dataset=SFTDataset(data.val_set) if data.has_val else None,
        data_collator=PackCollator() if cfg.data.packing else PadCollator(tokenizer.pad_token_id),
    )


def selection(cfg: TrainConfig, data: Data, scorer: Scorer | None = None) -> Selection | None:
    """What judges the evaluations (train.early_stopping, train.keep: best), or None when nothing does. A metric
    the scorer measures is judged as valid_<metric>, in the scorer's direction."""
    t = cfg.train
    if t.early_stopping is None and t.keep == "last":
        return None
    what = "train.early_stopping" if t.early_stopping is not None else "train.keep: best"
    if not data.has_val:
        raise ConfigError([f"{what} judges validation: give data.validation or data.validation_split"])
    stop = t.early_stopping
    if stop is None:  # keep: best alone judges by the objective's own validation figure
        return Selection("valid_reward_mean" if t.objective == "grpo" else "valid_loss")
    if why := stop.unmeasured(t.objective, scorer.metrics if scorer is not None else ()):
        raise ConfigError([f"train.early_stopping.metric: {why}"])
    if scores_early_stopping(cfg, scorer):
        return Selection("valid_" + stop.metric, stop.patience, stop.min_delta, lower=stop.metric in scorer.lower)
    return Selection(stop.metric, stop.patience, stop.min_delta)


def keep_best(trainer, callback, run_dir: Path, bus: ev.EventBus) -> None:
    """train.keep: best — the best evaluation's weights become the run's artifact (loaded from its checkpoint by the
    Trainer's own loader, which knows PEFT, DeepSpeed and FSDP checkpoints)."""
    sel = callback.selection
    step = trainer.state.global_step
    if sel is None or sel.best_step is None:
        bus.emit(ev.message("train.keep: best, but no evaluation was judged: keeping the last step", level="warn"))
        return
    path = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{sel.best_step}"
    if sel.best_step != step:
        if not path.exists():
            bus.emit(ev.message(f"train.keep: best, but {path.relative_to(run_dir)} is gone: keeping the last step",
                                level="warn"))
            return
        trainer.state.best_model_checkpoint = str(path)
        trainer._load_best_model()
    callback.kept_step = sel.best_step
    bus.emit(ev.message(f"Keeping the best evaluation: step {sel.best_step} ({sel.metric} {sel.best_value:.4f}); "
                        f"the last step was {step}", step=step, kind="kept", best_step=sel.best_step,
                        metric=sel.metric, best_value=sel.best_value))


def attach(trainer, cfg: TrainConfig, method, strategy: str, run_dir: Path, model, bus: ev.EventBus,
           judging: Selection | None = None, has_val: bool = False):
    """The CPU fast paths (bf16 adapter matmuls, the fused head + loss) where they apply, and the callbacks:
    events, checkpoints as step-N, Ctrl-C; AdaLoRA's rank budget. Returns the event callback."""
    import torch
    from transformers import PrinterCallback

    if isinstance(trainer, SLMTrainer):
        if cfg.model.adapter_autocast and cfg.model.precision == "bf16" and not method.quantized \
                and disable_adapter_input_casts(model):
            trainer.autocast_dtype = torch.bfloat16
        if cfg.train.fused_loss:
            # the fused loss calls the decoder directly, around the DDP/DeepSpeed/FSDP wrapper's forward
            reason = unsupported_reason(model) if strategy == "none" else f"multi-process training ({strategy})"
            trainer.fused_loss = reason is None
            if reason:
                bus.emit(ev.message(f"train.fused_loss: using the model's own loss ({reason})"))
    trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
    callback = EventCallback(bus, run_dir, cfg.train.save_total_limit, cfg.train.objective, judging, has_val)
    callback.trainer = trainer
    trainer.add_callback(callback)
    if method.after_optimizer_step is not None:
        trainer.add_callback(AfterOptimizerStep(method.after_optimizer_step))
    return callback


def fit(trainer, callback, ckpt, data: Data) -> tuple[str, float]:
    """Train (from the checkpoint when resuming); the last evaluation always reflects the final weights."""
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(ckpt[1]) if ckpt else None)
    runtime = time.perf_counter() - started
    status = RunStatus.INTERRUPTED if callback.interrupted else RunStatus.SUCCEEDED
    if data.has_val and status == RunStatus.SUCCEEDED and callback.last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
        callback.flush()
    return status, runtime


def remember_speed(cfg: TrainConfig, method, model_dir: Path, data: Data, callback, bus: ev.EventBus) -> None:
    """Log the FLOP rate this run reached on this machine, which the planner predicts this model's next runs from
    (training/speed.py). A failure here is the log's, not the run's: it is reported and the run stands."""
    lengths = [min(e.n_tokens, cfg.data.max_seq_length) for e in data.train_set]
    try:
        speed.remember(cfg, method, model_dir, sum(lengths) / max(1, len(lengths)), callback.step_rates)
    except (OSError, ValueError, RuntimeError) as e:
        bus.emit(ev.message(f"could not log this run's speed for the planner ({speed.log_path()}): {e}",
                            level="warn"))


def save(trainer, method, strategy: str, run_dir: Path, tokenizer) -> Path:
    """The artifact (adapter/ or model/) with the tokenizer beside it: the same chat template and EOS at serving."""
    artifact = run_dir / method.artifact
    if strategy == "none":
        trainer.model.save_pretrained(str(artifact))
    else:  # gathers sharded weights (ZeRO-3, FSDP) into one ordinary adapter/model, written by rank 0
        trainer.save_model(str(artifact))
    if distributed.rank() == 0:
        tokenizer.save_pretrained(str(artifact))
    return artifact


def finish(cfg: TrainConfig, trainer, callback, run_dir: Path, status: str, runtime: float, artifact: Path | None,
           strategy: str, bus: ev.EventBus) -> TrainResult:
    """The run's totals (summed over ranks), result.json (rank 0) and the closing message."""
    import torch

    if strategy != "none" and torch.distributed.is_initialized():  # the run's totals, not rank 0's share
        counts = torch.tensor([trainer.tokens_seen, trainer.trained_tokens, trainer.slots_seen], dtype=torch.float64)
        torch.distributed.all_reduce(counts)
        trainer.tokens_seen, trainer.trained_tokens, trainer.slots_seen = (int(x) for x in counts.tolist())
    state = trainer.state
    train_losses = [h["loss"] for h in state.log_history if "loss" in h and "eval_loss" not in h]
    ckpts = list_checkpoints(run_dir)
    kept_eval = callback.last_eval
    if callback.kept_step is not None:  # the artifact is the best evaluation's: its figures, from its own log entry
        kept_eval = next((v for h in state.log_history
                          if h.get("step") == callback.kept_step and (v := validation_metrics(h))), kept_eval)
    result = TrainResult(
        run_dir=str(run_dir),
        status=status,
        global_step=state.global_step,
        total_steps=state.max_steps,
        train_loss=train_losses[-1] if train_losses else None,
        valid_loss=kept_eval.get("valid_loss"),
        valid_mean_token_accuracy=kept_eval.get("valid_mean_token_accuracy"),
        train_reward_mean=next((h["reward"] for h in reversed(state.log_history) if "reward" in h), None),
        valid_reward_mean=kept_eval.get("valid_reward_mean"),
        valid_scored={k: v for k, v in kept_eval.items() if k.startswith("valid_") and k not in ENGINE_VALIDATION},
        best_step=callback.selection.best_step if callback.selection else None,
        kept_step=(callback.kept_step or state.global_step) if artifact else None,
        stopped_early=callback.stopped_early,
        trained_tokens=trainer.trained_tokens,
        tokens_per_second=round(trainer.tokens_seen / runtime, 2) if runtime else 0.0,
        padding_fraction=round(1 - trainer.tokens_seen / trainer.slots_seen, 4) if trainer.slots_seen else 0.0,
        train_runtime_s=round(runtime, 2),
        artifact=str(artifact) if artifact else None,
        last_checkpoint=str(ckpts[-1][1]) if ckpts else None,
        history=list(state.log_history),
    )
    if distributed.rank() == 0:
        (run_dir / RESULT_FILE).write_text(result.to_json())
    if status == RunStatus.INTERRUPTED:
        bus.emit(ev.message(
            f"Stopped at step {state.global_step}; resume with: slmtune train --resume {run_dir}",
            level="warn", step=state.global_step,
        ))
    else:
        bus.emit(ev.message(
            f"The job has successfully completed: {artifact}", step=state.global_step, artifact=str(artifact),
            trained_tokens=trainer.trained_tokens, kind="done",
        ))
    return result
