"""Chat with an exported ONNX model through onnxruntime-genai (the same interface as ChatModel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from slmtune.artifacts import is_onnx_dir
from slmtune.data.tools import CALL_OPEN, Reply
from slmtune.inference.detokenizer import Detokenizer
from slmtune.inference.metrics import ServingMetrics
from slmtune.inference.request import Failed, GenerationRequest, Overloaded, PromptTooLong
from slmtune.inference.serving import ModelServer, Prepared
from slmtune.models.loading import load_tokenizer


class OnnxChatModel:
    """``slmtune.load(DIR)`` on a folder written by ``slmtune export onnx``. Prompts are rendered with the exported
    tokenizer's chat template (the one training used); decoding is greedy unless ``temperature > 0``."""

    runtime = "onnx"

    def __init__(self, path: str | Path, provider: str = "cpu"):
        import onnxruntime_genai as og

        self.path = Path(path)
        if not is_onnx_dir(self.path):
            raise FileNotFoundError(f"{self.path}: not an exported ONNX model (model.onnx and genai_config.json "
                                    "expected; make one with `slmtune export onnx`)")
        try:
            config = og.Config(str(self.path))
            if provider != "cpu":
                config.clear_providers()
                config.append_provider(provider)
            self.model = og.Model(config)
        except Exception as e:  # noqa: BLE001 - onnxruntime-genai raises plain RuntimeErrors
            raise ValueError(f"{self.path}: ONNX Runtime could not load the model: {e}") from None
        self.tokenizer = load_tokenizer(self.path)

    def _ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return ModelServer.prompt_ids(self.tokenizer, messages, tools=tools)

    def _tokens(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
                seed: int | None, ids: list[int] | None = None, tools: list[dict] | None = None) -> Iterator[int]:
        import onnxruntime_genai as og

        ids = ids if ids is not None else self._ids(messages, tools)
        params = og.GeneratorParams(self.model)
        opts = {"max_length": len(ids) + max_new_tokens, "do_sample": bool(temperature and temperature > 0)}
        if opts["do_sample"]:
            opts |= {"temperature": temperature, "top_p": top_p or 1.0}
            if seed is not None:
                opts["random_seed"] = seed
        params.set_search_options(**opts)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        eos = self.tokenizer.eos_token_id
        while not gen.is_done():
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            if tok == eos:
                break
            yield tok

    def chat(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, *, tools: list[dict] | None = None, tool_choice="auto",
             parallel_tool_calls: bool = True, response_format: dict | None = None) -> Reply:
        """As ``ChatModel.chat``; calls are read from the text, not forced: ``tool_choice`` "required" or a named
        function and ``response_format`` need constrained decoding, which this runtime lacks (a ValueError)."""
        OnnxServer.grammar(None, tools, tool_choice, parallel_tool_calls, response_format)
        toks = list(self._tokens(messages, max_new_tokens, temperature, top_p, seed, tools=tools))
        text = self.tokenizer.decode(toks, skip_special_tokens=True)
        if tools and tool_choice == "none":
            text = text.split(CALL_OPEN)[0]
        return Reply.read(text, tools, tool_choice)

    def chat_batch(self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None) -> list[Reply]:
        return [self.chat(c, max_new_tokens, temperature, top_p, seed) for c in conversations]

    def chat_stream(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
        toks: list[int] = []
        shown = ""
        for tok in self._tokens(messages, max_new_tokens, temperature, top_p, seed):
            toks.append(tok)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text


class OnnxEngine:
    """Continuous batching for one exported model through onnxruntime-genai's ``Engine`` (its scheduler and KV
    cache; up to ``EngineCapabilities.configured_max_batch_size`` sequences decode together, the rest wait in it).
    Every onnxruntime-genai call happens on this engine's own thread; requests and cancels arrive through an inbox.
    Tokens go through the same detokenizer (stop strings, multi-byte characters) as the PyTorch engine."""

    def __init__(self, name: str, model: OnnxChatModel, *, max_queued: int = 128, metrics=None):
        import threading

        import onnxruntime_genai as og

        self.name = name
        self.model = model
        self.engine = None  # made on its own thread: onnxruntime-genai binds an Engine to the thread that made it
        self._ready = threading.Event()
        self.detok = Detokenizer(model.tokenizer)
        self.max_queued = max_queued
        self.metrics = metrics or ServingMetrics()
        self.max_length = int(getattr(model.tokenizer, "model_max_length", 0) or 0)
        self._inbox: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.live: dict = {}  # og.Request -> SequenceState
        self.queued = 0
        self.thread = threading.Thread(target=self._loop, args=(og,), name=f"slmtune-onnx[{name}]", daemon=True)
        self.thread.start()
        self._ready.wait()
        if self.engine is None:
            raise ValueError(f"{model.path}: onnxruntime-genai could not start its engine: {self._error}")

    def wake(self) -> None:
        self._wake.set()

    def submit(self, prompt: list[int], params, *, n: int = 1, adapter=None, emit):
        if params.logprobs:
            raise ValueError("logprobs are not available for ONNX Runtime models")
        if not prompt:
            raise PromptTooLong("The prompt is empty.")
        with self._lock:
            if self.queued + n > self.max_queued:
                raise Overloaded(f"The server is at capacity for model '{self.name}'. Please retry after a short "
                                 "wait.", retry_after=1.0)
            req = GenerationRequest(self, prompt, params, n, None, emit)
            self.queued += n
            self._inbox.append(req)
        self.wake()
        return req

    def shutdown(self) -> None:
        self._stop = True
        self.wake()
        self.thread.join(10)

    def _begin(self, seq) -> None:
        import numpy as np
        import onnxruntime_genai as og

        p = seq.params
        r = self.engine.create_request()
        opts = og.TurnOptions(r)
        opts.set_max_generated_tokens(p.max_new_tokens)
        opts.set_do_sample(not p.greedy)
        if not p.greedy:
            opts.set_temperature(p.temperature)
            opts.set_top_p(p.top_p)
            opts.set_seed((p.seed * 1_000_003 + seq.choice) % (2**31) if p.seed is not None else
                          int(seq.generator.initial_seed() % (2**31)))
        seq.og = (r, r.begin_turn(np.asarray(seq.prompt, dtype=np.int32), opts))
        self.live[r] = seq

    def _end(self, seq) -> None:
        r, turn = seq.og
        self.live.pop(r, None)
        try:
            r.close()
        except Exception:  # noqa: BLE001 - already finished inside onnxruntime-genai
            pass

    def _loop(self, og) -> None:
        import time

        try:
            self.engine = og.Engine(self.model.model)
            self.capacity = self.engine.get_capabilities().configured_max_batch_size
            buf = self.engine.create_event_buffer(256)
        except Exception as e:  # noqa: BLE001 - raised in the constructor's thread
            self._error = e
            self.engine = None
            return
        finally:
            self._ready.set()
        while not self._stop:
            self._wake.clear()
            with self._lock:
                inbox, self._inbox = self._inbox, []
                self.queued -= sum(len(r.seqs) for r in inbox)
            for req in inbox:
                for seq in req.seqs:
                    try:
                        self._begin(seq)
                    except Exception as e:  # noqa: BLE001 - reported to the request
                        req.cancelled = True
                        req.emit(Failed(e))
                        break
            for seq in [s for s in self.live.values() if s.request.cancelled]:
                self._end(seq)
            if not self.live:
                self._wake.wait(0.5)
                continue
            try:
                events = list(self.engine.run(buf))
            except Exception as e:  # noqa: BLE001 - fails what was running, not the server
                for seq in list(self.live.values()):
                    seq.request.cancelled = True
                    seq.request.emit(Failed(e))
                    self._end(seq)
                continue
            now = time.perf_counter()
            for ev in events:
                seq = self.live.get(ev.request)
                if seq is None or seq.request.cancelled:
                    continue
                req = seq.request
                if req.first_token is None:
                    req.first_token = now
                    self.metrics.ttft.labels(self.name).observe(now - req.submitted)
                self.metrics.tokens.labels(self.name).inc()
                out = [] if seq.done else self.detok.accept(seq, int(ev.token), None)
                finished = "FINISHED" in str(ev.flags) or str(ev.finish_reason) != "FinishReason.NONE"
                if finished and not seq.done:
                    self.detok.finish(seq, "length" if "MAX" in str(ev.finish_reason) else "stop", out)
                for e in out:
                    req.emit(e)
                if seq.done:
                    self._end(seq)
            self.metrics.running.labels(self.name).set(len(self.live))


class OnnxServer:
    """The service's ONNX models (``slmtune serve --onnx NAME=DIR``): loaded on first use, each batched by its own
    :class:`OnnxEngine`. Same ``prepare`` / ``submit`` as ``serving.ModelServer``."""

    def __init__(self, models: dict[str, str | Path], *, max_running: int = 32, max_queued: int = 128,
                 metrics=None):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.dirs = {name: Path(d) for name, d in models.items()}
        self.max_queued = max_queued
        self.metrics = metrics
        self.engines: dict[str, object] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slmtune-onnx-load")

    def prepare_sync(self, name: str):
        with self._lock:
            if name not in self.engines:
                model = OnnxChatModel(self.dirs[name])
                self.engines[name] = Prepared(OnnxEngine(name, model, max_queued=self.max_queued,
                                                         metrics=self.metrics), load_tokenizer(self.dirs[name]), None)
            return self.engines[name]

    async def prepare(self, name: str):
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self._pool, self.prepare_sync, name)

    def submit(self, prepared, messages: list[dict], params, *, n: int = 1, emit, project: str | None = None,
               tools: list[dict] | None = None, tool_choice="auto", parallel_tool_calls: bool = True,
               response_format: dict | None = None):
        """As :meth:`ModelServer.submit`; ``project`` is accepted for the same call and unused: one ONNX Runtime
        engine per model runs its requests in its own (FIFO) order."""
        self.grammar(prepared, tools, tool_choice, parallel_tool_calls, response_format)  # refuses what needs one
        engine = prepared.engine
        return engine.submit(ModelServer.prompt_ids(prepared.tokenizer, messages, engine.max_length or None, tools),
                             params, n=n, emit=emit)

    @staticmethod
    def grammar(prepared, tools: list[dict] | None, tool_choice="auto", parallel: bool = True,
                response_format: dict | None = None) -> None:
        """onnxruntime-genai's engine takes no per-token mask: tools with ``auto`` work (calls are read from the
        text, not forced); what needs constrained decoding is refused with a ValueError."""
        if tools and (tool_choice == "required" or isinstance(tool_choice, dict)):
            raise ValueError("tool_choice 'required' or a named function needs constrained decoding, which ONNX "
                             "Runtime models do not have (serve the tuned model itself for it)")
        if response_format and response_format.get("type") != "text":
            raise ValueError("response_format needs constrained decoding, which ONNX Runtime models do not have "
                             "(serve the tuned model itself for it)")
        return None

    def shutdown(self) -> None:
        for p in self.engines.values():
            p.engine.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
