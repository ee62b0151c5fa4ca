"""CPU training throughput: slmtune's defaults against a plain TRL SFTTrainer + PEFT script and LLaMA-Factory.

    .venv/bin/python benchmarks/throughput.py [--steps 8] [--levers] [--no-llamafactory]   # Markdown for the docs

Each run is a separate process (peak RSS is its own): the default model, LoRA r 16 / alpha 32 on all linear
layers, batch 8, the same number of optimizer steps on the same examples, learning rate 1e-3. The baseline is
what a user copies from the TRL docs: `SFTTrainer(model=path, train_dataset=..., peft_config=LoraConfig(...),
args=SFTConfig(...))` with library defaults otherwise (bf16 autocast — fp32 on a CPU without bf16 instructions,
where bf16 is emulated —, LoRA dropout 0.05, loss on every token, no packing).
The second baseline is LLaMA-Factory (installed by this script into a venv of its own under ~/.cache/slmtune-bench,
its pins apart from ours) on the same job in its best CPU configuration, benchmarks/llamafactory/lora_sft.yaml.
Every adapter is then scored by the same evaluation (assistant tokens of the held-out split).
MFU = FLOPs per token (4 × matmul parameters for a frozen base + attention) × tokens/s, divided by the matmul peak
measured in the same run with the same thread count: bf16's, or fp32's where that is higher (a CPU whose bf16 is
emulated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from child import emit, last_error
from child import run as run_child

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
MODEL = "smollm2-135m-instruct"


def long_data(out: Path) -> Path:
    """A longer-sequence set: the demo's conversations joined four at a time into multi-turn chats."""
    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()]
    with out.open("w") as fh:
        for i in range(0, len(rows) - 3, 4):
            msgs = [rows[i]["messages"][0]]
            for r in rows[i:i + 4]:
                msgs += [m for m in r["messages"][1:] if "weight" not in m or m["weight"] == 1][-2:]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return out


def matmul_peak() -> dict:
    """Best-of FLOP/s of a 1024×576×1536 matmul (the default model's MLP shape) into a preallocated output."""
    import torch

    out = {}
    m, k, n = 1024, 576, 1536
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b, c = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype)
        best = float("inf")
        for _ in range(8):
            t = time.perf_counter()
            for _ in range(10):
                torch.mm(a, b, out=c)
            best = min(best, (time.perf_counter() - t) / 10)
        out[name] = 2 * m * k * n / best
    return out


