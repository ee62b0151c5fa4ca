"""The continuous-batching engine on tiny models (fp32): batched answers equal answers served alone and
transformers' own generate(), no bleed between rows, seeds, n, stop strings, cancellation, backpressure, adapter LRU,
and adapter kinds that get an engine of their own."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ["SLMTUNE_TEST_MODELS"] = "1"

from slmtune.inference.request import Overloaded
from slmtune.inference.sampling import SamplingParams
from slmtune.inference.serving import ModelServer, collect
from slmtune.models.loading import load_base_model, load_tokenizer
from slmtune.models.registry import resolve

QUESTIONS = ["What is the capital of France?", "hello", "Please help me with my order, the kettle is broken.",
             "How do I reset my device? " * 3, "Your warranty lasts two years.", "the lamp",
             "What is your favorite city? " * 5, "Thank you for contacting support."]


def _msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def make_adapter(base: str, out: Path, seed: int, **kw) -> Path:
    """A LoRA (or other PEFT) adapter with random, non-zero weights: each one changes the model's answers."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = ["qkv_proj", "gate_up_proj"] if "phi3" in base else ["q_proj", "v_proj", "up_proj"]
    config = kw.pop("config", None) or LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                                  **kw)
    model = get_peft_model(load_base_model(resolve(base), "fp32"), config)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    d = tmp_path_factory.mktemp("adapters")
    return {f"m{i}": (f"ft:tiny-llama:test:m{i}", make_adapter("tiny-llama", d / f"m{i}", 100 + i)) for i in range(3)}


@pytest.fixture(scope="module")
def server():
    srv = ModelServer(precision="fp32", max_running=8, max_queued=64, adapter_cache_size=8)
    yield srv
    srv.shutdown()


def submit(srv: ModelServer, base: str, adapter, msgs, params, n: int = 1):
    events: queue.SimpleQueue = queue.SimpleQueue()
    req = srv.submit(srv.prepare_sync(base, adapter), msgs, params, n=n, emit=events.put)
    return req, events


def reference(base: str, adapter, msgs, max_new_tokens: int) -> list[int]:
    """transformers' generate() on the plain PEFT model: the ground truth for greedy tokens."""
    from peft import PeftModel

    tok = load_tokenizer(resolve(base))
    model = load_base_model(resolve(base), "fp32")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter[1]))
    ids = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    out = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def tokens_of(req) -> list[int]:
    return req.seqs[0].tokens


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-phi3"])
def test_a_batch_of_eight_gives_each_request_its_answer_alone(base, tmp_path):
    """Mixed adapters and the plain base, different prompt lengths, joining at different steps: every request's
    greedy tokens equal the same request served alone, and transformers' generate()."""
    ads = [(f"ft:{base}:t:a{i}", make_adapter(base, tmp_path / f"a{i}", 10 + i)) for i in range(3)]
    who = [None, ads[0], ads[1], ads[2], None, ads[0], ads[1], ads[2]]
    params = SamplingParams(max_new_tokens=24)
    srv = ModelServer(precision="fp32", max_running=8)
    try:
        alone = []
        for i, a in enumerate(who):
            req, ev = submit(srv, base, a, _msgs(i), params)
            collect(req, ev.get, timeout=60)
            alone.append(list(tokens_of(req)))
        # joining at different steps: each newcomer waits until the previous request has produced 3 tokens
        steps_alone = srv.engine(base).steps
        reqs = []
        for i, a in enumerate(who):
            reqs.append(submit(srv, base, a, _msgs(i), params))
            deadline = time.time() + 30
            while len(tokens_of(reqs[-1][0])) < 3 and not reqs[-1][0].seqs[0].done and time.time() < deadline:
                time.sleep(0.002)
        for req, ev in reqs:
            collect(req, ev.get, timeout=60)
        batched = [tokens_of(r) for r, _ in reqs]
        assert batched == alone
        assert len({tuple(t) for t in alone}) > 2, "the adapters should change the answers"
        for i in (0, 1, 6):
            assert alone[i] == reference(base, who[i], _msgs(i), 24)
        steps = srv.engine(base).steps - steps_alone
        assert steps < sum(map(len, alone)) / 2, "the requests should have shared forward passes"
    finally:
        srv.shutdown()


def test_no_bleed_between_rows_first_step_logprobs(server, adapters):
    """The first token's top-20 log-probabilities of each row equal that request's own, alone."""
    params = SamplingParams(max_new_tokens=1, logprobs=True, top_logprobs=20)
    who = [None, adapters["m0"], adapters["m1"], None, adapters["m2"], adapters["m0"]]
    alone = [collect(*_pair(submit(server, "tiny-llama", a, _msgs(i), params)), timeout=60) for i, a in enumerate(who)]
    pending = [submit(server, "tiny-llama", a, _msgs(i), params) for i, a in enumerate(who)]
    together = [collect(r, e.get, timeout=60) for r, e in pending]
    for a, b in zip(alone, together):
        ta, tb = a.choices[0].logprobs[0]["top_logprobs"], b.choices[0].logprobs[0]["top_logprobs"]
        assert [t["token"] for t in ta[:5]] == [t["token"] for t in tb[:5]]
        assert max(abs(x["logprob"] - y["logprob"]) for x, y in zip(ta, tb)) < 1e-4
    assert alone[0].choices[0].logprobs[0]["top_logprobs"] != alone[1].choices[0].logprobs[0]["top_logprobs"]


