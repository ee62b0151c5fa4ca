"""Load a base model, a run, an adapter or a checkpoint, and chat with it (PyTorch)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from slmtune.artifacts import Source, is_onnx_dir, locate  # also inference's own names (re-exported)
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

    # --- generation -----------------------------------------------------------------------------------------
    def _gen_kwargs(self, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict:
        return generation_kwargs(self.tokenizer, max_new_tokens, temperature, top_p, seed)

    def _prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)

    @torch.inference_mode()
    def chat(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None) -> str:
        """Answer a conversation (OpenAI-style message dicts); greedy unless ``temperature > 0``."""
        return self.chat_batch([messages], max_new_tokens, temperature, top_p, seed)[0]

    @torch.inference_mode()
    def chat_batch(self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Answer several conversations in one left-padded batch."""
        tok = self.tokenizer
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(self.device)
        finally:
            tok.padding_side = old_side
        out = self.model.generate(**enc, **self._gen_kwargs(max_new_tokens, temperature, top_p, seed))
        new = out[:, enc["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]

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


def load(path_or_id: str | Path, precision: str = "fp32", device: str | None = None):
    """Load a model id, model folder, run directory, adapter or checkpoint for chat and evaluation; a folder written
    by ``slmtune export onnx`` loads into ONNX Runtime (an OnnxChatModel with the same chat methods)."""
    if is_onnx_dir(path_or_id):
        return OnnxChatModel(path_or_id, provider=device or "cpu")
    return ChatModel(locate(path_or_id), precision=precision, device=device)
