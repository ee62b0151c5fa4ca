"""Continuous batching: one scheduler thread per model, requests joining and leaving the batch at token boundaries.

Each loop of the scheduler thread:

1. takes in new requests and cancellations (a cancelled sequence leaves before the next forward);
2. admits waiting sequences into free slots, fairly between projects: the project with the fewest running
   sequences goes first (FIFO within a project; a sequence whose adapter is still loading waits and lets the ones
   behind it pass); when every slot is taken and a project holds two or more slots above one that waits, its
   newest sequence is preempted (its cache dropped, recomputed from its prompt and tokens when it comes back), so
   one project's flood delays another's request by a few steps, not by the flood's length. Short prompts are
   prefilled together in one forward, a long one in chunks of its own;
3. runs one decode step for every running sequence, each row with its own LoRA adapter (``lora_batch``),
   position, sampling parameters, random stream and grammar mask (tools, response_format: ``constraints``).

Prefill of newcomers and decoding of the others thus alternate step by step. The KV cache is a slot per sequence
(``kv_slots.SlotCache``); see there why it is not transformers' own continuous-batching cache.

Written by hand (the pieces transformers and PEFT lack): the scheduler and the forwards here (4D masks, per-row
positions); a request's state and events in ``request``, the detokenizer with stop strings in ``detokenizer``, the
adapter LRU that loads files off the scheduler thread in ``adapter_cache``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import torch

from slmtune.inference.adapter_cache import AdapterCache
from slmtune.inference.constraints import Matchers, RowConstraint, apply_masks
from slmtune.inference.decode import lean_decoder
from slmtune.inference.detokenizer import Detokenizer
from slmtune.inference.kv_slots import SlotCache, use_slot_attention
from slmtune.inference.metrics import ServingMetrics
from slmtune.inference.request import Failed, GenerationRequest, Overloaded, PromptTooLong, SequenceState
from slmtune.inference.sampling import SamplingParams, choose, token_logprobs

log = logging.getLogger("slmtune.serving")


@functools.cache
def _libgomp():
    """torch's own libgomp (ctypes), or None where torch uses another OpenMP runtime or none."""
    import ctypes

    for lib in sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*")):
        try:
            handle = ctypes.CDLL(str(lib))
        except OSError:
            continue
        if hasattr(handle, "omp_pause_resource_all"):
            return handle
    return None


def release_openmp_pool() -> None:
    """Let the calling thread's OpenMP worker threads go (``omp_pause_resource_all``; they come back on its next
    parallel operation).

    Why: libgomp keeps one pool of worker threads per thread that ever ran a parallel operation, and once the pools
    together hold more threads than the machine has cores it stops letting idle workers spin before they sleep, so
    every parallel operation pays a futex wake-up. A decode step is ~1,000 small parallel operations: with the
    loading thread's idle pool alive, the same step measured 21 ms on the engine's thread against 12 ms on the
    main thread (2 cores). The thread that built the engine, the engine when idle, and a thread about to wait on
    the engine call this, so the busy thread's pool is the only one."""
    lib = _libgomp()
    if lib is not None:
        lib.omp_pause_resource_all(1)  # omp_pause_soft: threads end, the runtime stays initialised


