"""transformers ``Trainer`` with the few things a fine-tuning run needs on top of it.

* the loss through ``head_loss`` (fused head + cross-entropy at trained positions only) where the model allows;
* token accuracy (train and validation) and a token-weighted validation loss, computed from the predictions the
  loss pass makes anyway, logged under the OpenAI metric names;
* tokens/s counted from the batches actually trained (non-padding and loss-carrying tokens);
* events out: each step becomes one ``metrics`` event (validation merged into the step it ran at);
* checkpoints renamed to ``checkpoints/step-N`` (each a plain PEFT adapter plus optimizer state and the
  checkpoint's metrics under OpenAI's names in ``metrics.json``), each with a full validation, rotated (the best kept);
* the best evaluation and early stopping (``Selection``: ``train.early_stopping``, ``train.keep``);
* Ctrl-C: the first one saves a checkpoint at the end of the current step and stops; a second one aborts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Protocol

import torch
from transformers import Trainer, TrainerCallback

from slmtune import events as ev
from slmtune.artifacts import CHECKPOINT_PREFIX, list_checkpoints
from slmtune.data.tokenize import IGNORE_INDEX
from slmtune.training.head_loss import head_loss


class EpochLengthGroupedSampler(torch.utils.data.Sampler):
    """Length-grouped order that depends only on (seed, epoch).

    transformers' LengthGroupedSampler draws from the global RNG, so a run resumed mid-way would see another data
    order than the uninterrupted run; this one is reseeded each epoch (accelerate calls ``set_epoch``).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


SCORED_PREFIX = "eval_scored_"  # a Scorer's metrics in the Trainer's logs; valid_<name> in slmtune's events


class Scorer(Protocol):
    """Metrics scored on the validation set by generation, with the model as it is at an evaluation (a scenario
    run's: accuracy, entity F1, …). The engine calls it; the layers above build it (``scenarios.run``)."""

    metrics: tuple[str, ...]  # the names it returns
    lower: frozenset[str]  # those of them where lower is better

    def __call__(self, model, tokenizer) -> dict[str, float]: ...


def scores_early_stopping(cfg, scorer: Scorer | None) -> bool:
    """Whether train.early_stopping names one of the scorer's metrics: then the scorer runs at each evaluation (in
    one process) and the selection judges valid_<metric> in its direction."""
    stop = cfg.train.early_stopping
    return scorer is not None and stop is not None and stop.metric in scorer.metrics


class TrainerMetricsMixin:
    """Counters and metric names shared by the SFT trainer and the DPO trainer."""

    scorer = None  # (model) -> {name: value}: a Scorer bound to the run's tokenizer, called at each evaluation
    autocast_dtype = None  # set by the recipe (model.adapter_autocast): adapters compute in this dtype

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._acc = {"train": [0, 0], "eval": [0, 0]}  # correct, total
        self._eval_loss = [0.0, 0]  # sum of token losses, tokens
        self.tokens_seen = 0  # non-padding tokens trained on, this session
        self.trained_tokens = 0  # loss-carrying tokens, this session
        self.slots_seen = 0  # token slots in the batches, padding included

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if any(k.startswith("eval_") for k in logs):
            c, n = self._acc["eval"]
            if n:
                logs["eval_mean_token_accuracy"] = c / n
            s, n = self._eval_loss
            if n:
                logs["eval_loss"] = s / n  # token-weighted, not a mean of batch means
            self._acc["eval"] = [0, 0]
            self._eval_loss = [0.0, 0]
            if self.scorer is not None and "eval_loss" in logs:
                logs |= {SCORED_PREFIX + k: v for k, v in self._score().items()}
        elif "loss" in logs:
            c, n = self._acc["train"]
            if n:
                logs["mean_token_accuracy"] = c / n
            self._acc["train"] = [0, 0]
        super().log(logs, start_time)

    @torch.no_grad()
    def _score(self) -> dict[str, float]:
        """The scorer's metrics on the weights as they are now (eval mode, the training dtype; training resumes
        in the mode it was in)."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with self.compute_dtype():
                return self.scorer(model)
        finally:
            model.train(was_training)

    def compute_dtype(self):
        """The dtype the adapters compute in: autocast to ``autocast_dtype`` when the recipe set one."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.args.device.type, dtype=self.autocast_dtype)


