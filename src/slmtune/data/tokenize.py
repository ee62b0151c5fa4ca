"""Turn examples into token ids and loss labels.

Chat examples are rendered with the model's own chat template (the one used again at serving time). The loss
covers exactly the assistant turns with weight 1: their content and the template's end-of-turn text (for ChatML,
``<|im_end|>\\n``), so the model learns to stop. The mask is found by rendering growing prefixes of the
conversation: the characters between ``render(messages[:i], add_generation_prompt=True)`` and
``render(messages[:i+1])`` are assistant turn i. This works for any template that is prefix-preserving (ChatML,
Phi-3, Llama-3 ...), needs no ``{% generation %}`` markers, and is checked: a template that is not
prefix-preserving is refused with a clear error instead of training on a silently wrong mask.

Conversations with tools go through :func:`slmtune.data.tools.render` (the model's own tool-aware template, or the
documented fallback), the same as at serving time; tool results are context, the assistant's calls are trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slmtune.data import tools as tool_data
from slmtune.data.formats import Example

IGNORE_INDEX = -100


class TemplateError(ValueError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    line: int
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _conversation(tokenizer, messages: list[dict], tools: list[dict] | None):
    """(the messages whose prefixes are rendered, how to render a prefix): a tool-aware template renders the
    messages as they are; otherwise the fallback's plain messages (tool results merged into user turns) are."""
    if tool_data.has_tools(messages, tools) and tool_data.native_tools(tokenizer):
        return messages, lambda ms, gen: tool_data.render(tokenizer, ms, tools, add_generation_prompt=gen)
    plain = tool_data.plain_messages(messages, tools)
    return plain, lambda ms, gen: tool_data.render(tokenizer, ms, None, add_generation_prompt=gen)


def chat_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the character spans that carry loss."""
    messages, _render = _conversation(tokenizer, messages, tools)
    full = _render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        before = _render(messages[:i], True) if i else ""
        through = _render(messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise TemplateError(
                "the chat template is not prefix-preserving (rendering the first turns of a conversation is not "
                "a prefix of rendering all of it), so the assistant-only loss mask cannot be derived safely"
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    text, spans = chat_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        for a, b in spans:
            if s < b and e > a:  # any overlap: a token merged across the turn boundary is still trained
                labels[t] = ids[t]
                break
    return ids, labels


def encode_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id else []
    return bos + p + c, [IGNORE_INDEX] * (len(bos) + len(p)) + c


def encode_example(tokenizer, ex: Example, max_seq_length: int | None = None) -> Encoded:
    if ex.kind == "chat":
        ids, labels = encode_chat(tokenizer, ex.messages, ex.tools)
    elif ex.kind == "preference":  # length and SFT-style loss of the preferred reply
        ids, labels = encode_chat(tokenizer, [*ex.messages, {"role": "assistant", "content": ex.chosen}], ex.tools)
    elif ex.kind == "unpaired":  # length (and an SFT-style loss) of the reply, desirable or not
        ids, labels = encode_chat(tokenizer, [*ex.messages, {"role": "assistant", "content": ex.completion}],
                                  ex.tools)
    else:
        ids, labels = encode_completion(tokenizer, ex.prompt, ex.completion)
    truncated = False
    if max_seq_length is not None and len(ids) > max_seq_length:
        ids, labels, truncated = ids[:max_seq_length], labels[:max_seq_length], True
    return Encoded(ids, labels, ex.line, truncated)


class SFTDataset(torch.utils.data.Dataset):
    """Encoded examples as a map-style dataset of dicts (what transformers' Trainer iterates)."""

    def __init__(self, encoded: list[Encoded]):
        self.items = encoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        e = self.items[i]
        return {"input_ids": e.input_ids, "labels": e.labels}

    @property
    def lengths(self) -> list[int]:
        return [e.n_tokens for e in self.items]


@dataclass
class PadCollator:
    """Right-pads a batch to its longest example (rounded up to ``multiple_of``)."""

    pad_token_id: int
    multiple_of: int = 8

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        n = -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(batch), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class PackCollator:
    """Packs a batch into one row with no padding: position ids restart at 0 for every example and no attention
    mask is passed, so transformers builds a block-diagonal causal mask (no attention across examples)."""

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        ids, labels, pos = [], [], []
        for b in batch:
            n = len(b["input_ids"])
            ids += b["input_ids"]
            lab = list(b["labels"])
            lab[0] = IGNORE_INDEX  # never predicted from the previous example's last token
            labels += lab
            pos += range(n)
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([pos])}
