"""Every model the service chats with, each behind a continuous-batching engine.

- A base model gets one :class:`BatchEngine`; its LoRA adapters (LoRA, rsLoRA, any rank) load into slots of that
  one model (a bounded LRU, ``lora_batch``) and share its batch: each row runs its own adapter or the plain base.
- Adapters that cannot share that batch (``lora_batch.unmixable``) get an engine of their own, on their own copy
  of the base weights (a bounded LRU of such engines): DoRA, PiSSA/OLoRA-initialised LoRA, LoRA with
  modules_to_save, IA³, LoHa, LoKr, VeRA and AdaLoRA are merged into the copy; prompt tuning and p-tuning add their
  virtual tokens, prefix tuning its key/value prefixes, through the same slot cache.

Model loading takes seconds, so it runs on this server's own loader threads (``await server.prepare(...)``);
submitting is quick and never blocks on the batch.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slmtune.data.tools import dumps, render
from slmtune.inference.batching import BatchEngine
from slmtune.inference.constraints import Grammar, build
from slmtune.inference.decode import prefers_fp16
from slmtune.inference.lora_batch import unmixable
from slmtune.inference.metrics import ServingMetrics
from slmtune.inference.request import Delta, Failed, Finished, GenerationRequest, Overloaded, PromptTooLong
from slmtune.inference.sampling import SamplingParams
from slmtune.models.loading import default_device, load_base_model, load_tokenizer, resolve_precision
from slmtune.models.registry import resolve

__all__ = ["ModelServer", "Prepared", "Completion", "Overloaded", "PromptTooLong", "submit_async"]

def adapter_config(path: Path) -> dict:
    return json.loads((Path(path) / "adapter_config.json").read_text())


def adapter_kind(path: Path) -> str:
    return str(adapter_config(path).get("peft_type", "LORA")).upper()


def adapter_name(key: str) -> str:
    """A PEFT-safe adapter name for a model id (ids hold ':' and may hold '.', which module names cannot)."""
    import hashlib

    return "a" + hashlib.sha1(key.encode()).hexdigest()[:16]


@dataclass
class Prepared:
    """What a request needs to be submitted: its engine, the tokenizer for its prompt, its adapter (if mixed in)."""

    engine: BatchEngine
    tokenizer: object
    adapter: tuple[str, Path] | None


@dataclass
class GeneratedChoice:
    text: str = ""
    finish_reason: str = "stop"
    completion_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)


@dataclass
class Completion:
    prompt_tokens: int
    choices: list[GeneratedChoice]

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


class ModelServer:
    def __init__(self, *, precision: str = "auto", device: str | None = None, max_running: int = 32,
                 max_queued: int = 128, adapter_cache_size: int = 8, own_engines: int = 2,
                 prefill_tokens: int = 512, metrics: ServingMetrics | None = None,
                 max_queued_per_project: int | None = None, decode: str = "auto"):
        self.device = torch.device(device) if device else default_device()
        self.precision = precision  # as asked: `auto` is resolved for each model (its size counts on a CPU)
        self.decode = decode
        self.max_running, self.max_queued, self.prefill_tokens = max_running, max_queued, prefill_tokens
        self.max_queued_per_project = max_queued_per_project
        self.adapter_cache_size = adapter_cache_size
        self.own_engines = max(1, own_engines)
        self.metrics = metrics or ServingMetrics()
        self.bases: dict[str, Prepared] = {}  # model folder → its engine
        self._folders: dict[str, str] = {}  # base id as requested → model folder, once loaded
        self._routes: dict[tuple[str, str, str], Prepared] = {}  # (base, adapter key, path) → how it is served
        self.own: OrderedDict[tuple[str, str], Prepared] = OrderedDict()
        self._locks: dict[object, threading.Lock] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="slmtune-model-load")

    # --- loading (on the loader threads) --------------------------------------------------------------------
    def _key_lock(self, key) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def precision_for(self, model_dir) -> str:
        """The precision this server loads ``model_dir`` in (``auto`` weighs the model's fp32 weights against the
        memory available where bf16 is not fast: ``models.loading.resolve_precision``)."""
        return resolve_precision(self.precision, model_dir=model_dir)

    def decode_for(self, model) -> str:
        """The decode path this server runs ``model`` with: as asked, except that where both the precision and the
        decode are ``auto``, an fp32 model on a CPU without fast bf16 decodes with fp16 weights and fp32 sums
        (``inference.decode.prefers_fp16``: half the bytes a token; ``--precision fp32`` keeps fp32's numbers)."""
        if self.decode == "auto" and self.precision == "auto" and prefers_fp16(model):
            return "fp16"
        return self.decode

    def _engine(self, model, tokenizer, name: str, **kw) -> BatchEngine:
        return BatchEngine(model, tokenizer, name=name, max_running=self.max_running, max_queued=self.max_queued,
                           prefill_tokens=self.prefill_tokens, adapter_capacity=self.adapter_cache_size,
                           metrics=self.metrics, max_queued_per_project=self.max_queued_per_project,
                           decode=self.decode_for(model), **kw)

    def _base(self, base_id: str) -> Prepared:
        # keyed by the model folder: an id and its cache path (adapters often name the path) share one engine
        if base_id in self._folders:
            return self.bases[self._folders[base_id]]
        model_dir = resolve(base_id)
        key = str(Path(model_dir).resolve())
        with self._key_lock(key):
            if key not in self.bases:
                model = load_base_model(model_dir, self.precision_for(model_dir), self.device)
                # two tokenizers: one renders prompts on the caller's side, one detokenizes on the engine thread
                engine = self._engine(model, load_tokenizer(model_dir), base_id)
                self.bases[key] = Prepared(engine, load_tokenizer(model_dir), None)
            self._folders[base_id] = key
            return self.bases[key]

    def engine(self, base_id: str) -> BatchEngine:
        """The engine that serves ``base_id`` and its LoRA adapters (loading it if needed)."""
        return self._base(base_id).engine

    def _own(self, base_id: str, key: str, path: Path) -> Prepared:
        """An engine of its own for an adapter that cannot share the base's batch."""
        from peft import PeftModel

        with self._key_lock((base_id, key)):
            if (base_id, key) in self.own:
                self.own.move_to_end((base_id, key))
                return self.own[(base_id, key)]
            kind = adapter_kind(path)
            model_dir = resolve(base_id)
            base = load_base_model(model_dir, self.precision_for(model_dir), self.device)
            peft = PeftModel.from_pretrained(base, str(path), autocast_adapter_dtype=False).eval()
            kw: dict = {}
            if kind in ("PROMPT_TUNING", "P_TUNING"):
                with torch.inference_mode():
                    kw["virtual_prompt"] = peft.get_prompt(batch_size=1)[0].to(base.dtype)
                model = peft.get_base_model()
            elif kind == "PREFIX_TUNING":
                with torch.inference_mode():
                    kv = peft.get_prompt(batch_size=1)
                layers = getattr(kv, "layers", None)
                kw["prefix_kv"] = ([(layer.keys[0], layer.values[0]) for layer in layers] if layers is not None
                                   else [(k[0], v[0]) for k, v in kv])
                model = peft.get_base_model()
            else:
                model = peft.merge_and_unload()
            tok_dir = path if (Path(path) / "tokenizer_config.json").exists() else model_dir
            engine = self._engine(model, load_tokenizer(tok_dir), key, **kw)
            prepared = Prepared(engine, load_tokenizer(tok_dir), None)
            with self._lock:
                self.own[(base_id, key)] = prepared
                for old_key in list(self.own):
                    if len(self.own) <= self.own_engines:
                        break
                    old = self.own[old_key].engine
                    if old_key != (base_id, key) and not old.rows and not old.queued and old.long is None:
                        self.own.pop(old_key)
                        old.shutdown()
            return prepared

    def prepare_sync(self, base_id: str, adapter: tuple[str, Path] | None = None) -> Prepared:
        if adapter is None:
            return self._base(base_id)
        key, path = adapter[0], Path(adapter[1])
        route = (base_id, key, str(path))
        if (ready := self._ready(base_id, adapter)) is not None:
            return ready
        if not (path / "adapter_config.json").exists():
            raise FileNotFoundError(f"{path}: no adapter_config.json (the tuned model's adapter is missing)")
        if unmixable(adapter_config(path)) is None:
            base = self._base(base_id)
            prepared = Prepared(base.engine, base.tokenizer, (adapter_name(key), path))
        else:
            prepared = self._own(base_id, key, path)
        self._routes[route] = prepared
        return prepared

    def _ready(self, base_id: str, adapter: tuple[str, Path] | None) -> Prepared | None:
        """What a request needs, if it was prepared before (no file reads, no thread hop)."""
        if adapter is None:
            folder = self._folders.get(base_id)
            return self.bases[folder] if folder else None
        p = self._routes.get((base_id, adapter[0], str(adapter[1])))
        if p is None or not p.engine.thread.is_alive():
            return None
        if p.adapter is None:  # an engine of its own: keep its LRU order
            with self._lock:
                if (base_id, adapter[0]) in self.own:
                    self.own.move_to_end((base_id, adapter[0]))
        return p

    async def prepare(self, base_id: str, adapter: tuple[str, Path] | None = None) -> Prepared:
        """Load what a request needs on this server's loader threads (the event loop and its pool stay free)."""
        ready = self._ready(base_id, adapter)
        if ready is not None:
            return ready
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.prepare_sync, base_id, adapter)

    # --- requests ----------------------------------------------------------------------------------------------
    @staticmethod
    def prompt_ids(tokenizer, messages: list[dict], max_length: int | None = None,
                   tools: list[dict] | None = None) -> list[int]:
        """The prompt's tokens through the model's chat template (with ``tools``: ``data.tools.render``). With
        ``max_length``, messages that cannot fit in it whatever the tokenizer does are refused before any
        templating (:func:`refuse_far_too_long`)."""
        if max_length:
            refuse_far_too_long(tokenizer, messages, max_length, tools)
        text = render(tokenizer, messages, tools, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def grammar(prepared: Prepared, tools: list[dict] | None, tool_choice="auto", parallel: bool = True,
                response_format: dict | None = None) -> Grammar | None:
        """The grammar a request is held to (``constraints.build``) on this engine's tokenizer; raises
        ``UnsupportedSchema`` for a strict schema the grammar engine cannot enforce."""
        return build(tools, tool_choice, parallel, response_format, lambda lark: prepared.engine.matchers.check(lark))

    def submit(self, prepared: Prepared, messages: list[dict], params: SamplingParams, *, n: int = 1,
               emit, project: str | None = None, tools: list[dict] | None = None, tool_choice="auto",
               parallel_tool_calls: bool = True, response_format: dict | None = None) -> GenerationRequest:
        """Render, tokenize and queue a request; with tools or a response format, its grammar is built here too
        (unless ``params.grammar`` is given)."""
        engine = prepared.engine
        if params.grammar is None:
            params.grammar = self.grammar(prepared, tools, tool_choice, parallel_tool_calls, response_format)
        if prepared.adapter is not None and prepared.adapter[0] in engine.adapters.loaded:
            self.metrics.adapter_hits.labels(engine.name).inc()
        try:
            return engine.submit(self.prompt_ids(prepared.tokenizer, messages, engine.max_length, tools), params,
                                 n=n, adapter=prepared.adapter, emit=emit, project=project)
        except Overloaded:
            self.metrics.rejected.labels(engine.name).inc()
            raise

    def generate(self, base_id: str, adapter: tuple[str, Path] | None, messages: list[dict],
                 params: SamplingParams | None = None, *, n: int = 1, timeout: float | None = None,
                 tools: list[dict] | None = None) -> Completion:
        """Blocking convenience (tests, scripts): submit and wait for every choice."""
        params = params or SamplingParams()
        events: queue.SimpleQueue = queue.SimpleQueue()
        req = self.submit(self.prepare_sync(base_id, adapter), messages, params, n=n, emit=events.put, tools=tools)
        return collect(req, events.get, timeout)

    def shutdown(self) -> None:
        for p in [*self.bases.values(), *self.own.values()]:
            p.engine.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)


