"""Chat with an exported ONNX model through onnxruntime-genai (the same interface as ChatModel)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class OnnxChatModel:
    """``slmtune.load(DIR)`` on a folder written by ``slmtune export onnx``. Prompts are rendered with the exported
    tokenizer's chat template (the one training used); decoding is greedy unless ``temperature > 0``."""

    runtime = "onnx"

    def __init__(self, path: str | Path, provider: str = "cpu"):
        import onnxruntime_genai as og

        from slmtune.export.onnx import is_onnx_dir
        from slmtune.models.loading import load_tokenizer

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

    def _ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _tokens(self, messages: list[dict], max_new_tokens: int, temperature: float, top_p: float,
                seed: int | None, ids: list[int] | None = None) -> Iterator[int]:
        import onnxruntime_genai as og

        ids = ids if ids is not None else self._ids(messages)
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
             seed: int | None = None) -> str:
        toks = list(self._tokens(messages, max_new_tokens, temperature, top_p, seed))
        return self.tokenizer.decode(toks, skip_special_tokens=True).strip()

    def chat_batch(self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None) -> list[str]:
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


class OnnxServer:
    """The service's ONNX models (``slmtune serve --onnx NAME=DIR``): loaded on first use, one lock each."""

    def __init__(self, models: dict[str, str | Path]):
        import threading

        self.dirs = {name: Path(d) for name, d in models.items()}
        self.loaded: dict[str, OnnxChatModel] = {}
        self.locks = {name: threading.Lock() for name in self.dirs}
        self._load_lock = threading.Lock()

    def _model(self, name: str) -> OnnxChatModel:
        with self._load_lock:
            if name not in self.loaded:
                self.loaded[name] = OnnxChatModel(self.dirs[name])
            return self.loaded[name]

    def _run(self, name, messages, max_new_tokens, temperature, top_p, seed, stop):
        m = self._model(name)
        ids = m._ids(messages)
        prompt = len(ids)
        toks: list[int] = []
        info = {"finish_reason": "length"}

        def pieces():
            shown = ""
            with self.locks[name]:
                for tok in m._tokens(messages, max_new_tokens, temperature, top_p, seed, ids=ids):
                    toks.append(tok)
                    text = m.tokenizer.decode(toks, skip_special_tokens=True)
                    if text.endswith("\ufffd"):
                        continue
                    cut = min((text.find(s) for s in stop or [] if s and s in text), default=-1)
                    if cut >= 0:
                        if cut > len(shown):
                            yield text[len(shown):cut]
                        info["finish_reason"] = "stop"
                        break
                    yield text[len(shown):]
                    shown = text
                else:
                    if len(toks) < max_new_tokens:
                        info["finish_reason"] = "stop"
            info["completion_tokens"] = len(toks)

        return prompt, pieces(), info

    # the same call shape as MultiAdapterServer (an exported model has its adapter merged in: ``adapter`` is None)
    def generate(self, name: str, adapter: None, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None):
        from slmtune.inference.multi import Generation

        prompt, pieces, info = self._run(name, messages, max_new_tokens, temperature, top_p, seed, stop)
        text = "".join(pieces)
        return Generation(text.strip(), prompt, info["completion_tokens"], info["finish_reason"])

    def stream(self, name: str, adapter: None, messages: list[dict], *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None):
        return self._run(name, messages, max_new_tokens, temperature, top_p, seed, stop)
