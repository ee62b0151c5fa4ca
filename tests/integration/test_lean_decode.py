"""The lean decode step (inference/decode.py) against transformers' forward, on the tiny seeded models: the same
greedy tokens and log-probabilities in fp32 (prefill and decode; plain, with per-row LoRA, Phi-3's fused layers),
oneDNN-packed bf16 projections bit-identical to ``F.linear`` and packed fp32 ones within rounding of it (both with
the adapters' ``A`` packed into them), fbgemm's fp16 weights within fp16 rounding of fp32 (and what ``slmtune serve``
picks by itself on CPUs without fast bf16), the int8 weights close, weight changes in place followed, and models it
does not cover left to transformers."""

from __future__ import annotations

import os
import queue

import pytest
import torch

os.environ["SLMTUNE_TEST_MODELS"] = "1"

from slmtune.inference.batching import BatchEngine
from slmtune.inference.decode import (
    LeanDecoder,
    _Projection,
    fp16_available,
    int8_available,
    lean_decoder,
    packs,
    prefers_fp16,
    unsupported,
)
from slmtune.inference.request import Finished
from slmtune.inference.sampling import SamplingParams
from slmtune.inference.serving import ModelServer, collect
from slmtune.models.loading import load_base_model, load_tokenizer
from slmtune.models.registry import resolve

from .test_serving_engine import _msgs, make_adapter


def _run(engine: BatchEngine, tokenizer, k: int = 6, tokens: int = 16, logprobs: bool = False,
         first: int = 0) -> list:
    """k requests (prompts ``first`` ..) submitted together (different lengths, so rows hold different positions);
    each one's tokens, or its tokens' logprob dicts."""
    reqs = []
    for i in range(first, first + k):
        ids = ModelServer.prompt_ids(tokenizer, _msgs(i))
        events: queue.SimpleQueue = queue.SimpleQueue()
        params = SamplingParams(max_new_tokens=tokens, logprobs=logprobs, top_logprobs=5 if logprobs else 0)
        reqs.append((engine.submit(ids, params, emit=events.put), events))
    out = []
    for req, events in reqs:
        got = []
        while True:
            ev = events.get(timeout=60)
            got.append(ev)
            if isinstance(ev, Finished):
                break
        out.append(req.seqs[0].tokens if not logprobs else [lp for e in got for lp in getattr(e, "logprobs", [])
                                                              or []])
    return out


