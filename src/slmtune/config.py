"""One configuration schema for every entry point.

YAML files, ``--set section.key=value`` flags, CLI shortcuts (``--model``, ``--data`` ...), the Python API and
the service's job body (``service.jobs.train_config``) all map into :class:`TrainConfig`. Unknown keys are
rejected by name, and every problem is collected and reported at once (``method.r: Input should be greater
than 0``) before anything is loaded.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmtune.methods import METHODS, option_defaults
from slmtune.methods import names as method_names  # methods never import config at run time (types only)


class ConfigError(ValueError):
    """A configuration problem; ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Base model: a registry id (see `slmtune models list`) or a local Hugging Face folder.",
    )
    precision: Literal["auto", "fp32", "bf16", "bf16-mixed"] = Field(
        "auto",
        description="'bf16': frozen base weights stored in bf16, trainable weights and optimizer state fp32; "
        "'bf16-mixed': fp32 weights with bf16 autocast; 'fp32'. 'auto': bf16 where the hardware has fast bf16 "
        "matmuls (AMX/AVX512-BF16 CPUs, recent GPUs) and the method supports it, else fp32 — unless, on a CPU, "
        "the fp32 weights would take more than half the memory available (then bf16, with a warning).",
    )
    adapter_autocast: bool = Field(
        True, description="With precision 'bf16': run the adapters' matmuls in bf16 on the bf16 activations "
        "(autocast; adapter weights, gradients' accumulation and optimizer stay fp32) instead of keeping an fp32 "
        "copy of every adapted layer's input: faster and much less memory (docs/benchmarks.md). LoRA-family and "
        "LyCORIS methods; not QLoRA.",
    )
    attention: Literal["auto", "sdpa"] = Field(
        "auto", description="'auto': on CPU, attention over batches of up to 256 tokens as two matmuls (its "
        "backward is 4 more), longer ones and GPUs on PyTorch's SDPA kernels; 'sdpa': always SDPA "
        "(docs/benchmarks.md).",
    )


class MixSource(_Section):
    path: str = Field(description="A data source (as data.train).")
    weight: float = Field(1.0, gt=0, description="How many times each of its examples counts: 2 = twice, 0.5 = a "
                          "seeded half.")

    @field_validator("path")
    @classmethod
    def _home(cls, v: str) -> str:
        return os.path.expanduser(v)


class DataSection(_Section):
    train: str | None = Field(None, description="Training data: JSONL (OpenAI chat, prompt/completion, preference, "
                              "Alpaca, ShareGPT), a JSON array, Parquet, CSV/TSV, a `save_to_disk` folder or a "
                              "folder of such files.")
    validation: str | None = Field(None, description="Validation data in the same format (optional).")
    validation_split: float = Field(
        0.0, ge=0.0, lt=0.5, description="Hold out this fraction of `train` for validation when no file is given."
    )
    max_seq_length: int = Field(1024, gt=8, description="Tokens per example after the chat template.")
    truncate: bool = Field(
        False, description="Truncate over-long examples instead of rejecting them before training."
    )
    packing: bool = Field(
        False, description="Pack each batch into one padding-free row (per-example position ids, no attention "
        "across examples). Not for prompt/prefix/p-tuning."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename a source's fields to the format's names first, e.g. "
        "`{question: instruction, answer: output}`."
    )
    mix: list[MixSource] = Field(
        default_factory=list, description="Several training sources with weights, `[{path, weight}]`, instead of "
        "data.train: each source's examples count `weight` times (0.5: a seeded half)."
    )
    strict: bool = Field(
        False, description="Keys a record has beyond its format's are errors (by default they are ignored, with "
        "one warning naming them and counting the records)."
    )

    @field_validator("train", "validation")
    @classmethod
    def _home(cls, v: str | None) -> str | None:
        return os.path.expanduser(v) if v else v  # ~/.slmtune/data/... in a YAML file means the home folder