class SLMTrainer(TrainerMetricsMixin, Trainer):
    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(ds, "lengths"):
            bs = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return EpochLengthGroupedSampler(ds.lengths, bs, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    fused_loss = False  # set by the recipe where head_loss.unsupported_reason(model) is None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.compute_dtype():
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_loss:
            loss, preds, labels = head_loss(model, inputs, num_items_in_batch)
            logits = outputs = None
        else:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            labels = inputs["labels"][:, 1:]
            # prompt-learning methods prepend virtual tokens: align on the last positions
            logits = outputs.logits[:, -inputs["labels"].shape[1]:][:, :-1]
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            mask = labels != IGNORE_INDEX
            n = int(mask.sum())
            if logits is not None:
                preds = logits.argmax(-1)
            correct = int(((preds == labels) & mask).sum())
            self._acc[mode][0] += correct
            self._acc[mode][1] += n
            if mode == "train":
                mask_in = inputs.get("attention_mask")
                self.tokens_seen += int(mask_in.sum()) if mask_in is not None else inputs["input_ids"].numel()
                self.slots_seen += inputs["input_ids"].numel()
                self.trained_tokens += n
            else:
                self._eval_loss[0] += float(loss) * n
                self._eval_loss[1] += n
        if outputs is None and return_outputs:
            from transformers.modeling_outputs import CausalLMOutputWithPast

            outputs = CausalLMOutputWithPast(loss=loss)
        return (loss, outputs) if return_outputs else loss


class AfterOptimizerStep(TrainerCallback):
    """A method's ``after_optimizer_step`` hook (``Method.after_optimizer_step``: AdaLoRA's rank budget), called with
    the PEFT model (unwrapped from DDP/DeepSpeed) after each optimizer step, before gradients are zeroed."""

    def __init__(self, hook):
        self.hook = hook

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        peft_model = model
        while peft_model is not None and not hasattr(peft_model, "base_model"):
            peft_model = getattr(peft_model, "module", None)
        if peft_model is not None:
            self.hook(peft_model, state.global_step)


CHECKPOINT_METRICS = ("step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                      "full_valid_loss", "full_valid_mean_token_accuracy")  # OpenAI's checkpoint metrics
REWARD_METRICS = ("train_reward_mean", "train_reward_std", "valid_reward_mean", "valid_reward_std")
LOWER_IS_BETTER = {"valid_loss"}
# the engine's own validation metrics; a Scorer adds others (valid_accuracy, …)
ENGINE_VALIDATION = {"valid_loss", "valid_mean_token_accuracy", "valid_reward_mean", "valid_reward_std"}


class Selection:
    """Which evaluation is the best so far by one validation metric, and whether training should stop: ``patience``
    evaluations in a row that do not beat the best by more than ``min_delta`` (``patience`` None: never stop).

    Hand-written rather than transformers' ``EarlyStoppingCallback`` + ``load_best_model_at_end``: those need the
    save and evaluation schedules to coincide and track the Trainer's own ``checkpoint-N`` paths, which slmtune
    renames; here every improvement is checkpointed when it happens and kept through rotation."""

    def __init__(self, metric: str, patience: int | None = None, min_delta: float = 0.0, lower: bool | None = None):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.lower = metric in LOWER_IS_BETTER if lower is None else lower
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.bad = 0  # evaluations since the best

    def judge(self, step: int, value: float | None) -> bool:
        """Count one evaluation; True when it is the new best."""
        if value is None:
            return False
        if self.best_value is None or (value < self.best_value - self.min_delta if self.lower
                                       else value > self.best_value + self.min_delta):
            self.best_step, self.best_value, self.bad = step, value, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def replay(self, log_history: list[dict]) -> None:
        """Rebuild the state from a resumed run's evaluations (the Trainer's log history)."""
        for entry in log_history:
            valid = validation_metrics(entry)
            if valid:
                self.judge(entry.get("step", 0), valid.get(self.metric))


def validation_metrics(logs: dict) -> dict:
    """An evaluation's Trainer logs under slmtune's (OpenAI's) names; empty for a training log."""
    if "eval_reward" in logs:  # GRPO: its eval loss is a policy loss, not a validation loss
        return {"valid_reward_mean": logs["eval_reward"], "valid_reward_std": logs.get("eval_reward_std")}
    if "eval_loss" in logs:
        return {"valid_loss": logs["eval_loss"], "valid_mean_token_accuracy": logs.get("eval_mean_token_accuracy"),
                **scored_metrics(logs)}
    return {}


def scored_metrics(logs: dict) -> dict:
    """A Scorer's metrics in an evaluation's logs, as valid_<name>."""
    return {"valid_" + k.removeprefix(SCORED_PREFIX): v for k, v in logs.items() if k.startswith(SCORED_PREFIX)}


class EventCallback(TrainerCallback):
    """Turns Trainer callbacks into slmtune events, checkpoints into ``step-N`` folders, and handles Ctrl-C."""

    def __init__(self, bus: ev.EventBus, run_dir: Path, save_total_limit: int, objective: str = "sft",
                 selection: Selection | None = None, has_val: bool = False):
        self.bus = bus
        self.selection = selection
        self.has_val = has_val
        self.training = False
        self.stopped_early = False
        self.kept_step: int | None = None  # train.keep: best — the step whose weights the artifact holds
        self.flushed: dict = {}  # the metrics of the last step flushed (for its checkpoint)
        self.objective = objective
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.save_total_limit = save_total_limit
        self.trainer: SLMTrainer | None = None
        self.pending: dict | None = None
        self.interrupted = False
        self._last_t = None
        self._last_tokens = 0
        self._last_trained = 0
        self.step_rates: list[float] = []  # tokens/s of each logged step (training/speed.py keeps the steady one)
        self._old_handler = None
        self.last_eval: dict = {}

    # --- Ctrl-C -------------------------------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self.interrupted:  # second Ctrl-C: give up at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        # Only a flag here: the handler runs between two bytecodes of the main thread, which may be inside a sink
        # holding its lock (the service's database sink), so emitting from here could deadlock. The message goes out
        # from the next step's callback.
        self.interrupted = True

    def on_train_begin(self, args, state, control, **kw):
        try:
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not in the main thread (e.g. a service worker thread): no signal handling
            self._old_handler = None
        self._last_t = time.perf_counter()
        self.training = True
        if self.selection is not None and state.global_step:  # resumed: the evaluations so far count
            self.selection.replay(state.log_history)
        self.bus.emit(ev.message(
            f"Training for {state.max_steps} steps", total_steps=state.max_steps, step=state.global_step,
        ))

    def on_step_begin(self, args, state, control, **kw):
        self.flush()

    def on_step_end(self, args, state, control, **kw):
        if self.interrupted:
            if not control.should_training_stop:
                self.bus.emit(ev.message("Interrupt received: saving a checkpoint after this step (Ctrl-C again "
                                         "to abort)", level="warn"))
            control.should_save = True
            control.should_training_stop = True
        self._validate_checkpoint(state, control)

    def on_epoch_end(self, args, state, control, **kw):
        self._validate_checkpoint(state, control)

    def _validate_checkpoint(self, state, control) -> None:
        """Every checkpoint gets a full validation (OpenAI's full_valid_loss), unless it is saved on Ctrl-C or this
        step was evaluated already (an evaluation step that is also an epoch's end)."""
        if self.has_val and control.should_save and not control.should_evaluate and not self.interrupted \
                and self.last_eval.get("step") != state.global_step:
            control.should_evaluate = True

    # --- metrics --------------------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        t = self.trainer
        if "loss" in logs:
            now = time.perf_counter()
            dt = max(now - self._last_t, 1e-9)
            # every rank trains as much as rank 0 (the same batch size): the run's rate is world_size × rank 0's
            seen = t.tokens_seen or int(logs.get("num_tokens", 0))  # GRPO counts its prompt + completion tokens
            tps = (seen - self._last_tokens) / dt * args.world_size
            trained_tps = (t.trained_tokens - self._last_trained) / dt * args.world_size
            self._last_t, self._last_tokens, self._last_trained = now, seen, t.trained_tokens
            self.step_rates.append(tps)
            self.flush()
            # preference trainers log rewards/chosen … (as <objective>_reward_chosen: dpo_reward_margins, …); GRPO
            # logs reward, reward_std and rewards/<grader>/mean
            dpo = {k.replace("rewards/", f"{self.objective}_reward_"): v for k, v in logs.items()
                   if k.startswith("rewards/") and k.count("/") == 1}
            rl = {}
            if "reward" in logs:
                rl = {"train_reward_mean": logs["reward"], "train_reward_std": logs.get("reward_std"),
                      "train_completion_length": logs.get("completions/mean_length"), "kl": logs.get("kl")}
                grader = getattr(t, "grader_reward", None)
                if grader is not None and grader.recent:
                    rl["samples"] = grader.recent
                    rl["grader_errors"] = grader.failed
            self.pending = {
                **dpo,
                **{k: v for k, v in rl.items() if v is not None},
                "step": state.global_step,
                "total_steps": state.max_steps,
                "epoch": round(state.epoch or 0.0, 4),
                "train_loss": logs["loss"],
                "train_mean_token_accuracy": logs.get("mean_token_accuracy"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_per_second": round(tps, 2),
                "trained_tokens_per_second": round(trained_tps, 2),
            }
        elif valid := validation_metrics(logs):
            self.last_eval = {"step": state.global_step, **valid}
            if self.pending is not None and self.pending["step"] == state.global_step:
                self.pending.update(valid)
            else:  # evaluation outside a logged step (e.g. the final one): its own event
                self.flush()
                self.pending = {"step": state.global_step, "total_steps": state.max_steps, **valid}
            # flushed by on_evaluate, which follows: it knows whether this step is checkpointed

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        valid = self.last_eval if self.last_eval.get("step") == state.global_step else {}
        sel = self.selection
        stop = False
        if sel is not None and valid and self.training and state.global_step > 0:
            if sel.judge(state.global_step, valid.get(sel.metric)):
                control.should_save = True  # the best so far is checkpointed, so it can be kept
            elif sel.should_stop and not control.should_training_stop:
                control.should_training_stop = stop = self.stopped_early = True
        if valid and self.pending is not None and control.should_save and self.training \
                and "valid_loss" in valid:
            self.pending.update(full_valid_loss=valid["valid_loss"],
                                full_valid_mean_token_accuracy=valid.get("valid_mean_token_accuracy"))
        self.flush()
        if stop:
            self.bus.emit(ev.message(
                f"Early stopping at step {state.global_step}: {sel.metric} has not improved on "
                f"{sel.best_value:.4f} (step {sel.best_step}) by more than {sel.min_delta:g} for {sel.bad} "
                f"evaluations", step=state.global_step, kind="early_stop", metric=sel.metric,
                best_step=sel.best_step, best_value=sel.best_value))
        self._last_t = time.perf_counter()  # evaluation time is not training time

    def flush(self):
        if self.pending is None:
            return
        d = self.pending
        self.pending = None
        self.flushed = {**self.flushed, **d} if self.flushed.get("step") == d["step"] else dict(d)
        parts = [f"Step {d['step']}/{d['total_steps']}"]
        if d.get("train_loss") is not None:
            parts.append(f"training loss={d['train_loss']:.4f}")
        if d.get("valid_loss") is not None:
            parts.append(f"validation loss={d['valid_loss']:.4f}")
        if d.get("train_reward_mean") is not None:
            parts.append(f"reward={d['train_reward_mean']:.4f}")
        if d.get("valid_reward_mean") is not None:
            parts.append(f"validation reward={d['valid_reward_mean']:.4f}")
        judged = self.selection.metric if self.selection is not None else None
        if judged not in ENGINE_VALIDATION and d.get(judged) is not None:  # a scored metric early stopping judges
            parts.append(f"validation {judged.removeprefix('valid_')}={d[judged]:.4f}")
        self.bus.emit(ev.metrics(": ".join([parts[0], ", ".join(parts[1:])]), **d))

    # --- checkpoints ---------------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kw):
        self.flush()
        src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        dst = self.ckpt_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
        multi = args.world_size > 1 and torch.distributed.is_initialized()
        if multi:
            torch.distributed.barrier()  # every rank has written its shard of the checkpoint
        metrics = {"step": state.global_step}
        if self.flushed.get("step") == state.global_step:
            metrics = {k: self.flushed.get(k) for k in CHECKPOINT_METRICS} | metrics
            if metrics["full_valid_loss"] is None:  # evaluated (on the whole set) before the save was decided
                metrics["full_valid_loss"] = metrics["valid_loss"]
                metrics["full_valid_mean_token_accuracy"] = metrics["valid_mean_token_accuracy"]
            metrics |= {k: self.flushed[k] for k in REWARD_METRICS if self.flushed.get(k) is not None}  # GRPO
            metrics |= {k: v for k, v in self.flushed.items()  # a scenario's scored metrics (valid_accuracy, …)
                        if k.startswith("valid_") and k not in metrics and v is not None}
        if state.is_world_process_zero:
            if src.exists():
                if dst.exists():
                    shutil.rmtree(dst)
                src.rename(dst)
                (dst / "metrics.json").write_text(json.dumps(metrics))
            self._rotate()
        if multi:
            torch.distributed.barrier()  # nobody writes into a folder being renamed
        self.bus.emit(ev.message(
            f"Checkpoint saved: {dst.relative_to(self.run_dir)}", step=state.global_step, checkpoint=str(dst),
            kind="checkpoint", metrics=metrics,
        ))

    def _rotate(self):
        """Keep the newest ``save_total_limit`` checkpoints, and the best evaluation's wherever it is."""
        best = self.selection.best_step if self.selection is not None else None
        ckpts = list_checkpoints(self.run_dir)
        others = [(step, path) for step, path in ckpts if step != best]
        room = max(1, self.save_total_limit - (len(others) < len(ckpts)))  # the best takes one place when present
        for _, path in others[: max(0, len(others) - room)]:
            shutil.rmtree(path, ignore_errors=True)

    def on_train_end(self, args, state, control, **kw):
        self.flush()
        self.training = False
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            self._old_handler = None
