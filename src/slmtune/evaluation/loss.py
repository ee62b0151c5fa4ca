"""Eval loss and mean token accuracy on a data file, with the training mask (assistant tokens only)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from slmtune.data.tokenize import IGNORE_INDEX, PadCollator
from slmtune.data.validate import load_encoded


@torch.inference_mode()
def evaluate_encoded(model, tokenizer, encoded, batch_size: int = 8) -> dict:
    """Token-weighted loss and next-token accuracy over the loss-carrying tokens of ``encoded``."""
    collate = PadCollator(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tok, correct = 0.0, 0, 0
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].n_tokens)  # similar lengths batch together
    for start in range(0, len(order), batch_size):
        items = [encoded[i] for i in order[start:start + batch_size]]
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in items])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, -batch["input_ids"].shape[1]:][:, :-1].float()  # prompt tuning prepends virtual tokens
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total_loss += float(loss)
        total_tok += int(mask.sum())
        correct += int(((logits.argmax(-1) == labels) & mask).sum())
    if was_training:
        model.train()
    loss = total_loss / total_tok if total_tok else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if total_tok and loss < 50 else float("inf"),
        "mean_token_accuracy": correct / total_tok if total_tok else float("nan"),
        "tokens": total_tok,
        "examples": len(encoded),
    }


def evaluate_file(chat_model, path: str | Path, max_seq_length: int = 1024, batch_size: int = 8) -> dict:
    """Evaluate a loaded :class:`~slmtune.inference.generate.ChatModel` on a JSONL file."""
    report = load_encoded(path, chat_model.tokenizer, max_seq_length, truncate=True)
    return evaluate_encoded(chat_model.model, chat_model.tokenizer, report.encoded, batch_size)