class MethodSection(_Section):
    """Options of every method; each method reads only its own (see ``slmtune.methods``), others are errors."""

    name: str = Field("lora", description="Fine-tuning method: " + method_names() + ".")
    r: int = Field(16, gt=0, description="Adapter rank (adalora: target rank; vera: defaults to 256).")
    alpha: float = Field(32.0, gt=0, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the adapter input (0 by default: on CPU the dropout masks cost ~30% of a step).",
    )
    target_modules: list[str] | str = Field(
        "all-linear", description="Linear layer names to adapt, or 'all-linear' (every linear layer but the head)."
    )
    rslora: bool = Field(False, description="lora/dora/qlora: rank-stabilised scaling alpha / sqrt(r).")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="lora/dora/qlora: adapter initialisation."
    )
    bits: Literal[4, 8] = Field(4, description="qlora: base weights in 4-bit NF4 (double quantized) or 8-bit.")
    num_virtual_tokens: int = Field(20, gt=0, description="prompt_tuning/prefix_tuning/p_tuning: virtual tokens.")
    init_r: int | None = Field(None, gt=0, description="adalora: starting rank (default 1.5 × r).")
    feedforward_modules: list[str] | None = Field(
        None, description="ia3: which target modules are feed-forward (scaled on their input)."
    )

    @model_validator(mode="after")
    def _known_method_and_options(self) -> MethodSection:
        method = METHODS.get(self.name)
        if method is None:
            raise ValueError(f"name: unknown method {self.name!r}; choose one of {', '.join(sorted(METHODS))}")
        extra = sorted(self.model_fields_set - {"name", *method.options})
        if extra:
            allowed = ", ".join(method.options) or "none"
            raise ValueError(f"{extra[0]}: not an option of method {self.name!r}; its options: {allowed}")
        for key, value in option_defaults(self.name).items():
            if key not in self.model_fields_set:
                object.__setattr__(self, key, value)
        if self.name == "adalora" and self.init_r is None:
            object.__setattr__(self, "init_r", max(self.r, int(self.r * 1.5)))
        return self

    def relevant(self) -> dict:
        """The options this method reads (what config.yaml records)."""
        return {"name": self.name, **{k: getattr(self, k) for k in METHODS[self.name].options}}


class EarlyStopping(_Section):
    """train.early_stopping: stop when the validation metric stops improving (docs/usage.md#choosing-the-best-step)."""

    metric: str = Field(
        "valid_loss", pattern=r"^[a-z][a-z0-9_]*$", description="What each evaluation is judged by: valid_loss (lower "
        "is better; on the whole validation set, so OpenAI's full_valid_loss too), valid_mean_token_accuracy or, for "
        "grpo, valid_reward_mean (higher is better); in a scenario run also a metric the scenario scores by "
        "generation on the held-out records at each evaluation: accuracy or macro_f1 (classification), f1 (ner), "
        "chrf or bleu (translation), token_f1 or exact_match (qa), name_accuracy or call_accuracy (tools), …")
    patience: int = Field(3, ge=1, description="Evaluations in a row without improvement before training stops.")
    min_delta: float = Field(0.0, ge=0.0, description="An evaluation improves only when it beats the best so far "
                             "by more than this.")

    def unmeasured(self, objective: str, scored: tuple[str, ...] = ()) -> str | None:
        """Why this metric cannot judge ``objective``'s evaluations (GRPO's measure a reward, the others a loss and
        token accuracy, plus ``scored``: what a scenario run scores by generation), or None when it can."""
        reward = objective in ("grpo", "reinforcement")
        measured = ("valid_reward_mean",) if reward else ("valid_loss", "valid_mean_token_accuracy", *scored)
        if self.metric in measured:
            return None
        why = f"{self.metric} is not measured by objective {objective} (use {', '.join(measured)})"
        if not reward and not scored:
            why += "; a scenario run also scores its own metrics by generation, e.g. accuracy for classification"
        return why


