"""DPO as a training objective (``train.objective: dpo``) on top of any adapter method, through TRL's DPOTrainer.

The reference model is the base with the adapter switched off (TRL does this for a PeftModel), so DPO costs no
second copy of the weights. Data: preference records (``input.messages`` + preferred / non-preferred reply).
"""

from __future__ import annotations

from slmtune.data.formats import Example
from slmtune.data.tools import plain_messages
from slmtune.training.trainer import TrainerMetricsMixin


def preference_dataset(examples: list[Example]):
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for e in examples:
        # tools (input.tools) in the fallback's plain form (data.tools): TRL renders the prompt with the template
        rows["prompt"].append([{"role": m["role"], "content": m["content"]}
                               for m in plain_messages(e.messages, e.tools)])
        rows["chosen"].append([{"role": "assistant", "content": e.chosen}])
        rows["rejected"].append([{"role": "assistant", "content": e.rejected}])
    return Dataset.from_dict(rows)


def build_dpo_trainer(cfg, model, tokenizer, train: list[Example], val: list[Example], args_kwargs: dict):
    """A DPOTrainer with the same arguments the SFT path uses, plus beta and the length limit."""
    from trl import DPOConfig, DPOTrainer

    class SLMDPOTrainer(TrainerMetricsMixin, DPOTrainer):
        pass

    kw = {k: v for k, v in args_kwargs.items()
          if k not in ("prediction_loss_only", "train_sampling_strategy", "remove_unused_columns")}
    args = DPOConfig(**kw, beta=cfg.train.dpo_beta, max_length=cfg.data.max_seq_length, remove_unused_columns=False,
                     dataset_num_proc=None, precompute_ref_log_probs=False)
    return SLMDPOTrainer(model=model, args=args, train_dataset=preference_dataset(train),
                         eval_dataset=preference_dataset(val) if val else None, processing_class=tokenizer)
