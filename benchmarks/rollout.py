"""GRPO rollouts: TRL's default generation path against slmtune's continuous-batching engine, the same model, LoRA
adapter, prompts and sampling settings, in one run.

    .venv/bin/python benchmarks/rollout.py [--model smollm2-135m-instruct] [--group 4] [--tokens 64] [--rounds 2]

Both sides are called through the same GRPOTrainer's ``_generate`` (what a training step calls): once with TRL's
``model.generate`` on the training model, once with ``rollout_func`` set to ``inference.rollout.EngineRollout``
(which writes the adapter at the step and serves it from the engine). The prompts are the 24 validation prompts of
examples/recipes/rft.yaml, each ``--group`` times. Reported: completion tokens per second of each (and the ratio),
the mean completion length. Prints Markdown."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    return f"{name}; flags: {' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    import torch

    from slmtune.config import build_config
    from slmtune.data.prompts import read_prompts
    from slmtune.events import EventBus
    from slmtune.inference.rollout import EngineRollout
    from slmtune.methods import get
    from slmtune.models.loading import load_tokenizer
    from slmtune.models.registry import resolve
    from slmtune.training import run as R
    from slmtune.training.grpo import build_grpo_trainer, prompt_dataset

    records, _ = read_prompts(ROOT / "examples" / "recipes" / "capitals-val.jsonl")
    tmp = Path(tempfile.mkdtemp(prefix="slmtune-bench-rollout-"))
    cfg = build_config({"model": {"name": a.model}, "data": {"train": str(ROOT / "examples/recipes/capitals.jsonl")},
                        "method": {"name": "lora", "r": 16, "alpha": 32},
                        "train": {"objective": "grpo", "batch_size": len(records), "seed": 1},
                        "rl": {"reward": "benchmarks.rollout:zero", "group_size": a.group,
                               "max_completion_tokens": a.tokens},
                        "run": {"output": str(tmp / "run")}})
    method = get("lora")
    cfg.model.precision = R.resolve_precision(cfg.model.precision, method.precisions)
    model_dir = resolve(a.model)
    tok = load_tokenizer(model_dir)
    data = R.Data(records, [], records, [])
    arg_kw, _ = R.trainer_settings(cfg, method, "none", tmp / "run", model_dir, data)
    model, _ = R.setup_model(cfg, method, model_dir, 1, EventBus([]))
    prompts = [p for p in prompt_dataset(records)["prompt"] for _ in range(a.group)]
    engine = EngineRollout(a.model, cfg.model.precision, seed=1)
    sides = {"TRL generate": build_grpo_trainer(cfg, model, tok, records, [], dict(arg_kw)),
             "slmtune engine": build_grpo_trainer(cfg, model, tok, records, [], dict(arg_kw), rollout=engine)}
    rows = {k: [] for k in sides}
    for _ in range(a.rounds):
        for name, trainer in sides.items():
            trainer.model.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = trainer._generate(prompts)
            dt = time.perf_counter() - t0
            n = sum(len(c) for c in out[1])
            rows[name].append((n / dt, n / len(out[1]), dt))
    engine.close()
    best = {k: max(r[0] for r in v) for k, v in rows.items()}
    print(f"Machine: {cpu()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"{platform.python_version()}; {a.model} ({cfg.model.precision}), LoRA r16; {len(records)} prompts × "
          f"{a.group} completions, ≤{a.tokens} tokens, temperature 1.0; best of {a.rounds} rounds\n")
    print("| rollouts | completion tokens/s | mean completion length | seconds (best round) |")
    print("|---|---|---|---|")
    for name, v in rows.items():
        r = max(v)
        print(f"| {name} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} |")
    print(f"\nslmtune engine / TRL generate: {best['slmtune engine'] / best['TRL generate']:.2f}×")


def zero(prompts, completions, **kw):
    return [0.0] * len(completions)


if __name__ == "__main__":
    main()