def run_trl(train: Path, steps: int, out: Path) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from slmtune.models.registry import resolve

    ds = load_dataset("json", data_files=str(train), split="train")
    # bf16 is TRL's default (autocast); on a CPU without bf16 instructions it runs emulated at a small fraction of
    # fp32's speed (the probe above), where nobody would keep it: fp32 there, as LLaMA-Factory's run
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, max_length=1024,
                     bf16=baselines_bf16())
    trainer = SFTTrainer(model=str(resolve(MODEL)), train_dataset=ds, args=args,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    tokens = [0, 0, 0]  # non-padding, loss-carrying, slots
    orig = trainer.compute_loss

    def counting(model, inputs, *a, **kw):
        if model.training:
            mask = inputs.get("attention_mask")
            tokens[0] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            tokens[1] += int((inputs["labels"][:, 1:] != -100).sum())
            tokens[2] += inputs["input_ids"].numel()
        return orig(model, inputs, *a, **kw)

    trainer.compute_loss = counting
    t = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t
    trainer.model.save_pretrained(str(out / "adapter"))
    return {"tps": tokens[0] / dt, "trained_tps": tokens[1] / dt, "padding": 1 - tokens[0] / tokens[2], "seconds": dt}


LF_VERSION = "0.9.5"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slmtune-bench"
LF_VENV = CACHE / f"llamafactory-{LF_VERSION}"
# its requirements, less the vision/audio/web-UI ones a text SFT run never imports (torchvision and torchaudio from
# PyPI would pull a CUDA build of torch over the CPU one); torch itself is installed first, pinned like ours
LF_REQUIREMENTS = ["accelerate<=1.11.0,>=1.3.0", "datasets<=4.0.0,>=2.16.0", "einops", "fire", "numpy", "omegaconf",
                   "packaging", "pandas", "peft<=0.18.1,>=0.18.0", "protobuf", "pydantic", "pyyaml", "safetensors",
                   "scipy", "sentencepiece", "tiktoken", "torchdata<=0.11.0,>=0.10.0", "matplotlib",
                   "transformers!=4.52.0,!=4.57.0,<=5.6.0,>=4.55.0", "trl<=0.24.0,>=0.18.0", "tyro<0.9.0"]


def llamafactory_venv() -> Path:
    """LLaMA-Factory in a venv of its own (its pins never touch slmtune's), made on first use and cached."""
    cli = LF_VENV / "bin" / "llamafactory-cli"
    if cli.exists():
        return cli
    import subprocess
    import sys

    print(f"installing LLaMA-Factory {LF_VERSION} into {LF_VENV} (a few minutes, once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
    pip = [str(LF_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", f"llamafactory=={LF_VERSION}"], check=True)
    subprocess.run([*pip, *LF_REQUIREMENTS], check=True)
    # LLaMA-Factory imports torchaudio at module level for its audio inputs, and PyPI has no torchaudio for torch
    # 2.13 (the torch both frameworks run on here): a module that fails loudly if audio is ever touched
    site = next((LF_VENV / "lib").glob("python*/site-packages"))
    (site / "torchaudio").mkdir(exist_ok=True)
    (site / "torchaudio" / "__init__.py").write_text(
        "def __getattr__(name):\n"
        "    raise ImportError('torchaudio is not installed in this benchmark venv (text fine-tuning only)')\n")
    return cli


def baselines_bf16() -> bool:
    """Whether the baselines run bf16 here (LLaMA-Factory's best configuration, TRL's default): where the CPU has
    bf16 instructions (the rule of slmtune's own ``auto``); on the others bf16 is emulated at a fraction of fp32's
    speed."""
    from slmtune.models.loading import fast_bf16

    return fast_bf16()


def run_llamafactory(train: Path, steps: int, out: Path) -> dict:
    """`llamafactory-cli train` on benchmarks/llamafactory/lora_sft.yaml; tokens/s from its own count of
    non-padding input tokens (``include_num_input_tokens_seen: non_padding``) over its train_runtime."""
    import subprocess

    from slmtune.models.registry import resolve

    cli = llamafactory_venv()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": str(train), "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    config = (ROOT / "benchmarks" / "llamafactory" / "lora_sft.yaml").read_text().format(
        model=resolve(MODEL), dataset_dir=data_dir, output_dir=out / "adapter", steps=steps,
        bf16=str(baselines_bf16()).lower())
    (out / "lora_sft.yaml").write_text(config)
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
                        "VIRTUAL_ENV": str(LF_VENV), "PATH": f"{LF_VENV / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run([str(cli), "train", str(out / "lora_sft.yaml")], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"llamafactory-cli failed: {proc.stderr[-3000:]}")
    state = json.loads((out / "adapter" / "trainer_state.json").read_text())
    # LLaMA-Factory's own callback puts a running time in every step's log too: the summary is the last entry
    seconds = [h["train_runtime"] for h in state["log_history"] if "train_runtime" in h][-1]
    seen = state["num_input_tokens_seen"]
    return {"tps": seen / seconds, "trained_tps": float("nan"), "padding": float("nan"), "seconds": seconds,
            "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def run_slmtune(train: Path, steps: int, out: Path, overrides: dict) -> dict:
    import slmtune

    cfg = {"model": {"name": MODEL}, "data": {"train": str(train), "max_seq_length": 1024},
           "method": {"name": "lora", "r": 16, "alpha": 32},
           "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "seed": 0, "save_total_limit": 1,
                     "warmup_ratio": 0.0, "lr_scheduler": "linear"},
           "run": {"output": str(out), "overwrite": True}}
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    r = slmtune.train(cfg)
    return {"seconds": r.train_runtime_s, "tps": r.tokens_per_second, "padding": r.padding_fraction,
            "trained_tps": r.trained_tokens / r.train_runtime_s}


def child(kind: str, train: Path, steps: int, out: Path, overrides: dict) -> None:
    if kind == "lf":
        res = run_llamafactory(train, steps, out)
        res["train_peak_rss_mb"] = res.pop("child_peak_rss_mb")
    else:
        res = run_trl(train, steps, out) if kind == "trl" else run_slmtune(train, steps, out, overrides)
        res["train_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    adapter = out / "adapter"
    from slmtune.evaluation.loss import evaluate_file
    from slmtune.inference.generate import ChatModel, Source
    from slmtune.models.registry import resolve

    model = ChatModel(Source(MODEL, resolve(MODEL), adapter_dir=adapter))
    res["eval_loss"] = evaluate_file(model, DEMO / "val.jsonl")["loss"]
    emit(res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--levers", action="store_true", help="also one row per lever, switched off one at a time")
    ap.add_argument("--only", help="run only these labels ('|'-separated), plus the baseline")
    ap.add_argument("--set", choices=["demo", "long"], help="run only this data set")
    ap.add_argument("--no-llamafactory", action="store_true", help="leave out the LLaMA-Factory baseline")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.data), args.steps, Path(args.out), json.loads(args.overrides))
        return

    work = ROOT / "runs" / "bench-throughput"
    work.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak()
    sets = {"demo (chat, ~80 tokens)": DEMO / "train.jsonl", "long (4-turn chats, ~300 tokens)":
            long_data(work / "long.jsonl")}
    if args.set:
        sets = {k: v for k, v in sets.items() if k.startswith(args.set)}
    bf16 = baselines_bf16()
    lf_label = (f"LLaMA-Factory {LF_VERSION} LoRA, its best CPU configuration ({'bf16' if bf16 else 'fp32'}, "
                "no gradient checkpointing, length grouping)")
    runs = [(f"TRL SFTTrainer + PEFT, defaults{'' if bf16 else ' but fp32 (bf16 is emulated here)'}", "trl", {})]
    if not args.no_llamafactory:
        runs.append((lf_label, "lf", {}))
    runs.append(("slmtune defaults", "slm", {}))
    if args.levers:
        from slmtune.models.loading import resolve_precision

        other = "fp32" if resolve_precision("auto") == "bf16" else "bf16"  # the precision `auto` did not pick here
        runs += [
            (f"slmtune, {other} base", "slm", {"model.precision": other}),
            ("slmtune, LoRA dropout 0.05", "slm", {"method.dropout": 0.05}),
            ("slmtune, model's own loss (train.fused_loss: false)", "slm", {"train.fused_loss": False}),
            ("slmtune, adapters in fp32 (model.adapter_autocast: false)", "slm", {"model.adapter_autocast": False}),
            ("slmtune, glibc malloc tuned (MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_=1 GiB)", "slm",
             {"env.MALLOC_MMAP_THRESHOLD_": "33554432", "env.MALLOC_TRIM_THRESHOLD_": "1073741824"}),
            ("slmtune, no length grouping", "slm", {"train.group_by_length": False}),
            ("slmtune, SDPA attention (model.attention: sdpa)", "slm", {"model.attention": "sdpa"}),
            ("slmtune + packing (data.packing)", "slm", {"data.packing": True}),
        ]
    if args.only:
        runs = [r for r in runs if r[0] in args.only.split("|") or r[1] in ("trl", "lf")]
    flops_per_token = 4 * 134_515_008 + 4 * 30 * 128 * 576  # frozen base matmuls (head included) + attention
    print(f"bf16 matmul peak (1024x576x1536, {__import__('torch').get_num_threads()} threads): "
          f"{peak['bf16'] / 1e12:.2f} TFLOP/s; fp32 {peak['fp32'] / 1e12:.2f} TFLOP/s; MFU against the higher\n")
    for set_name, path in sets.items():
        print(f"### {set_name}, {args.steps} steps of 8 examples\n")
        print("| run | tokens/s (all) | × TRL | × LLaMA-Factory | trained tokens/s | padding | MFU | eval loss | "
              "peak RSS MB (training) |\n|---|---|---|---|---|---|---|---|---|")
        base = lf = None
        for label, kind, ov in runs:
            out = work / f"{kind}-{abs(hash((set_name, label))) % 10**8}"
            env = os.environ | {k[4:]: v for k, v in ov.items() if k.startswith("env.")}
            ov = {k: v for k, v in ov.items() if not k.startswith("env.")}
            r, proc = run_child([__file__, "--child", kind, "--data", str(path), "--out", str(out),
                                 "--steps", str(args.steps), "--overrides", json.dumps(ov)], env=env)
            if r is None:
                print(f"| {label} | failed: {last_error(proc)[:100]} | | | | | | | |")
                continue
            base = base or r
            if kind == "lf":
                lf = r
            mfu = flops_per_token * r["tps"] / max(peak.values())
            # LLaMA-Factory reports its non-padding input tokens only, not the loss-carrying ones or the padding
            trained = "— | —" if kind == "lf" else f"{r['trained_tps']:.0f} | {100 * r['padding']:.0f}%"
            vs_lf = f"{r['tps'] / lf['tps']:.2f}" if lf else "—"
            print(f"| {label} | {r['tps']:.0f} | {r['tps'] / base['tps']:.2f} | {vs_lf} | {trained} | "
                  f"{100 * mfu:.0f}% | {r['eval_loss']:.3f} | {r['train_peak_rss_mb']:.0f} |", flush=True)
        print()


if __name__ == "__main__":
    main()
