"""Preference objectives on top of any adapter method, through TRL's trainers: ``train.objective``

* ``dpo`` — DPOTrainer; the reference model is the base with the adapter switched off (TRL does this for a
  PeftModel), so DPO costs no second copy of the weights;
* ``orpo`` — ORPOTrainer: SFT loss on the preferred reply plus an odds-ratio term; no reference model at all;
* ``simpo`` — CPOTrainer with the SimPO loss (length-normalised rewards, a target margin ``train.simpo_gamma``);
  no reference model;
* ``kto`` — KTOTrainer on unpaired records (one reply, desirable or not) or preference records (each pair becomes
  one desirable and one undesirable example); the reference is the base with the adapter off, as for DPO.

``train.dpo_beta`` is each objective's beta (DPO and KTO: the pull toward the reference; ORPO: the weight of the
odds-ratio term; SimPO: the reward scale). Prompts with tools are rendered in the fallback's plain form.
"""

from __future__ import annotations

from slmtune.data.formats import Example
from slmtune.data.tools import plain_messages
from slmtune.training.trainer import TrainerMetricsMixin

REFERENCE_FREE = ("orpo", "simpo")  # objectives with no reference model: the full method works with them


def _prompt(e: Example) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in plain_messages(e.messages, e.tools)]


def preference_dataset(examples: list[Example]):
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for e in examples:
        rows["prompt"].append(_prompt(e))
        rows["chosen"].append([{"role": "assistant", "content": e.chosen}])
        rows["rejected"].append([{"role": "assistant", "content": e.rejected}])
    return Dataset.from_dict(rows)


def unpaired_dataset(examples: list[Example]):
    """KTO's rows: unpaired records as they are, each preference record as a desirable and an undesirable row."""
    from datasets import Dataset

    rows = {"prompt": [], "completion": [], "label": []}

    def add(e, reply, label):
        rows["prompt"].append(_prompt(e))
        rows["completion"].append([{"role": "assistant", "content": reply}])
        rows["label"].append(label)

    for e in examples:
        if e.kind == "unpaired":
            add(e, e.completion, e.label)
        else:
            add(e, e.chosen, True)
            add(e, e.rejected, False)
    return Dataset.from_dict(rows)


def build_preference_trainer(cfg, model, tokenizer, train: list[Example], val: list[Example], args_kwargs: dict):
    """The objective's TRL trainer with the same arguments the SFT path uses, plus beta and the length limit."""
    objective = cfg.train.objective
    kw = {k: v for k, v in args_kwargs.items()
          if k not in ("prediction_loss_only", "train_sampling_strategy", "remove_unused_columns")}
    common = dict(beta=cfg.train.dpo_beta, max_length=cfg.data.max_seq_length, remove_unused_columns=False)
    dataset = preference_dataset
    if objective == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Base

        extra = dict(dataset_num_proc=None, precompute_ref_log_probs=False)
    elif objective == "kto":
        from trl import KTOConfig as Config
        from trl import KTOTrainer as Base

        extra = dict(dataset_num_proc=None, precompute_ref_log_probs=False)
        dataset = unpaired_dataset
    elif objective == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Base

        extra = dict(dataset_num_proc=None)
    else:  # simpo: CPO's trainer with the SimPO loss
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Base

        extra = dict(dataset_num_proc=None, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=cfg.train.simpo_gamma)

    class SLMPreferenceTrainer(TrainerMetricsMixin, Base):
        pass

    args = Config(**kw, **common, **extra)
    return SLMPreferenceTrainer(model=model, args=args, train_dataset=dataset(train),
                                eval_dataset=dataset(val) if val else None, processing_class=tokenizer)
