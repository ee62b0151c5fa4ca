"""Load a base model, a run, an adapter or a checkpoint, and chat with it (PyTorch)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from slmtune.artifacts import Source, is_onnx_dir, locate  # also inference's own names (re-exported)
from slmtune.data.tools import CALL_OPEN, Reply, render
from slmtune.inference.constraints import Matchers, RowConstraint, apply_masks, build
from slmtune.inference.onnx_runtime import OnnxChatModel
from slmtune.models.loading import default_device, load_base_model, load_tokenizer


def generation_kwargs(tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int | None = None, stop: list[str] | None = None) -> dict:
    """``generate()`` arguments: greedy unless ``temperature > 0``; stops on the tokenizer's EOS (the end-of-turn
    token training taught) and on ``stop`` strings."""
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if temperature and temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kw.update(do_sample=True, temperature=temperature, top_p=top_p or 1.0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stop:
        kw.update(stop_strings=list(stop), tokenizer=tokenizer)
    return kw


class ChatModel:
    """A loaded model ready to chat: ``slmtune.load(path_or_id).chat(messages)``."""

    def __init__(self, source: Source, precision: str = "fp32", device: str | torch.device | None = None):
        self.source = source
        self.device = torch.device(device) if device else default_device()
        self.tokenizer = load_tokenizer(source.tokenizer_dir)
        model = load_base_model(source.weights_dir, precision, self.device, quantize_bits=source.quantize_bits)
        if source.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(source.adapter_dir))
        model.eval()
        self.model = model
        self._matchers: Matchers | None = None  # the grammar engine, made on the first call with tools

    @classmethod
    def around(cls, model, tokenizer) -> ChatModel:
        """A ChatModel over a model already in memory, loading nothing: a training run's, scored between steps
        (its mode and weights are the caller's)."""
        self = cls.__new__(cls)
        self.source, self.tokenizer, self.model, self._matchers = None, tokenizer, model, None
        self.device = next(model.parameters()).device
        return self

    # --- generation -----------------------------------------------------------------------------------------
    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict:
        return generation_kwargs(self.tokenizer, max_new_tokens, temperature, top_p, seed)

    def _prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> torch.Tensor:
        text = render(self.tokenizer, messages, tools, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)

    @torch.inference_mode()
    def chat(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, *, tools: list[dict] | None = None, tool_choice="auto",
             parallel_tool_calls: bool = True, response_format: dict | None = None) -> Reply:
        """Answer a conversation (OpenAI-style message dicts); greedy unless ``temperature > 0``. With ``tools``
        (OpenAI's tool list) the model may call them — ``reply.tool_calls`` — as ``tool_choice`` allows;
        ``response_format`` holds the reply to JSON (docs/tools.md)."""
        return self.chat_batch([messages], max_new_tokens, temperature, top_p, seed, tools=tools,
                               tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
                               response_format=response_format)[0]

    @torch.inference_mode()
    def chat_batch(self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None, *, tools: list[dict] | None = None,
                   tool_choice="auto", parallel_tool_calls: bool = True, response_format: dict | None = None,
                   tools_each: list[list[dict] | None] | None = None) -> list[Reply]:
        """Answer several conversations in one left-padded batch (the same ``tools`` for each, or with
        ``tools_each`` each conversation's own)."""
        tok = self.tokenizer
        each = tools_each if tools_each is not None else [tools] * len(conversations)
        texts = [render(tok, m, t, add_generation_prompt=True) for m, t in zip(conversations, each)]
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(self.device)
        finally:
            tok.padding_side = old_side
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        grammars = [build(t, tool_choice, parallel_tool_calls, response_format,
                          lambda lark: self.matchers.check(lark)) for t in each]
        if any(each) and tool_choice == "none":
            kw.update(stop_strings=[CALL_OPEN], tokenizer=tok)
        if any(g is not None for g in grammars):
            kw["logits_processor"] = [GrammarProcessor(grammars, self.matchers, tok, enc["input_ids"].shape[1])]
        out = self.model.generate(**enc, **kw)
        new = out[:, enc["input_ids"].shape[1]:]
        return [Reply.read(tok.decode(row, skip_special_tokens=True), t, tool_choice) for row, t in zip(new, each)]

    @property
    def matchers(self) -> Matchers:
        """The grammar engine for this model's tokenizer, made on the first request that needs one."""
        if self._matchers is None:
            self._matchers = Matchers.for_model(self.tokenizer, self.model)
        return self._matchers

    def chat_stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
        """Yield the answer as text pieces while it is generated."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids = self._prompt_ids(messages)
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        errors: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        yield from streamer
        th.join()
        if errors:
            raise errors[0]


class GrammarProcessor:
    """transformers' logits-processor hook over the batch engine's per-row constraints (``constraints``): each row
    of ``generate()`` is fed its last token, then masked to what its grammar allows next."""

    def __init__(self, grammars: list, matchers: Matchers, tokenizer, prompt_len: int):
        self.rows = [RowConstraint(g, matchers) if g is not None else None for g in grammars]
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_len:
            for row, ids in zip(self.rows, input_ids):
                if row is None:
                    continue
                new = ids[self.prompt_len:].tolist()
                # the text is only read while a trigger is awaited; a running matcher takes the token alone
                row.after(new[-1], self.tokenizer.decode(new, skip_special_tokens=True) if row.matcher is None else "")
        apply_masks(scores, self.rows)
        return scores


def load(path_or_id: str | Path, precision: str = "fp32", device: str | None = None):
    """Load a model id, model folder, run directory, adapter or checkpoint for chat and evaluation; a folder written
    by ``slmtune export onnx`` loads into ONNX Runtime (an OnnxChatModel with the same chat methods)."""
    if is_onnx_dir(path_or_id):
        return OnnxChatModel(path_or_id, provider=device or "cpu")
    return ChatModel(locate(path_or_id), precision=precision, device=device)
