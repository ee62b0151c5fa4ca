"""One decode step of the lean path (``LeanDecoder.forward``), timed in this process without a server: the base
model at 1, 8 and 32 rows, and 8 rows on one adapter and on four adapters mixed with the base.

    .venv/bin/python benchmarks/decode_step.py [--model smollm2-135m-instruct] [--precision bf16] [--profile]
    .venv/bin/python benchmarks/decode_step.py --apart     # adapters' A in the base matmul against A apart
    .venv/bin/python benchmarks/decode_step.py --unpacked --precision fp32   # packed weights against F.linear
    .venv/bin/python benchmarks/decode_step.py --prefill --precision fp32    # prompts: lean loop against transformers
    .venv/bin/python benchmarks/decode_step.py --fp16 --precision fp32       # fp16 weights against packed fp32
    .venv/bin/python benchmarks/decode_step.py --agreement --precision fp32  # fp16 / int8 greedy text against fp32

Adapters are LoRA r 16 on every linear layer of the decoder (random weights), in a cache of 8 slots, as
`slmtune serve` keeps them. Each figure is the median of 40 steps after 40 warm-up steps, at ~60 cached positions;
``--profile`` prints torch's operator table for 10 steps of 8 rows on one adapter. ``--apart`` times two decoders
in one process, step by step in turn over the same rows: the adapters' stacked ``A`` packed into the base
projections (the default) and multiplied apart (the step before 2026-12-07); ``--unpacked`` the same way the
packed weights against the model's own through ``F.linear`` (fp32 on a CPU without fast bf16: the step before
2026-12-07, second session); ``--fp16`` fbgemm's fp16 weights against the model's own (packed fp32 on a CPU
without fast bf16). ``--decode int8`` / ``fp16`` times those weights alone. ``--prefill`` times whole requests of one
token through two batching engines, one prefilling through the lean loop and one through transformers' forward
(``--decode transformers``), 1 and 8 prompts at once, in turn, and checks that both give the same greedy text.
``--agreement`` decodes the 8 chat prompts of ``serving.py`` greedily (64 tokens, one request at a time) with the
model's own weights and with fp16 and int8 ones (and, for ``--precision fp32``, the model in bf16), and says how
often the text is the same, where the first different token comes, and how far the chosen tokens'
log-probabilities move before it.
The CPU is printed first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    isa = [f for f in flags if f.startswith(("avx512_bf16", "amx")) or f in ("avx512f", "avx2")]
    return f"{name} ({', '.join(isa)}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def random_adapter(model, rank: int = 16) -> dict[str, torch.Tensor]:
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            weights[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, module.in_features) * 0.02
            weights[f"base_model.model.{name}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.02
    return weights


def decoder(args, widen: bool = True, pack: bool | None = None, weights: str | None = None):
    """The model, its lean decode step (``weights``: as ``--decode`` says) and 4 random adapters loaded (r 16, every
    linear layer, a cache of 8)."""
    from slmtune.inference.decode import LeanDecoder
    from slmtune.inference.lora_batch import BatchedLoRA
    from slmtune.models.loading import load_base_model
    from slmtune.models.registry import resolve

    torch.manual_seed(0)
    model = load_base_model(resolve(args.model), args.precision)
    weights = weights or ("model" if args.decode == "auto" else args.decode)
    lean = LeanDecoder(model, weights=weights, pack=pack)
    if not widen:
        for block in lean.blocks:
            for proj in block.proj.values():
                proj.widenable = lambda: False
    lora = BatchedLoRA(model, 8)
    for i in range(4):
        lora.load(f"a{i}", {"r": 16, "lora_alpha": 32, "peft_type": "LORA"}, random_adapter(model))
    return model, lean, lora


CASES = [("1", [None]), ("8", [None] * 8), ("32", [None] * 32), ("8", ["a0"] * 8),
         ("8", [None, "a0", "a1", "a2", "a3", None, "a0", "a1"])]


def timed(decoders: dict, rows: list[str | None], n: int, warm: int, precision: str) -> dict[str, list[float]]:
    """Seconds of each decoder's ``forward`` over the same rows, ``warm + n`` steps, the decoders in turn at every
    step (so a machine that slows down slows all of them alike); the last ``n`` of each."""
    from slmtune.inference.kv_slots import SlotCache

    cpu_dev = torch.device("cpu")
    caches = {k: SlotCache(m.config.num_hidden_layers, 32, 2048, cpu_dev,
                           dtype=torch.float32 if precision == "bf16" else None) for k, (m, _, _) in decoders.items()}
    tokens = torch.randint(0, 1000, (len(rows), 1))
    times: dict[str, list[float]] = {k: [] for k in decoders}
    with torch.inference_mode():
        for step in range(warm + n):
            for k, (_, lean, lora) in decoders.items():
                pos = torch.full((len(rows), 1), step)
                caches[k].plan(0, pos)
                lora.plan(rows, cpu_dev)
                t = time.perf_counter()
                lean.forward(tokens, pos, caches[k], None, lora if any(rows) else None)
                times[k].append(time.perf_counter() - t)
    return {k: v[warm:] for k, v in times.items()}


def adapters(rows: list[str | None]) -> str:
    used = sorted({r for r in rows if r})
    return ", ".join(used) + (" + base" if None in rows and used else "") or "none"


def submit(engine, tok, prompt: str, params):
    """One user turn as a request on ``engine``: the request, and the ``get`` of the queue its events go to."""
    import queue

    from slmtune.inference.serving import ModelServer

    events: queue.SimpleQueue = queue.SimpleQueue()
    ids = ModelServer.prompt_ids(tok, [{"role": "user", "content": prompt}])
    return engine.submit(ids, params, emit=events.put), events.get


def prefill(args) -> None:
    from serving import PROMPTS  # benchmarks/serving.py's chat prompts

    from slmtune.inference.batching import BatchEngine
    from slmtune.inference.sampling import SamplingParams
    from slmtune.inference.serving import collect
    from slmtune.models.loading import load_base_model, load_tokenizer
    from slmtune.models.registry import resolve

    folder = resolve(args.model)
    tok = load_tokenizer(folder)
    engines = {"lean loop": BatchEngine(load_base_model(folder, args.precision), tok, name="lean", max_running=32),
               "transformers' forward": BatchEngine(load_base_model(folder, args.precision), tok, name="tf",
                                                    max_running=32, decode="transformers")}
    if not engines["lean loop"].lean.prefills:
        print("this model's lean step leaves prefill to transformers here (LeanDecoder.prefills)")

    def run(engine, n: int, tokens: int) -> tuple[float, list[list[int]]]:
        start, reqs = time.perf_counter(), []
        for i in range(n):
            reqs.append(submit(engine, tok, PROMPTS[i % len(PROMPTS)], SamplingParams(max_new_tokens=tokens)))
        for req, get in reqs:
            collect(req, get, timeout=600)
        return time.perf_counter() - start, [r.seqs[0].tokens for r, _ in reqs]

    try:
        print(f"| prompts | {' | '.join(engines)} |\n|---|---|---|")
        for n in (1, 8):
            times: dict[str, list[float]] = {k: [] for k in engines}
            for _ in range(5):
                for k, engine in engines.items():
                    times[k].append(run(engine, n, 1)[0])
            print(f"| {n} | " + " | ".join(f"{statistics.median(v) * 1e3:.0f} ms" for v in times.values()) + " |")
        texts = [run(engine, 4, 48)[1] for engine in engines.values()]
        print(f"\nthe same greedy tokens (48): {sum(a == b for a, b in zip(*texts))} of 4 prompts")
    finally:
        for engine in engines.values():
            engine.shutdown()


def agreement(args) -> None:
    from serving import PROMPTS  # benchmarks/serving.py's chat prompts

    from slmtune.inference.batching import BatchEngine
    from slmtune.inference.sampling import SamplingParams
    from slmtune.inference.serving import collect
    from slmtune.models.loading import load_base_model, load_tokenizer
    from slmtune.models.registry import resolve

    folder = resolve(args.model)
    tok = load_tokenizer(folder)

    def greedy(decode: str, precision: str) -> list[tuple[list[int], list[float]]]:
        engine = BatchEngine(load_base_model(folder, precision), tok, name=decode, max_running=8, decode=decode)
        out = []
        try:
            for prompt in PROMPTS:  # one at a time: the same rows in every step whatever the weights
                req, get = submit(engine, tok, prompt, SamplingParams(max_new_tokens=64, logprobs=True))
                got = collect(req, get, timeout=600)
                out.append((req.seqs[0].tokens, [lp["logprob"] for lp in got.choices[0].logprobs]))
        finally:
            engine.shutdown()
        return out

    reference = greedy("auto", args.precision)
    print("| weights | same greedy text (64 tokens) | first different token (mean, of those that differ) "
          "| largest log-prob move before it |\n|---|---|---|---|")
    others = [("fp16", args.precision), ("int8", args.precision)] + [("auto", "bf16")] * (args.precision == "fp32")
    for decode, precision in others:
        got = greedy(decode, precision)
        same, firsts, moves = 0, [], []
        for (a, la), (b, lb) in zip(reference, got):
            n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            same += a == b
            if a != b:
                firsts.append(n)
            moves += [abs(x - y) for x, y in zip(la[:n], lb[:n])]
        first = f"{statistics.mean(firsts):.1f}" if firsts else "—"
        label = "the model in bf16" if precision != args.precision else decode
        print(f"| {label} | {same} of {len(PROMPTS)} | {first} | {max(moves, default=0):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--decode", choices=["auto", "fp16", "int8"], default="auto",
                    help="fp16 / int8: those weights (auto: the model's own)")
    ap.add_argument("--apart", action="store_true", help="A in the base matmul against A apart, interleaved")
    ap.add_argument("--unpacked", action="store_true", help="packed weights against F.linear, interleaved")
    ap.add_argument("--fp16", action="store_true", help="fp16 weights against the model's own, interleaved")
    ap.add_argument("--prefill", action="store_true", help="prefill: the lean loop against transformers' forward")
    ap.add_argument("--agreement", action="store_true", help="fp16 and int8 greedy text against the model's own")
    args = ap.parse_args()
    print(f"{cpu()}; {args.model} in {args.precision}"
          f"{'' if args.decode == 'auto' else f', {args.decode} weights'}\n")
    if args.prefill:
        prefill(args)
        return
    if args.agreement:
        agreement(args)
        return
    if args.apart or args.unpacked or args.fp16:
        pair = ({"A apart": decoder(args, widen=False), "A in the base matmul": decoder(args)} if args.apart else
                {"F.linear": decoder(args, pack=False), "packed": decoder(args)} if args.unpacked else
                {"the model's own": decoder(args, weights="model"), "fp16": decoder(args, weights="fp16")})
        print(f"| rows | adapters | {' | '.join(pair)} |\n|---|---|---|---|")
        cases = CASES[3:] + [("1", ["a0"]), ("32", ["a0"] * 32), CASES[1]] if args.apart else CASES
        for label, rows in cases:
            times = timed(pair, rows, 50, 30, args.precision)
            ms = " | ".join(f"{statistics.median(v) * 1e3:.2f} ms" for v in times.values())
            print(f"| {label} | {adapters(rows)} | {ms} |")
        return
    one = {"": decoder(args)}
    print("| rows | adapters | ms a step | tokens/s |\n|---|---|---|---|")
    for label, rows in CASES:
        ms = statistics.median(timed(one, rows, 40, 40, args.precision)[""]) * 1e3
        print(f"| {label} | {adapters(rows)} | {ms:.2f} | {len(rows) / ms * 1e3:.0f} |")
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            timed(one, ["a0"] * 8, 10, 0, args.precision)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