def _engine(base: str, precision: str, decode: str) -> tuple[BatchEngine, object]:
    model = load_base_model(resolve(base), precision)
    return BatchEngine(model, load_tokenizer(resolve(base)), name=f"{base}-{decode}", max_running=8,
                       decode=decode), load_tokenizer(resolve(base))


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-phi3"])
def test_fp32_lean_step_gives_transformers_tokens_and_logprobs(base):
    """In fp32 the lean loop prefills the prompts (six of different lengths at once, right-aligned) and decodes:
    the same greedy tokens as transformers' forward, log-probabilities within 1e-4."""
    lean, tok = _engine(base, "fp32", "auto")
    plain, _ = _engine(base, "fp32", "transformers")
    try:
        assert lean.lean is not None and lean.lean.prefills and plain.lean is None
        assert _run(lean, tok) == _run(plain, tok)
        a, b = _run(lean, tok, tokens=4, logprobs=True), _run(plain, tok, tokens=4, logprobs=True)
        assert all(len(x) == 4 for x in a)
        for x, y in zip(a, b):
            assert [t["token"] for t in x] == [t["token"] for t in y]
            assert max(abs(s["logprob"] - t["logprob"]) for s, t in zip(x, y)) < 1e-4
    finally:
        lean.shutdown()
        plain.shutdown()


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_llama_style_architectures(arch):
    """Qwen2 (q/k/v biases) and Mistral, random tiny ones on the tiny tokenizer: the lean step's tokens equal
    transformers' forward in fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = load_tokenizer(resolve("tiny-llama"))
    config = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert unsupported(model) is None
    engines = {}
    for decode in ("auto", "transformers"):
        copy = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        copy.load_state_dict(model.state_dict())
        engines[decode] = BatchEngine(copy, tok, name=f"{arch}-{decode}", max_running=8, decode=decode)
    try:
        assert engines["auto"].lean is not None
        assert _run(engines["auto"], tok) == _run(engines["transformers"], tok)
    finally:
        for engine in engines.values():
            engine.shutdown()


def _mixed_batch(tmp_path, decodes: tuple[str, ...]) -> tuple[dict, dict]:
    """Six requests in one batch, two LoRA adapters and the base mixed, through one fp32 ``ModelServer`` per decode
    path: per path, each request's (tokens, logprob dicts), and the base engine's lean step."""
    server = {d: ModelServer(precision="fp32", max_running=8, decode=d) for d in decodes}
    ads = [("ft:tiny-llama:t:a0", make_adapter("tiny-llama", tmp_path / "a0", 3)),
           ("ft:tiny-llama:t:a1", make_adapter("tiny-llama", tmp_path / "a1", 4))]
    who = [None, ads[0], ads[1], ads[0], None, ads[1]]
    got, lean = {}, {}
    try:
        for d, srv in server.items():
            pending = []
            for i, a in enumerate(who):
                events: queue.SimpleQueue = queue.SimpleQueue()
                req = srv.submit(srv.prepare_sync("tiny-llama", a), _msgs(i),
                                 SamplingParams(max_new_tokens=12, logprobs=True), emit=events.put)
                pending.append((req, events))
            done = [(req, collect(req, events.get, timeout=60)) for req, events in pending]
            got[d] = [(req.seqs[0].tokens, c.choices[0].logprobs) for req, c in done]
            lean[d] = srv.engine("tiny-llama").lean
    finally:
        for srv in server.values():
            srv.shutdown()
    return got, lean


def test_per_row_lora_on_the_lean_step(tmp_path):
    """Mixed adapters and the base in one batch: the same tokens as transformers' forward with the same hooks."""
    got, lean = _mixed_batch(tmp_path, ("auto", "transformers"))
    assert lean["auto"] is not None
    tokens = {d: [t for t, _ in rows] for d, rows in got.items()}
    assert tokens["auto"] == tokens["transformers"]
    assert len({tuple(t) for t in tokens["auto"]}) > 2, "the adapters should change the answers"


def test_fused_projections_share_the_models_weights():
    """q/k/v and gate/up become views of one tensor each: no second copy of the weights."""
    model = load_base_model(resolve("tiny-llama"), "fp32")
    before = sum(p.numel() for p in model.parameters())
    lean = LeanDecoder(model)
    attn = model.model.layers[0].self_attn
    block = lean.blocks[0]
    assert attn.q_proj.weight.data_ptr() == block.qkv_w.data_ptr()
    assert attn.k_proj.weight.data_ptr() == block.qkv_w.data_ptr() + attn.q_proj.weight.numel() * 4
    assert model.model.layers[0].mlp.up_proj.weight.untyped_storage().data_ptr() == block.gu_w.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == before


@pytest.mark.skipif(not packs(torch.bfloat16), reason="no oneDNN packed bf16 linear here (torch build or CPU)")
def test_packed_bf16_projection_is_bit_identical_to_linear():
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    proj = _Projection(w, bias, "model")
    assert proj.packed is not None
    for shape in [(1, 1, 64), (5, 1, 64), (3, 7, 64)]:
        x = torch.randn(*shape, dtype=torch.bfloat16)
        assert torch.equal(proj(x), torch.nn.functional.linear(x, w, bias))