def _pair(pair):
    req, events = pair
    return req, events.get


def test_a_seeded_sample_is_the_same_whatever_its_neighbours(server, adapters):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    alone = collect(*_pair(submit(server, "tiny-llama", adapters["m1"], _msgs(2), params)), timeout=60)
    noise = [submit(server, "tiny-llama", a, _msgs(i), SamplingParams(max_new_tokens=30, temperature=1.0))
             for i, a in enumerate([None, adapters["m0"], adapters["m2"]])]
    again = collect(*_pair(submit(server, "tiny-llama", adapters["m1"], _msgs(2), params)), timeout=60)
    for r, e in noise:
        collect(r, e.get, timeout=60)
    other_seed = collect(*_pair(submit(server, "tiny-llama", adapters["m1"], _msgs(2),
                                       SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=99))))
    assert again.choices[0].text == alone.choices[0].text
    assert other_seed.choices[0].text != alone.choices[0].text


def test_n_choices(server):
    greedy = server.generate("tiny-llama", None, _msgs(0), SamplingParams(max_new_tokens=8), n=3)
    assert len(greedy.choices) == 3 and len({c.text for c in greedy.choices}) == 1
    sampled = server.generate("tiny-llama", None, _msgs(0), SamplingParams(max_new_tokens=16, temperature=1.5,
                                                                           seed=5), n=4)
    assert len({c.text for c in sampled.choices}) > 1
    assert sampled.completion_tokens == sum(c.completion_tokens for c in sampled.choices)


def test_stop_strings_cut_the_answer(server):
    full = server.generate("tiny-llama", None, _msgs(3), SamplingParams(max_new_tokens=20)).choices[0]
    assert len(full.text) > 6
    stop = full.text[4:7]
    cut = server.generate("tiny-llama", None, _msgs(3), SamplingParams(max_new_tokens=20, stop=[stop])).choices[0]
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish_reason == "stop"


def test_cancel_frees_the_slot_at_the_next_token(server):
    params = SamplingParams(max_new_tokens=400)
    req, events = submit(server, "tiny-llama", None, _msgs(1), params)
    engine = server.engine("tiny-llama")
    deadline = time.time() + 30
    while len(req.seqs[0].tokens) < 3 and time.time() < deadline:
        time.sleep(0.002)
    req.cancel()
    deadline = time.time() + 30
    while engine.rows and time.time() < deadline:
        time.sleep(0.01)
    assert not engine.rows, "the cancelled sequence should have left the batch"
    assert 3 <= len(req.seqs[0].tokens) < 400


def test_a_full_queue_refuses_new_requests(adapters):
    srv = ModelServer(precision="fp32", max_running=1, max_queued=1)
    try:
        long = SamplingParams(max_new_tokens=300)
        first, _ = submit(srv, "tiny-llama", None, _msgs(0), long)
        while not first.seqs[0].tokens:
            time.sleep(0.002)
        second, _ = submit(srv, "tiny-llama", None, _msgs(1), long)  # waits for the slot
        with pytest.raises(Overloaded):
            submit(srv, "tiny-llama", None, _msgs(2), long)
        first.cancel()
        second.cancel()
    finally:
        srv.shutdown()


def test_adapters_beyond_the_cache_are_evicted_and_reloaded(adapters):
    srv = ModelServer(precision="fp32", adapter_cache_size=2)
    try:
        p = SamplingParams(max_new_tokens=10)
        first = [srv.generate("tiny-llama", adapters[k], _msgs(0), p).choices[0].text for k in ("m0", "m1", "m2")]
        engine = srv.engine("tiny-llama")
        assert len(engine.adapters.loaded) <= 2
        again = srv.generate("tiny-llama", adapters["m0"], _msgs(0), p).choices[0].text  # evicted, loaded again
        assert again == first[0]
        loads = srv.metrics.adapter_loads.labels("tiny-llama")._value.get()
        assert loads == 4
    finally:
        srv.shutdown()


def _no_cache_reference(base: str, adapter_dir: Path, msgs, steps: int) -> list[int]:
    """Greedy decoding with a full forward per token (no KV cache) on the PEFT model's own pieces."""
    from peft import PeftModel

    tok = load_tokenizer(resolve(base))
    pm = PeftModel.from_pretrained(load_base_model(resolve(base), "fp32"), str(adapter_dir)).eval()
    ids = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    model, out = pm.get_base_model(), []
    with torch.no_grad():
        for _ in range(steps):
            x = torch.tensor([ids + out])
            if pm.peft_config["default"].peft_type.value == "PREFIX_TUNING":
                prefix = pm.get_prompt(batch_size=1)
                n = pm.peft_config["default"].num_virtual_tokens
                logits = model(input_ids=x, cache=prefix, attention_mask=torch.ones(1, n + x.shape[1]),
                               position_ids=torch.arange(n, n + x.shape[1])[None]).logits
            else:
                embeds = torch.cat([pm.get_prompt(batch_size=1), model.get_input_embeddings()(x)], 1)
                logits = model(inputs_embeds=embeds).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == tok.eos_token_id:
                break
    return out