class TrainSection(_Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(
        8, gt=0, description="Examples per forward/backward pass; an optimizer step sees batch_size × grad_accum."
    )
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps for linear warmup.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping (0 disables).")
    seed: int = Field(42, description="Seed for weights init, data order and dropout.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="Also log to these trackers through the Trainer's own integrations: "
        "tensorboard (event files in RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI, default a store in RUN/mlruns.db), "
        "wandb (its own settings; WANDB_MODE=offline works)."
    )
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: at the end of each epoch).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: at the end of each epoch).")
    save_total_limit: int = Field(3, ge=1, description="Checkpoints kept (oldest deleted first).")
    group_by_length: bool = Field(True, description="Batch examples of similar length (less padding).")
    objective: Literal["sft", "dpo", "orpo", "simpo", "kto", "grpo"] = Field(
        "sft", description="'sft': supervised on assistant turns; 'dpo': direct preference optimisation (TRL) on "
        "preference data, with any adapter method; 'orpo' and 'simpo': preference optimisation with no reference "
        "model (TRL's ORPO, and CPO with the SimPO loss); 'kto': KTO on unpaired good/bad replies or preference "
        "data; 'grpo': reinforcement from a grader's rewards (TRL's GRPO) on prompt records, the `rl` section says "
        "how (docs/rft.md)."
    )
    dpo_beta: float = Field(0.1, gt=0, le=10, description="The preference objective's beta: dpo and kto, the "
                            "strength of the pull toward the reference model; orpo, the weight of the odds-ratio "
                            "term; simpo, the reward scale (SimPO's paper uses 2 to 2.5).")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin between the preferred and "
                               "the other reply.")
    fused_loss: bool = Field(
        True, description="Compute the output head and cross-entropy together, only at positions followed by a "
        "trained token, in chunks, without full-vocabulary logits: the same loss, faster and less memory "
        "(docs/benchmarks.md). Falls back to the model's own loss where it cannot apply (prompt-learning methods, "
        "an adapted output head, unknown architectures)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% more time."
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when validation stops improving: `{metric, patience, min_delta}` (needs "
        "validation data). Each improvement is checkpointed, so the best step can be kept.")
    keep: Literal["last", "best"] = Field(
        "last", description="What the run's adapter (or model) is: the last step's weights, or the best "
        "evaluation's checkpoint by early_stopping.metric (valid_loss when early_stopping is not set).")


class RLSection(_Section):
    """train.objective grpo: how completions are sampled and rewarded (docs/rft.md)."""

    grader: dict[str, Any] | None = Field(
        None, description="The reward: an OpenAI grader (string_check, text_similarity, python, score_model, "
        "label_model, multi), as a job's method.reinforcement.grader holds it. Give this or rl.reward."
    )
    reward: str | None = Field(
        None, description="The reward as Python: 'module:function' (TRL's reward-function signature: prompts, "
        "completions and the records' fields as keyword lists → a list of floats). Runs in the training process: "
        "your own code on your own machine; the service never accepts it."
    )
    judges: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Judge models a score_model/label_model grader names that are adapters: "
        "name → {base: base model id, adapter: adapter folder} (a job fills it for its project's ft: models); any "
        "other judge name is a base model id or a model folder.")
    group_size: int = Field(4, ge=2, le=64, description="Completions sampled per prompt (GRPO's group); the "
                            "advantage of each is its reward against its group's mean.")
    max_completion_tokens: int = Field(128, ge=1, le=8192, description="Tokens a completion may run to.")
    rollout: Literal["engine", "trl"] = Field(
        "engine", description="What samples the completions: 'engine', slmtune's continuous-batching engine with "
        "the adapter as it is at each step (LoRA-family methods on one process; others fall back to 'trl'); 'trl', "
        "TRL's model.generate on the training model (docs/benchmarks.md compares them).")
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the completions.")
    kl_coef: float = Field(0.0, ge=0, description="Pull toward the starting model (KL penalty, GRPO's beta); 0 "
                           "skips the reference pass (TRL's default).")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO-style clipping of the probability ratio (epsilon).")
    loss: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="How token losses are averaged "
                                                              "(TRL's loss_type).")
    eval_samples: int = Field(0, ge=0, description="Validation prompts scored at each evaluation (0: all).")
    max_error_share: float = Field(0.5, ge=0, le=1, description="Stop the run when more than this share of the "
                                   "samples graded so far (at least 32) failed to grade (an exception, a timeout).")


class RunSection(_Section):
    output: str = Field("runs/latest", description="Run directory (created).")
    overwrite: bool = Field(False, description="Allow writing into a non-empty run directory without resume.")