@pytest.mark.skipif(not packs(torch.float32), reason="fp32 weights are packed only on CPUs without fast bf16")
def test_packed_fp32_projection_stays_within_rounding_of_linear():
    """fp32 weights packed for oneDNN (CPUs without fast bf16): within float rounding of ``F.linear``'s products
    (not bit for bit: MKL and oneDNN sum in different orders), at the row counts a decode step has."""
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64), torch.randn(96)
    proj = _Projection(w, bias, "model")
    assert proj.packed is not None and _Projection(w, bias, "model", pack=False).packed is None
    for shape in [(1, 1, 64), (8, 1, 64), (32, 1, 64), (3, 7, 64)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(proj(x), torch.nn.functional.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_bf16_weights_changed_in_place_are_followed():
    """The rollout engine merges each step's adapter into the weights in place: after ``weights_changed`` the
    packed lean step decodes what a lean step built on the changed weights decodes. One request at a time: in bf16
    the products depend on how many rows share a step, and two submissions may or may not meet in one."""

    def change(model):
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.up_proj.weight.mul_(-3.0)
                layer.self_attn.v_proj.weight.mul_(0.25)

    live, tok = _engine("tiny-llama", "bf16", "auto")
    try:
        before = _run(live, tok, k=1, tokens=12)
        change(live.model)
        live.weights_changed()
        after = _run(live, tok, k=1, tokens=12)
    finally:
        live.shutdown()
    model = load_base_model(resolve("tiny-llama"), "bf16")
    change(model)
    fresh = BatchEngine(model, tok, name="fresh", max_running=8)
    try:
        assert after != before
        assert after == _run(fresh, tok, k=1, tokens=12)
    finally:
        fresh.shutdown()


def _random_lora(model, r: int, seed: int, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"base_model.model.{name}.lora_{ab}.weight": torch.randn(*shape, generator=g) * 0.05
            for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name.endswith(targets)
            for ab, shape in (("A", (r, m.in_features)), ("B", (m.out_features, r)))}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_adapters_ride_in_the_packed_base_matmul_with_the_same_bits(monkeypatch, precision):
    """Where the weights are packed (bf16 on CPUs with fast bf16, fp32 on the others) the stacked LoRA ``A``
    matrices are packed after the base weights (one matmul gives both): every step's logits are the same bits as
    with ``A`` multiplied apart — rows with adapters of two ranks, base rows beside them, steps of base rows only,
    and steps after an adapter unloaded (the packed copy narrows to the slots still in use)."""
    if not packs(torch.bfloat16 if precision == "bf16" else torch.float32):
        pytest.skip(f"{precision} weights are not packed on this CPU")
    from slmtune.inference.kv_slots import SlotCache
    from slmtune.inference.lora_batch import BatchedLoRA

    plan = [[None, "a0", "a1", "a0"]] * 3 + [[None] * 4] + [["a0", None, "a0", "a0"]] * 2

    def decode() -> tuple[list[torch.Tensor], LeanDecoder, list[int]]:
        model = load_base_model(resolve("tiny-llama"), precision)
        lean, lora = LeanDecoder(model), BatchedLoRA(model, 4)
        lora.load("a0", {"r": 4, "lora_alpha": 8, "peft_type": "LORA"}, _random_lora(model, 4, 1, ("q_proj", "o_proj")))
        lora.load("a1", {"r": 8, "lora_alpha": 8, "peft_type": "LORA"},
                  _random_lora(model, 8, 2, ("v_proj", "up_proj", "down_proj")))
        cache = SlotCache(model.config.num_hidden_layers, 4, 64, torch.device("cpu"), dtype=torch.float32)
        tokens, out, widths = torch.tensor([[5], [17], [33], [60]]), [], []
        with torch.inference_mode():
            for step, rows in enumerate(plan):
                if step == 4:
                    lora.unload("a1")
                pos = torch.full((4, 1), step)
                cache.plan(0, pos)
                lora.plan(rows, torch.device("cpu"))
                out.append(lean.forward(tokens, pos, cache, None, lora))
                widths.append(lean.blocks[0].proj["qkv"].extra)
        return out, lean, widths

    with monkeypatch.context() as m:
        m.setattr(_Projection, "widenable", lambda self: False)
        apart, plain, _ = decode()
    joint, lean, widths = decode()
    assert all(torch.equal(x, y) for x, y in zip(apart, joint))
    assert not any(p.extra for b in plain.blocks for p in b.proj.values())
    # q (rank 4) and v (rank 8) over two slots, then over a0's slot alone
    assert widths == [24, 24, 24, 24, 12, 12]
    assert lean.blocks[0].proj["o"].extra == 4


@pytest.mark.skipif(int8_available() is not None, reason="no int8 weight kernel in this torch build")
def test_int8_weights_stay_close_to_bf16():
    """int8 weights (one scale per output channel), one request at a time (the int8 kernel serves steps of few
    rows): the decoded tokens' log-probabilities within a small distance of the bf16 step's, the same tokens for
    most steps, and not bit-identical (the int8 weights were used)."""
    a, tok = _engine("tiny-llama", "bf16", "auto")
    b, _ = _engine("tiny-llama", "bf16", "int8")
    try:
        assert b.lean is not None and b.lean.weights == "int8"
        x, y = [], []
        for i in range(6):
            for engine, out in ((a, x), (b, y)):
                # the first token comes from the prefill (the same bf16 weights in both): the rest decoded
                out.append(_run(engine, tok, k=1, tokens=4, logprobs=True, first=i)[0][1:])
        pairs = [(s, t) for xs, ys in zip(x, y) for s, t in zip(xs, ys)]
        assert len(pairs) >= 12
        assert sum(s["token"] == t["token"] for s, t in pairs) >= 0.75 * len(pairs)
        gaps = [abs(s["logprob"] - t["logprob"]) for s, t in pairs if s["token"] == t["token"]]
        assert max(gaps) < 0.5
        assert max(gaps) > 0
    finally:
        a.shutdown()
        b.shutdown()


needs_fp16 = pytest.mark.skipif(fp16_available() is not None, reason="no fbgemm fp16 kernel in this torch build")


@needs_fp16
def test_fp16_projection_rounds_only_the_weights():
    """fbgemm's fp16 matrix: the product of the fp16-rounded weights with the fp32 input, summed in fp32 (within
    float rounding of that, at the row counts of decode steps and prompts), bias included; not fp32's bits."""
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64), torch.randn(96)
    proj = _Projection(w, bias, "fp16")
    for shape in [(1, 1, 64), (8, 1, 64), (32, 1, 64), (3, 7, 64)]:
        x = torch.randn(*shape)
        got = proj(x)
        assert got.dtype == torch.float32 and got.shape == (*shape[:-1], 96)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, w.half().float(), bias), rtol=1e-5, atol=1e-5)
        assert not torch.equal(got, torch.nn.functional.linear(x, w, bias))
    x = torch.randn(2, 1, 64, dtype=torch.bfloat16)  # a bf16 model asked for fp16 weights: bf16 in, bf16 out
    assert proj(x).dtype == torch.bfloat16