_RENDER = ThreadPoolExecutor(2, thread_name_prefix="slmtune-render")  # chat templates and tokenizers, off the loop


async def submit_async(server, *args, **kw) -> GenerationRequest:
    """``server.submit(...)`` on the render threads: templating and tokenizing a long prompt takes the CPU for
    seconds, which on the event loop would stall every other request. Two threads: a burst of long prompts queues
    here instead of taking every core from the decode threads."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_RENDER, functools.partial(server.submit, *args, **kw))


def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one token of ``tokenizer`` stands for (cached on the tokenizer)."""
    cached = getattr(tokenizer, "_slmtune_longest_token", None)
    if cached is None:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # byte-level vocabularies spell each byte as one character; others as text (counted in UTF-8 bytes)
        cached = max((len(p.encode("utf-8")) for p in pieces if p), default=1)
        tokenizer._slmtune_longest_token = cached
    return cached


def refuse_far_too_long(tokenizer, messages: list[dict], max_length: int, tools: list[dict] | None = None) -> None:
    """PromptTooLong when the messages' text cannot fit in ``max_length`` tokens however it is tokenized: every
    token stands for at most :func:`longest_token_bytes` bytes, so ``bytes / longest`` tokens at the least. Exact,
    never a guess: a prompt this refuses would be refused after tokenizing too, only seconds later."""
    size = sum(len(str(m.get("content") or "").encode("utf-8")) for m in messages)
    size += sum(len(dumps(t).encode("utf-8")) for t in tools or [])
    least = size // longest_token_bytes(tokenizer)
    if least > max_length:
        raise PromptTooLong(f"This model's maximum context length is {max_length} tokens. However, your messages "
                            f"hold {size} bytes of text, which is at least {least} tokens. Please reduce the length "
                            "of the messages.")


class Collector:
    """Gathers a request's events into a :class:`Completion`, whoever waits for them (a thread or a coroutine)."""

    def __init__(self, req: GenerationRequest):
        self.completion = Completion(req.prompt_tokens, [GeneratedChoice() for _ in req.seqs])
        self.left = len(req.seqs)

    def add(self, ev) -> bool:
        """Take one event; True once every choice has finished. Raises what the engine reported."""
        if isinstance(ev, Failed):
            raise ev.error
        c = self.completion.choices[ev.choice]
        c.logprobs += ev.logprobs or []
        if isinstance(ev, Delta):
            c.text += ev.text
        elif isinstance(ev, Finished):
            c.finish_reason, c.completion_tokens = ev.finish_reason, ev.completion_tokens
            self.left -= 1
        return self.left == 0


def collect(req: GenerationRequest, get, timeout: float | None = None) -> Completion:
    """Wait for a request's events with ``get`` (a queue's) and return its Completion."""
    c = Collector(req)
    while not c.add(get(timeout=timeout) if timeout else get()):
        pass
    return c.completion