class BatchEngine:
    """Serves one model (optionally with LoRA-family adapters mixed per row) to many concurrent requests."""

    def __init__(self, model, tokenizer, *, name: str, max_running: int = 32, max_queued: int = 128,
                 prefill_tokens: int = 512, adapter_capacity: int = 8, metrics: ServingMetrics | None = None,
                 max_queued_per_project: int | None = None, virtual_prompt: torch.Tensor | None = None,
                 prefix_kv: list | None = None, decode: str = "auto"):
        self.name = name
        self.model = model.eval()
        use_slot_attention(model)
        self.lean = lean_decoder(model, decode)
        self.detok = Detokenizer(tokenizer)
        config = model.config
        self.max_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self.window = getattr(config, "sliding_window", None)
        self.device = next(model.parameters()).device
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self.max_running = max(1, max_running)
        self.max_queued = max(0, max_queued)
        self.max_queued_per_project = max_queued_per_project or self.max_queued
        self.prefill_tokens = max(16, prefill_tokens)
        self.metrics = metrics or ServingMetrics()
        # prompt learning: virtual token embeddings before each prompt, or key/value prefixes in every layer
        self.virtual_prompt = virtual_prompt
        self.prefix_kv = prefix_kv
        self.reserved = (virtual_prompt.shape[0] if virtual_prompt is not None else 0) + (
            prefix_kv[0][0].shape[1] if prefix_kv else 0)
        self.cache = SlotCache(config.num_hidden_layers, self.max_running, self.max_length, self.device,
                               dtype=torch.float32 if self.lean is not None and self.device.type == "cpu" else None)
        self.adapters = AdapterCache(self, adapter_capacity)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rows: list[SequenceState] = []  # running, row i in slot i
        self.long: SequenceState | None = None  # a long prompt being prefilled in chunks, in slot len(rows)
        self.waiting: deque[SequenceState] = deque()
        self._inbox: list[GenerationRequest] = []
        self._lock = threading.Lock()
        self._matchers: Matchers | None = None
        self._matchers_lock = threading.Lock()
        self.queued = 0  # sequences submitted and not yet admitted
        self.queued_by: Counter[str | None] = Counter()  # the same, per project
        self.preempted = 0  # sequences sent back to wait for another project's (a count, for tests and metrics)
        self.prefilling = 0  # admitted, in this step's prefill
        self._wake = threading.Event()
        self._stop = False
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, name=f"slmtune-batch[{name}]", daemon=True)
        self.thread.start()
        release_openmp_pool()  # loading and packing ran parallel work on this thread

    # --- called from other threads -------------------------------------------------------------------------
    def check_prompt(self, prompt: list[int], max_new_tokens: int) -> None:
        total = self.reserved + len(prompt) + max_new_tokens
        if total > self.max_length:
            raise PromptTooLong(f"This model's maximum context length is {self.max_length} tokens. However, you "
                                f"requested {total} tokens ({len(prompt)} in the messages, {max_new_tokens} in the "
                                "completion). Please reduce the length of the messages or completion.")

    def submit(self, prompt: list[int], params: SamplingParams, *, n: int = 1, adapter: tuple[str, Path] | None = None,
               emit: Callable[[object], None], project: str | None = None) -> GenerationRequest:
        """Queue a request (``n`` choices); events are passed to ``emit`` from the scheduler thread."""
        if not prompt:
            raise PromptTooLong("The prompt is empty.")
        self.check_prompt(prompt, params.max_new_tokens)
        name = None
        if adapter is not None:
            name = adapter[0]
            self.adapters.register(name, adapter[1])
        matchers = self.matchers if params.grammar is not None else None
        with self._lock:
            free = max(0, self.max_running - self.occupied())
            if self.queued + n > self.max_queued + free:
                raise Overloaded(f"The server is at capacity for model '{self.name}' ({self.queued} requests "
                                 "queued). Please retry after a short wait.", retry_after=1.0)
            if project is not None and self.queued_by[project] + n > self.max_queued_per_project + free:
                raise Overloaded(f"This project has {self.queued_by[project]} requests queued for model "
                                 f"'{self.name}' (its share is {self.max_queued_per_project}). Please retry after "
                                 "a short wait.", retry_after=1.0)
            req = GenerationRequest(self, prompt, params, n, name, emit, project)
            if matchers is not None:
                for s in req.seqs:
                    s.constraint = RowConstraint(params.grammar, matchers)
            self.queued += n
            self.queued_by[project] += n
            self._inbox.append(req)
            self.metrics.queued.labels(self.name).set(self.queued)
        self.wake()
        return req

    @property
    def matchers(self) -> Matchers:
        """The grammar engine for this model's tokenizer (made on first use: ~0.2 s for a 49k vocabulary)."""
        with self._matchers_lock:
            if self._matchers is None:
                self._matchers = Matchers.for_model(self.detok.tokenizer, self.model)
            return self._matchers

    def weights_changed(self) -> None:
        """The model's weights were changed in place (while no step runs): the lean step packs them again."""
        if self.lean is not None:
            self.lean.refresh()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self) -> None:
        self._stop = True
        self.wake()
        self.thread.join(10)

    def occupied(self) -> int:
        """Slots taken: running rows, rows being prefilled, a long prompt in chunks."""
        return len(self.rows) + self.prefilling + (self.long is not None)

    # --- the scheduler thread ------------------------------------------------------------------------------
    def adapters_in_use(self, running_only: bool = False) -> set[str]:
        seqs = itertools.chain(self.rows, [] if running_only else self.waiting, [self.long] if self.long else [])
        return {s.adapter for s in seqs if s.adapter}

    def _loop(self) -> None:
        busy = False
        while not self._stop:
            self._wake.clear()
            self._take_inbox()
            self._drop_cancelled()
            try:
                with torch.inference_mode():
                    worked = self._step()
            except Exception as e:  # a failed forward fails its requests, not the server
                log.exception("batch step failed on %s", self.name)
                self._fail(self.rows + ([self.long] if self.long else []), e)
                self.rows, self.long = [], None
                worked = True
            self.metrics.running.labels(self.name).set(len(self.rows) + (self.long is not None))
            if worked:
                busy = True
            else:
                if busy:  # idle now: let other threads' parallel work have the cores
                    release_openmp_pool()
                    busy = False
                self._wake.wait(0.5)

    def _take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for req in inbox:
            self.waiting.extend(req.seqs)

    def _unqueue(self, seqs) -> None:
        with self._lock:
            for s in seqs:
                self.queued -= 1
                self.queued_by[s.project] -= 1
                if not self.queued_by[s.project]:
                    del self.queued_by[s.project]
            self.metrics.queued.labels(self.name).set(self.queued)

    def _drop_cancelled(self) -> None:
        gone = [s for s in self.waiting if s.request.cancelled]
        if gone:
            self.waiting = deque(s for s in self.waiting if not s.request.cancelled)
            self._unqueue(gone)
        if self.long is not None and self.long.request.cancelled:
            self.long = None
        self._remove([i for i, s in enumerate(self.rows) if s.request.cancelled])

    def _remove(self, indices: list[int]) -> None:
        """Free the slots of rows ``indices``: the last row moves into each hole, keeping rows in slots 0..n-1."""
        for i in sorted(indices, reverse=True):
            last = len(self.rows) - 1
            if i != last:
                self.cache.move(last, i, self.rows[last].cached)
                self.rows[i] = self.rows[last]
            self.rows.pop()
        if indices and self.long is not None:  # keep the long prefill right after the running rows
            self.cache.move(len(self.rows) + len(indices), len(self.rows), self.long.cached)

    @staticmethod
    def _fail(seqs: list[SequenceState], error: BaseException) -> None:
        """Fail the requests of ``seqs`` (each once); their sequences leave wherever they are."""
        for req in {id(s.request): s.request for s in seqs}.values():
            req.cancelled = True
            req.emit(Failed(error))

    def _fail_waiting_on_adapter(self, name: str) -> None:
        hit = [s for s in self.waiting if s.adapter == name]
        self.waiting = deque(s for s in self.waiting if s.adapter != name)
        self._unqueue(hit)
        self._fail(hit, ValueError(f"the tuned model's adapter could not be loaded: {self.adapters.failed[name]}"))

    def _fair_order(self) -> None:
        """Order the waiting sequences for admission: repeatedly the next (FIFO) of the project that would then
        hold the fewest slots. One project alone keeps plain FIFO order."""
        projects = {s.project for s in self.waiting}
        if len(projects) < 2:
            return
        held = Counter(s.project for s in self.rows)
        by_project: dict[str | None, deque[SequenceState]] = {}
        for s in self.waiting:
            by_project.setdefault(s.project, deque()).append(s)
        order: deque[SequenceState] = deque()
        while by_project:
            p = min(by_project, key=lambda k: held[k])  # ties: the project whose first sequence waited longest
            order.append(by_project[p].popleft())
            held[p] += 1
            if not by_project[p]:
                del by_project[p]
        self.waiting = order

    def _preempt(self) -> None:
        """Every slot is taken and a project waits while another holds at least two slots more: send that one's
        newest sequences back to wait (their cache is recomputed on return) until the shares are within one."""
        if self.long is not None or not self.waiting or len(self.rows) < self.max_running:
            return
        held = Counter(s.project for s in self.rows)
        waiting = Counter(s.project for s in self.waiting)
        victims: list[int] = []
        for p in sorted(waiting, key=lambda k: held[k]):
            for _ in range(waiting[p]):
                top, most = held.most_common(1)[0]
                if most < held[p] + 2:
                    break
                i = max(i for i, s in enumerate(self.rows) if s.project == top and i not in victims)
                victims.append(i)
                held[top] -= 1
                held[p] += 1
        if not victims:
            return
        back = [self.rows[i] for i in victims]
        self._remove(victims)
        for s in back:
            s.cached = 0  # prompt and generated tokens are prefilled again when it is admitted
        self.waiting.extend(back)
        self.preempted += len(back)
        with self._lock:
            self.queued += len(back)
            self.queued_by.update(s.project for s in back)

    def _admit(self) -> list[SequenceState]:
        """Waiting sequences that go into free slots now (prefilled together in one forward)."""
        if self.long is not None:
            return []
        self._preempt()
        self._fair_order()
        free = self.max_running - len(self.rows)
        batch: list[SequenceState] = []
        budget = self.prefill_tokens
        keep: deque[SequenceState] = deque()
        while self.waiting:
            s = self.waiting.popleft()
            if free <= 0 or budget <= 0:
                keep.append(s)
                break
            if s.adapter is not None and not self.adapters.ready(s.adapter):
                if s.adapter in self.adapters.failed:
                    self.waiting.appendleft(s)
                    self._fail_waiting_on_adapter(s.adapter)
                    continue
                keep.append(s)
                continue
            size = len(s.prompt) + len(s.tokens) + self.reserved
            if size > self.prefill_tokens:  # alone, in chunks
                if batch:
                    keep.append(s)
                    break
                self.long = s
                self._start(s, len(self.rows))
                break
            if size > budget:
                keep.append(s)
                break
            self._start(s, len(self.rows) + len(batch))
            batch.append(s)
            budget -= size
            free -= 1
        self.waiting = keep + self.waiting
        if batch or self.long is not None:
            self.prefilling = len(batch)
            self._unqueue(batch + ([self.long] if self.long is not None else []))
        return batch

    def _start(self, s: SequenceState, slot: int) -> None:
        s.cached = 0
        if self.prefix_kv:
            self.cache.write_prefix(slot, self.prefix_kv)
            s.cached = self.prefix_kv[0][0].shape[1]

    def _prompt_ids(self, s: SequenceState) -> list[int]:
        """The tokens a sequence still has to prefill; virtual tokens are negative ids -1, -2, ... A preempted
        sequence prefills its generated tokens too, and the token sampled after them is its next one."""
        full = ([-(i + 1) for i in range(self.virtual_prompt.shape[0])] if self.virtual_prompt is not None
                else []) + s.prompt + s.tokens
        offset = self.prefix_kv[0][0].shape[1] if self.prefix_kv else 0
        return full[s.cached - offset:]

    def _step(self) -> bool:
        batch = self._admit()
        worked = False
        if batch:
            try:
                self._prefill(batch, [self._prompt_ids(s) for s in batch], len(self.rows))
            finally:
                self.rows.extend(batch)
                self.prefilling = 0
            worked = True
        elif self.long is not None:
            todo = self._prompt_ids(self.long)
            chunk = todo[:self.prefill_tokens]
            last = len(chunk) == len(todo)
            self._prefill([self.long], [chunk], len(self.rows), sample=last)
            if last:
                self.rows.append(self.long)
                self.long = None
            worked = True
        self._finish_done()
        if self.rows:
            self._decode()
            self._finish_done()
            worked = True
        return worked

    def _finish_done(self) -> None:
        self._remove([i for i, s in enumerate(self.rows) if s.done])

    # --- forwards --------------------------------------------------------------------------------------------
    def _mask(self, write_pos: torch.Tensor) -> torch.Tensor:
        """Row r's query i (at cache position p) sees positions 0..p of its own slot (within the sliding window)."""
        kv = int(write_pos.max()) + 1
        j = torch.arange(kv, device=self.device)
        visible = j[None, None, :] <= write_pos[:, :, None]
        if self.window:
            visible &= j[None, None, :] > write_pos[:, :, None] - self.window
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[:, None]

    def _forward(self, rows: list[SequenceState], tokens: torch.Tensor, write_pos: torch.Tensor, slot0: int):
        self.cache.plan(slot0, write_pos)
        if self.lean is not None and (tokens.shape[1] == 1 or self.lean.prefills) and not (tokens < 0).any():
            self.adapters.lora.plan([s.adapter for s in rows], self.device)
            lo, hi = int(write_pos.min()), int(write_pos.max())
            # one query a row, every row at one position: each sees 0..its position
            everything = tokens.shape[1] == 1 and lo == hi and not (self.window and hi >= self.window)
            out = self.lean.forward(tokens, write_pos, self.cache, None if everything else self._mask(write_pos),
                                    self.adapters.lora)
            self.steps += 1
            return out
        kw = dict(position_ids=write_pos, attention_mask=self._mask(write_pos), cache=self.cache, use_cache=True,
                  logits_to_keep=1)
        if self.virtual_prompt is not None:
            embed = self.model.get_input_embeddings()
            x = embed(tokens.clamp(min=0))
            virtual = tokens < 0
            if virtual.any():
                x[virtual] = self.virtual_prompt[(-tokens[virtual] - 1)].to(x.dtype)
            kw["inputs_embeds"] = x
        else:
            kw["input_ids"] = tokens
        self.adapters.lora.plan([s.adapter for s in rows], self.device)
        out = self.model(**kw)
        self.steps += 1
        return out.logits[:, -1].float()

    def _prefill(self, seqs: list[SequenceState], chunks: list[list[int]], slot0: int, sample: bool = True) -> None:
        """One forward over newcomers' prompts, right-aligned so every row's last real token is the last query."""
        q = max(map(len, chunks))
        tokens = torch.full((len(seqs), q), self.pad_id, dtype=torch.long)
        pos = torch.empty((len(seqs), q), dtype=torch.long)
        for r, (s, c) in enumerate(zip(seqs, chunks)):
            m = q - len(c)
            tokens[r, m:] = torch.tensor(c, dtype=torch.long)
            pos[r, m:] = torch.arange(s.cached, s.cached + len(c))
            pos[r, :m] = torch.arange(s.cached + len(c), s.cached + len(c) + m)  # scratch, overwritten later
        logits = self._forward(seqs, tokens.to(self.device), pos.to(self.device), slot0)
        for s, c in zip(seqs, chunks):
            s.cached += len(c)
        if sample:
            self._emit(seqs, logits)

    def _decode(self) -> None:
        rows = self.rows
        tokens = torch.tensor([[s.tokens[-1]] for s in rows], dtype=torch.long, device=self.device)
        pos = torch.tensor([[s.cached] for s in rows], dtype=torch.long, device=self.device)
        logits = self._forward(rows, tokens, pos, 0)
        for s in rows:
            s.cached += 1
        self._emit(rows, logits)

    def _emit(self, seqs: list[SequenceState], logits: torch.Tensor) -> None:
        apply_masks(logits, [s.constraint for s in seqs])
        chosen = choose(logits, [s.params for s in seqs], [s.generator for s in seqs])
        want = [s.params.top_logprobs if s.params.logprobs else -1 for s in seqs]
        lps = token_logprobs(logits, chosen, [max(0, w) for w in want]) if max(want) >= 0 else None
        now = time.perf_counter()
        m = self.metrics
        for i, (s, tok) in enumerate(zip(seqs, chosen.tolist())):
            req = s.request
            if req.cancelled or s.done:
                s.done = True  # leaves the batch now
                continue
            if req.first_token is None:
                req.first_token = now
                m.ttft.labels(self.name).observe(now - req.submitted)
            if s.last_time is not None:
                m.itl.labels(self.name).observe(now - s.last_time)
            s.last_time = now
            m.tokens.labels(self.name).inc()
            events = self.detok.accept(s, tok, lps[i] if lps is not None and want[i] >= 0 else None)
            if s.constraint is not None and not s.done:
                s.constraint.after(tok, s.text)
            for ev in events:
                req.emit(ev)
