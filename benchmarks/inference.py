"""PyTorch eager (fp32, bf16) against ONNX Runtime (fp32, int8, int4): same prompts, same greedy decoding.

    .venv/bin/python benchmarks/inference.py [--model smollm2-135m-instruct] [--tokens 64]   # Markdown for
                                                                                            # docs/inference.md

Exports the model with `slmtune export onnx` at each precision (into runs/bench-inference/), then runs each
runtime in its own process: time to first token and decode tokens/s over the same 4 chat prompts (greedy, batch 1,
``--tokens`` new tokens, EOS ignored so every run decodes the same count), peak RSS of that process, model size on
disk, and eval loss on the demo's validation data (assistant tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from child import emit, last_error, vm_hwm_mb
from child import run as run_child

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench-inference"
VAL = ROOT / "examples" / "demo" / "val.jsonl"
PROMPTS = ["What is the capital of France?", "Write two sentences about the sea.",
           "Explain what a unit test is.", "Give me three tips for sleeping well."]


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def child_torch(model: str, precision: str, tokens: int) -> dict:
    import torch

    from slmtune.evaluation.loss import evaluate_file
    from slmtune.inference.generate import load

    m = load(model, precision=precision)
    tok = m.tokenizer
    ttft, rates = [], []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            t = time.perf_counter()
            m.model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
            first = time.perf_counter() - t
            t = time.perf_counter()
            out = m.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
            dt = time.perf_counter() - t
        n = out.shape[1] - ids.shape[1]
        ttft.append(first)
        rates.append((n - 1) / max(dt - first, 1e-9))
    loss = evaluate_file(m, VAL)["loss"]
    return {"ttft_s": sum(ttft) / len(ttft), "decode_tps": sum(rates) / len(rates), "eval_loss": loss}


def child_onnx(folder: str, tokens: int) -> dict:
    import onnxruntime as ort
    import onnxruntime_genai as og

    from slmtune.data.validate import load_encoded
    from slmtune.export.onnx import _eval_loss_ort
    from slmtune.models.loading import load_tokenizer

    tok = load_tokenizer(folder)
    model = og.Model(folder)
    ttft, rates = [], []
    for p in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
        gen = og.Generator(model, params)
        t = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()
        first = time.perf_counter() - t
        n = 1
        while not gen.is_done() and n < tokens:
            gen.generate_next_token()
            n += 1
        dt = time.perf_counter() - t
        ttft.append(first)
        rates.append((n - 1) / max(dt - first, 1e-9))
    session = ort.InferenceSession(str(Path(folder) / "model.onnx"), providers=["CPUExecutionProvider"])
    head = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    loss = _eval_loss_ort(session, load_encoded(VAL, tok, 1024, truncate=True).encoded, head)
    return {"ttft_s": sum(ttft) / len(ttft), "decode_tps": sum(rates) / len(rates), "eval_loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, target = args.child
        res = child_onnx(target, args.tokens) if kind == "onnx" else child_torch(args.model, target, args.tokens)
        res["peak_rss_mb"] = vm_hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        emit(res)
        return

    from slmtune.export.onnx import export_onnx
    from slmtune.models.registry import resolve

    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for prec in ("fp32", "bf16"):
        rows.append((f"PyTorch eager {prec}", ["torch", prec], size_mb(resolve(args.model)) * (0.5 if prec == "bf16"
                                                                                              else 1), None))
    for prec in ("fp32", "int8", "int4"):
        out = WORK / f"onnx-{prec}"
        rep = export_onnx(args.model, out, precision=prec, log=lambda s: None)
        rows.append((f"ONNX Runtime {prec}", ["onnx", str(out)], size_mb(out), rep))
    print(f"{args.model}, 4 prompts, {args.tokens} new tokens each, greedy, batch 1, "
          f"{__import__('torch').get_num_threads()} threads\n")
    print("| runtime | time to first token s | decode tokens/s | × PyTorch fp32 | peak RSS MB | size on disk MB | "
          "eval loss (demo val) | greedy agreement with PyTorch fp32 (export gate) |\n"
          "|---|---|---|---|---|---|---|---|")
    base = None
    for label, child, size, rep in rows:
        r, proc = run_child([__file__, "--model", args.model, "--tokens", str(args.tokens), "--child", *child])
        if r is None:
            print(f"| {label} | failed: {last_error(proc)[:100]} | | | | | | |")
            continue
        base = base or r
        agree = f"{rep['token_agreement']:.0%}" if rep else "—"
        print(f"| {label} | {r['ttft_s']:.3f} | {r['decode_tps']:.1f} | {r['decode_tps'] / base['decode_tps']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {size:.0f} | {r['eval_loss']:.4f} | {agree} |", flush=True)


if __name__ == "__main__":
    main()