class DistributedSection(_Section):
    strategy: Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"] = Field(
        "none", description="Multi-process data parallelism: 'ddp' (torch DDP), 'zero1'/'zero2'/'zero3' (DeepSpeed "
        "ZeRO: optimizer state / + gradients / + parameters sharded across processes), 'fsdp' (torch FSDP2). 'none' "
        "with nproc > 1 means ddp. Gloo on CPU, NCCL on GPUs (chosen by the device)."
    )
    nproc: int = Field(1, ge=1, description="Processes on this machine (`--nproc`); slmtune launches them itself.")
    offload: Literal["none", "optimizer", "params"] = Field(
        "none", description="DeepSpeed ZeRO-2/3: keep optimizer state ('optimizer') or also parameters ('params', "
        "ZeRO-3 and FSDP) in CPU memory."
    )
    nnodes: int = Field(1, ge=1, description="Machines taking part (run the same command on each, see "
                        "docs/distributed.md).")
    node_rank: int = Field(0, ge=0, description="This machine's index, 0..nnodes-1 (0 hosts the rendezvous).")
    master_addr: str = Field("127.0.0.1", description="Address of node 0, reachable from every node.")
    master_port: int = Field(29500, ge=1, le=65535, description="Free TCP port on node 0 for the rendezvous.")
    deepspeed: dict[str, Any] = Field(
        default_factory=dict, description="ZeRO strategies: DeepSpeed settings merged over the generated ones "
        "(nested keys, e.g. `--set distributed.deepspeed.zero_optimization.stage3_max_live_parameters=10000000`); the "
        "result is written to RUN/deepspeed.json."
    )


# The scenarios' names, here because the config (the bottom layer) checks them; each one's record format, prompts and
# metrics live in slmtune.scenarios (catalog.SCENARIOS, which is built over exactly these names).
ScenarioName = Literal["domain", "classification", "ner", "translation", "qa", "chat", "creative", "tools"]
SCENARIO_NAMES: tuple[str, ...] = get_args(ScenarioName)


class ScenarioSection(_Section):
    name: ScenarioName | None = Field(
        None, description="Train on a scenario's record format (docs/scenarios.md): data.train/validation hold its "
        "records, turned into chat turns by the scenario's prompt template. `scenario: NAME` is short for this."
    )
    eval: bool = Field(
        True, description="After training, measure the scenario's metric on the validation records for the base "
        "and the tuned model and write report.md with plots into the run directory."
    )
    eval_max_records: int = Field(200, ge=1, description="Evaluate on at most this many validation records.")


class TrainConfig(_Section):
    """Everything a training run needs. ``slmtune train --help`` and docs/usage.md describe each key."""

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    rl: RLSection = Field(default_factory=RLSection)
    run: RunSection = Field(default_factory=RunSection)
    scenario: ScenarioSection = Field(default_factory=ScenarioSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="before")
    @classmethod
    def _scenario_shorthand(cls, data):
        if isinstance(data, dict) and isinstance(data.get("scenario"), str):
            data = {**data, "scenario": {"name": data["scenario"]}}
        return data

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["method"] = self.method.relevant()
        return yaml.safe_dump(data, sort_keys=False)


def _format_errors(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            if ": " in msg:
                sub, msg = msg.split(": ", 1)
                path = f"{path}.{sub}" if path else sub
        problems.append(f"{path}: {msg}" if path else msg)
    return problems


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (``3`` → int, ``true`` → bool, ``[a, b]`` → list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a raw config dict, returning a new dict."""
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"{item}: expected section.key=value")
            continue
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                problems.append(f"{key}: {p} is not a section")
                break
            node = nxt
        else:
            node[parts[-1]] = _parse_value(value)
    if problems:
        raise ConfigError(problems, source="--set")
    return out


def build_config(raw: dict | None = None, overrides: list[str] | None = None, source: str | None = None) -> TrainConfig:
    """Validate a raw dict (plus overrides) into a TrainConfig, raising ConfigError listing every problem."""
    raw = apply_overrides(raw or {}, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err), source=source) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config file (optional) and apply overrides."""
    raw: dict = {}
    source = None
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError([f"cannot read: {e.strerror}"], source=source) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "?"
            raise ConfigError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"], source=source) from None
        if not isinstance(raw, dict):
            raise ConfigError(["top level must be a mapping of sections"], source=source)
    return build_config(raw, overrides, source=source)


def coerce_config(config: TrainConfig | dict | str | Path) -> TrainConfig:
    """Accept a TrainConfig, a raw dict or a YAML path (the Python API takes any of them)."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return build_config(config)
    return load_config(config)
