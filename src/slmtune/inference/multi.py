"""Many adapters on one base model: the base is loaded once, adapters on demand into a bounded LRU cache.

Requests for the same base are served one at a time (a lock per base): switching the active adapter is a pointer
change in PEFT, so one copy of the base weights serves every tuned model built on it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from slmtune.inference.generate import generation_kwargs
from slmtune.models.loading import default_device, load_base_model, load_tokenizer
from slmtune.models.registry import resolve


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class PromptTooLong(ValueError):
    pass


class _Base:
    def __init__(self, base_id: str, precision: str, device):
        self.model_dir = resolve(base_id)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_base_model(self.model_dir, precision, device).eval()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", 2048)
        self.adapters: OrderedDict[str, Path] = OrderedDict()
        self.lock = threading.Lock()


class MultiAdapterServer:
    def __init__(self, cache_size: int = 8, precision: str = "fp32", device: str | None = None):
        self.cache_size = max(1, cache_size)
        self.precision = precision
        self.device = torch.device(device) if device else default_device()
        self.bases: dict[str, _Base] = {}
        self._lock = threading.Lock()

    def _base(self, base_id: str) -> _Base:
        with self._lock:
            if base_id not in self.bases:
                self.bases[base_id] = _Base(base_id, self.precision, self.device)
            return self.bases[base_id]

    def _activate(self, b: _Base, key: str | None, path: Path | None) -> None:
        """With the base's lock held: make ``key`` the active adapter (None: the plain base)."""
        from peft import PeftModel

        if key is None:
            return
        if key in b.adapters:
            b.adapters.move_to_end(key)
        else:
            if not isinstance(b.model, PeftModel):
                b.model = PeftModel.from_pretrained(b.model, str(path), adapter_name=key).eval()
            else:
                b.model.load_adapter(str(path), adapter_name=key)
            b.adapters[key] = path
            while len(b.adapters) > self.cache_size:
                old, _ = b.adapters.popitem(last=False)
                b.model.delete_adapter(old)
        b.model.set_adapter(key, inference_mode=True)  # frozen: never asks for gradients

    def _context(self, b: _Base, key: str | None):
        from contextlib import nullcontext

        from peft import PeftModel

        if key is None and isinstance(b.model, PeftModel):
            return b.model.disable_adapter()
        return nullcontext()

    def _inputs(self, b: _Base, messages: list[dict], max_new_tokens: int):
        text = b.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = b.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        if ids.shape[1] + max_new_tokens > b.max_positions:
            raise PromptTooLong(f"This model's maximum context length is {b.max_positions} tokens. However, you "
                                f"requested {ids.shape[1] + max_new_tokens} tokens ({ids.shape[1]} in the messages, "
                                f"{max_new_tokens} in the completion).")
        return ids

    def _gen_kwargs(self, b: _Base, max_new_tokens, temperature, top_p, seed, stop) -> dict:
        return generation_kwargs(b.tokenizer, max_new_tokens, temperature, top_p, seed, stop)

    @staticmethod
    def _finish(text: str, n_new: int, max_new_tokens: int, hit_eos: bool, stop) -> tuple[str, str]:
        for s in stop or []:
            i = text.find(s)
            if i >= 0:
                return text[:i], "stop"
        return text, ("length" if n_new >= max_new_tokens and not hit_eos else "stop")

    def generate(self, base_id: str, adapter: tuple[str, Path] | None, messages: list[dict], *,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop: list[str] | None = None) -> Generation:
        b = self._base(base_id)
        with b.lock:
            key, path = adapter if adapter else (None, None)
            self._activate(b, key, path)
            ids = self._inputs(b, messages, max_new_tokens)
            with torch.inference_mode(), self._context(b, key):
                out = b.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       **self._gen_kwargs(b, max_new_tokens, temperature, top_p, seed, stop))
        new = out[0, ids.shape[1]:].tolist()
        hit_eos = bool(new) and new[-1] == b.tokenizer.eos_token_id
        text = b.tokenizer.decode(new, skip_special_tokens=True)
        text, reason = self._finish(text, len(new), max_new_tokens, hit_eos, stop)
        return Generation(text.strip(), ids.shape[1], len(new), reason)

    def stream(self, base_id: str, adapter: tuple[str, Path] | None, messages: list[dict], *,
               max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
               stop: list[str] | None = None) -> tuple[int, Iterator[str], dict]:
        """Start generating; returns (prompt_tokens, iterator of text pieces, info filled at the end).

        ``info`` gets ``completion_tokens`` and ``finish_reason`` once the iterator is exhausted.
        """
        from transformers import TextIteratorStreamer

        b = self._base(base_id)
        b.lock.acquire()
        try:
            key, path = adapter if adapter else (None, None)
            self._activate(b, key, path)
            ids = self._inputs(b, messages, max_new_tokens)
        except BaseException:
            b.lock.release()
            raise
        streamer = TextIteratorStreamer(b.tokenizer, skip_prompt=True, skip_special_tokens=True)
        info: dict = {}
        result: dict = {}

        def run():
            try:
                with torch.inference_mode(), self._context(b, key):
                    out = b.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                           **self._gen_kwargs(b, max_new_tokens, temperature, top_p, seed, stop))
                result["new"] = out[0, ids.shape[1]:].tolist()
            except BaseException as e:  # noqa: BLE001 - surfaced by the iterator
                result["error"] = e
                streamer.end()
            finally:
                b.lock.release()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def pieces() -> Iterator[str]:
            sent = ""
            for piece in streamer:
                candidate = sent + piece
                cut = min((candidate.find(s) for s in stop or [] if s in candidate), default=-1)
                if cut >= 0:
                    if cut > len(sent):
                        yield candidate[len(sent):cut]
                    sent = candidate[:cut]
                    break
                sent = candidate
                if piece:
                    yield piece
            thread.join()
            if "error" in result:
                raise result["error"]
            new = result.get("new", [])
            hit_eos = bool(new) and new[-1] == b.tokenizer.eos_token_id
            _, reason = self._finish(sent, len(new), max_new_tokens, hit_eos, stop)
            info.update(completion_tokens=len(new), finish_reason=reason)

        return ids.shape[1], pieces(), info
