"""The cost of constrained decoding: concurrent clients on one batching engine, free generation against tool calls
forced by the grammar (``tool_choice: required``), the same engine, model and prompts in one run.

    .venv/bin/python benchmarks/constrained.py [--model smollm2-135m-instruct] [--clients 8] [--tokens 64]

Each mode runs ``--clients`` requests at once (greedy, ``--tokens`` at most) with the same 8 tools in the prompt;
free is ``tool_choice: none`` (nothing forced), constrained ``required``. Reported: generated tokens per second
over the batch, the median time to first token, and the median time per token after the first (the decode step's
cost, which is what the mask adds to; tokens/s also depends on how long the replies are — a forced call ends
sooner than free text, so the prompts' prefill weighs more in it). Then the masking alone, timed on rows fed a real
call token by token. Prints Markdown."""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": f"Tool number {i}",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 14}},
                   "required": ["city", "days"], "additionalProperties": False}}} for i in range(8)]


def run(server, prepared, clients: int, tokens: int, constrained: bool) -> dict:
    from slmtune.inference.request import Delta, Finished
    from slmtune.inference.sampling import SamplingParams

    choice = "required" if constrained else "none"  # "none": the same tools in the prompt, nothing forced
    msgs = [[{"role": "user", "content": f"What is the weather in city number {i} for {i % 7 + 1} days?"}]
            for i in range(clients)]
    results: list[tuple[float, int, float]] = []
    lock = threading.Lock()

    def one(m):
        events: queue.SimpleQueue = queue.SimpleQueue()
        t0 = time.perf_counter()
        server.submit(prepared, m, SamplingParams(max_new_tokens=tokens), emit=events.put, tools=TOOLS,
                      tool_choice=choice, parallel_tool_calls=False)
        first, n = None, 0
        while True:
            ev = events.get()
            if isinstance(ev, Delta) and first is None:
                first = time.perf_counter() - t0
            if isinstance(ev, Finished):
                n = ev.completion_tokens
                break
        last = time.perf_counter() - t0
        first = first if first is not None else last
        with lock:
            results.append((first, n, (last - first) / max(1, n - 1)))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(m,)) for m in msgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"tok_s": sum(r[1] for r in results) / wall, "ttft": statistics.median(r[0] for r in results),
            "tpot": statistics.median(r[2] for r in results), "tokens": sum(r[1] for r in results)}


def mask_cost(server, prepared, clients: int) -> float:
    """Milliseconds one decode step spends masking ``clients`` constrained rows (``constraints.apply_masks``), fed
    a real call token by token: the grammar's share of a step, free of the reply-length effects above."""
    import torch

    from slmtune.inference.constraints import RowConstraint, apply_masks

    engine = prepared.engine
    grammar = server.grammar(prepared, TOOLS, "required", False)
    text = '<tool_call>\n{"name": "tool_3", "arguments": {"city": "Paris in France", "days": 3}}\n</tool_call>'
    ids = prepared.tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = [RowConstraint(grammar, engine.matchers) for _ in range(clients)]
    width = engine.model.get_output_embeddings().weight.shape[0]
    spent = 0.0
    for tok in ids:
        logits = torch.randn(clients, width)
        t0 = time.perf_counter()
        apply_masks(logits, rows)
        spent += time.perf_counter() - t0
        for r in rows:
            r.after(tok, "")
    return spent / len(ids) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from slmtune.inference.serving import ModelServer

    server = ModelServer(precision="auto")
    prepared = server.prepare_sync(args.model)
    run(server, prepared, 2, 8, False)  # warm-up: first forwards
    run(server, prepared, 2, 8, True)  # warm-up: the grammar engine's token table
    rows = {"free": [], "tool_choice=required": []}
    for _ in range(args.rounds):  # interleaved, so drift hits both alike
        rows["free"].append(run(server, prepared, args.clients, args.tokens, False))
        rows["tool_choice=required"].append(run(server, prepared, args.clients, args.tokens, True))
    print(f"| mode ({args.clients} clients, ≤{args.tokens} tokens, {args.model}) | tokens/s | median TTFT (s) | "
          "median ms/token after the first | tokens generated |")
    print("|---|---|---|---|---|")
    med = {}
    for mode, rs in rows.items():
        med[mode] = [statistics.median(r[k] for r in rs) for k in ("tok_s", "ttft", "tpot", "tokens")]
        print(f"| {mode} | {med[mode][0]:.1f} | {med[mode][1]:.3f} | {med[mode][2] * 1000:.1f} | {med[mode][3]:.0f} |")
    free, con = med["free"], med["tool_choice=required"]
    print(f"\nconstrained/free: tokens/s ×{con[0] / free[0]:.2f}, TTFT ×{con[1] / free[1]:.2f}, "
          f"ms/token ×{con[2] / free[2]:.2f}")
    mask = statistics.median(mask_cost(server, prepared, args.clients) for _ in range(3))
    print(f"masking {args.clients} constrained rows: {mask:.2f} ms per decode step "
          f"({mask / (free[2] * 1000) * 100:.1f}% of a free step's {free[2] * 1000:.1f} ms)")
    server.shutdown()


if __name__ == "__main__":
    main()