@needs_fp16
def test_fp16_weights_decode_close_to_fp32_with_and_without_adapters(tmp_path):
    """The lean step with fp16 weights against fp32 on one fp32 model, mixed adapters and the base in one batch
    (the adapters' ``A`` and ``B`` as fp16 matrices too): the same greedy tokens for most steps, the chosen
    tokens' log-probabilities within 0.02 while the tokens agree, and not fp32's numbers."""
    got, lean = _mixed_batch(tmp_path, ("auto", "fp16"))
    assert lean["fp16"].weights == "fp16" and lean["auto"].weights == "model"
    assert {f.b.mode for per in lean["fp16"]._fused for f in per.values() if f is not None} == {"fp16"}
    pairs, gaps = 0, []
    for (_, x), (_, y) in zip(got["auto"], got["fp16"]):
        for s, t in zip(x, y):
            pairs += 1
            if s["token"] != t["token"]:
                break
            gaps.append(abs(s["logprob"] - t["logprob"]))
    assert len(gaps) >= 0.75 * pairs
    assert 0 < max(gaps) < 0.02


@needs_fp16
def test_serve_picks_fp16_weights_only_where_auto_serves_fp32_on_a_cpu_without_fast_bf16(monkeypatch):
    """``slmtune serve`` with precision and decode both ``auto``: fp16 weights for an fp32 model on a CPU without
    fast bf16; the model's own weights where the precision was asked for (fp32: PyTorch's numbers), where the CPU
    has fast bf16, or where the decode was asked for."""
    from slmtune.inference import decode

    fp32 = load_base_model(resolve("tiny-llama"), "fp32")
    monkeypatch.setattr(decode, "cpu_bf16", lambda: False)
    assert prefers_fp16(fp32)
    assert ModelServer().decode_for(fp32) == "fp16"
    assert ModelServer(precision="fp32").decode_for(fp32) == "auto"
    assert ModelServer(decode="int8").decode_for(fp32) == "int8"
    assert not prefers_fp16(load_base_model(resolve("tiny-llama"), "bf16"))
    monkeypatch.setattr(decode, "available_memory_mb", lambda: 0.1)  # no room for the fp16 copy
    assert ModelServer().decode_for(fp32) == "auto"
    monkeypatch.undo()
    monkeypatch.setattr(decode, "cpu_bf16", lambda: True)
    assert ModelServer().decode_for(fp32) == "auto"


def test_models_it_does_not_cover_stay_on_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert "gpt2" in unsupported(model)
    assert lean_decoder(model, "auto") is None
    with pytest.raises(ValueError, match="gpt2"):
        lean_decoder(model, "int8")
    with pytest.raises(ValueError, match="decode must be one of"):
        lean_decoder(model, "fast")