@pytest.mark.parametrize("kind", ["dora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"])
def test_adapters_that_cannot_share_a_batch_get_an_engine_of_their_own(kind, tmp_path):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    configs = {
        "dora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, use_dora=True),
        "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                         init_ia3_weights=False, task_type="CAUSAL_LM"),
        "prompt_tuning": PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
        "p_tuning": PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=32, task_type="CAUSAL_LM"),
        "prefix_tuning": PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"),
    }
    path = make_adapter("tiny-llama", tmp_path / kind, 3, config=configs[kind])
    if kind == "prefix_tuning":  # the default init barely moves this tiny model: make the prefix matter
        from safetensors.torch import load_file, save_file

        w = load_file(path / "adapter_model.safetensors")
        save_file({k: v * 20 for k, v in w.items()}, path / "adapter_model.safetensors")
    srv = ModelServer(precision="fp32")
    try:
        msgs = _msgs(0)
        params = SamplingParams(max_new_tokens=12)
        plain = submit(srv, "tiny-llama", None, msgs, params)
        tuned = submit(srv, "tiny-llama", (f"ft:{kind}", path), msgs, params)
        collect(plain[0], plain[1].get, timeout=60)
        collect(tuned[0], tuned[1].get, timeout=60)
        assert tuned[0].engine is not plain[0].engine
        assert tokens_of(tuned[0]) != tokens_of(plain[0])
        if kind in ("dora", "ia3"):
            assert tokens_of(tuned[0]) == reference("tiny-llama", (kind, path), msgs, 12)
        else:
            assert tokens_of(tuned[0]) == _no_cache_reference("tiny-llama", path, msgs, 12)
    finally:
        srv.shutdown()


def test_a_prompt_longer_than_the_prefill_chunk_is_prefilled_in_pieces():
    srv = ModelServer(precision="fp32", prefill_tokens=16)
    try:
        msgs = [{"role": "user", "content": QUESTIONS[6] * 3}]
        short = submit(srv, "tiny-llama", None, _msgs(1), SamplingParams(max_new_tokens=30))
        long = submit(srv, "tiny-llama", None, msgs, SamplingParams(max_new_tokens=12))
        assert long[0].prompt_tokens > 40
        collect(long[0], long[1].get, timeout=60)
        collect(short[0], short[1].get, timeout=60)
        assert tokens_of(long[0]) == reference("tiny-llama", None, msgs, 12)
        assert tokens_of(short[0]) == reference("tiny-llama", None, _msgs(1), 30)
    finally:
        srv.shutdown()


def test_the_engine_thread_survives_a_bad_adapter(server, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    with pytest.raises(ValueError, match="could not be loaded"):
        server.generate("tiny-llama", ("ft:bad", bad), _msgs(0), SamplingParams(max_new_tokens=4), timeout=60)
    ok = server.generate("tiny-llama", None, _msgs(0), SamplingParams(max_new_tokens=4), timeout=60)
    assert ok.choices[0].completion_tokens >= 1
    assert threading.active_count() > 1


def test_a_grammar_row_a_json_schema_row_and_a_free_row_share_one_batch(server):
    """Three requests decoded in the same steps: a forced tool call, a JSON-schema reply and free text. Each obeys
    its own constraint (the model is random: what is valid is the grammar's doing), and the free row's text is the
    same as when it is served alone (no mask leaks into its row)."""
    import json

    import jsonschema

    from slmtune.data.tools import parse_reply

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]}}}]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    alone = server.generate("tiny-llama", None, _msgs(1), SamplingParams(max_new_tokens=24)).choices[0].text
    prepared = server.prepare_sync("tiny-llama")
    call_g = server.grammar(prepared, tools, "required", False)
    json_g = server.grammar(prepared, None, response_format={"type": "json_schema", "json_schema": {
        "schema": schema, "strict": True}})
    engine = prepared.engine
    steps = engine.steps
    jobs = [(SamplingParams(max_new_tokens=200, grammar=call_g), {"tools": tools}),
            (SamplingParams(max_new_tokens=200, grammar=json_g), {}), (SamplingParams(max_new_tokens=24), {})]
    queues = [queue.SimpleQueue() for _ in jobs]
    handles = [server.submit(prepared, _msgs(1), params, emit=q.put, **kw) for (params, kw), q in zip(jobs, queues)]
    outs = [collect(h, q.get, timeout=120).choices[0] for h, q in zip(handles, queues)]
    call, answer, free = outs
    _, calls = parse_reply(call.text)
    assert call.finish_reason == "stop" and calls and calls[0]["function"]["name"] == "lookup"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), tools[0]["function"]["parameters"])
    jsonschema.validate(json.loads(answer.text), schema)
    assert free.text == alone
    assert engine.steps - steps < sum(o.completion_tokens for o in outs)  # decoded together, not one by one
