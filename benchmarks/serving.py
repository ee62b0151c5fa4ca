"""Chat serving under concurrent load: `slmtune serve` against llama.cpp's `llama-server` and `transformers serve`.

    .venv/bin/python benchmarks/serving.py [--levels 1,8,32] [--tokens 64] [--only slmtune,llama-f16,...] [--out FILE]

Every server runs as its own process on loopback, started and stopped by this script, on the default model
(`smollm2-135m-instruct`, from the cache): `slmtune serve` with its defaults, with transformers' forward
(`--decode transformers`, the step before the lean one), with int8 weights (`--decode int8`) and in exact fp32
(`--precision fp32`: on a CPU without fast bf16 the default before it decoded with fp16 weights); `transformers serve
--continuous-batching` on the model folder (fp32); `llama-server` built from the llama-cpp-python sdist
(`benchmarks/llama_server.py`, cached) on `slmtune export gguf`'s f16 and q8_0 files, with as many slots as the
highest level of clients. For each level of concurrency, that many clients (asyncio + httpx,
streaming) send greedy chats of `--tokens` tokens back to back; the script reports aggregate completion tokens/s,
time to first token and whole-request latency (p50/p99). Then a mixed run that neither anchor can do: 4 tuned LoRA
adapters and the base behind one `slmtune serve` (`--adapter NAME=DIR`), requests round-robin over the five,
against all requests on one adapter (on the defaults and on `--precision fp32`). Last, whether each server gives
transformers' fp32 greedy text for each prompt (slmtune also in fp32; without transformers in the run, the anchor
is `slmtune serve --precision fp32`'s text). Prints Markdown tables (docs/serving.md) and writes the rows as JSON
to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from slmtune.training.distributed import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "smollm2-135m-instruct"
PROMPTS = ["Write a long story about a dragon who learns to bake bread.",
           "Explain in detail how a bicycle works, part by part.",
           "Describe a walk through a busy market on a summer morning.",
           "Tell me everything you know about the history of tea.",
           "Write a letter to a friend about your new job at a library.",
           "Describe how to plant and care for a vegetable garden.",
           "Write a long poem about the sea and the people who live by it.",
           "Explain how rain forms, from the ocean to the clouds."]


def start(cmd: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not start; log: {log}")


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage, pieces = None, "", None, 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices") or []:
                piece = (c.get("delta") or {}).get("content") or ""
                if piece:
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text += piece
    n = usage["completion_tokens"] if usage else pieces
    return {"ttft": ttft or 0.0, "latency": time.perf_counter() - t0, "tokens": n, "text": text}


async def level(url: str, models: list[str], clients: int, per_client: int, tokens: int,
                keepalive: bool = True) -> dict:
    """``keepalive=False`` for llama-server, which closes a connection after a streamed response."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=None if keepalive else 0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker(i: int) -> list[dict]:
            out = []
            for k in range(per_client):
                j = i * per_client + k
                out.append(await one(client, url, models[j % len(models)], PROMPTS[j % len(PROMPTS)], tokens))
            return out

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - t0

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]

    ttft, lat = [r["ttft"] for r in results], [r["latency"] for r in results]
    total = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": total, "wall_s": wall, "tok_s": total / wall,
            "ttft_p50": statistics.median(ttft), "ttft_p99": pct(ttft, 0.99), "lat_p50": statistics.median(lat),
            "lat_p99": pct(lat, 0.99), "texts": [r["text"] for r in results]}


def make_adapters(out: Path, k: int = 4) -> list[Path]:
    """LoRA adapters shaped like `slmtune train --method lora` makes (r 16 on every linear layer), with random
    non-zero weights: what matters for serving speed is their shape, not what they learned."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmtune.models.loading import load_base_model
    from slmtune.models.registry import resolve

    dirs = []
    for i in range(k):
        torch.manual_seed(i)
        model = load_base_model(resolve(MODEL), "fp32")
        config = LoraConfig(r=16, lora_alpha=32, init_lora_weights="gaussian",
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj"])
        peft = get_peft_model(model, config)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.002)
        peft.save_pretrained(out / f"adapter{i}")
        dirs.append(out / f"adapter{i}")
    return dirs


def table(rows: list[dict]) -> str:
    head = ("| server | clients | requests | aggregate tok/s | TTFT p50 s | TTFT p99 s | latency p50 s | "
            "latency p99 s |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['server']} | {r['error']} | | | | | | |\n" if "error" in r else
                          f"| {r['server']} | {r['clients']} | {r['requests']} | {r['tok_s']:.1f} | "
                          f"{r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['lat_p50']:.2f} | {r['lat_p99']:.2f} |\n"
                          for r in rows)


# slmtune's variants: their flags
SLMTUNE = {"slmtune": [], "slmtune-fp32": ["--precision", "fp32"], "slmtune-transformers": ["--decode", "transformers"],
           "slmtune-int8": ["--decode", "int8"]}
SERVERS = (*SLMTUNE, "transformers", "llama-f16", "llama-q8_0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--only", default=",".join(SERVERS),
                    help=f"comma-separated, of: {', '.join(SERVERS)} (default: all)")
    ap.add_argument("--no-adapters", action="store_true", help="skip the mixed-adapter runs")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serving/rows.json"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    only = args.only.split(",")
    if unknown := set(only) - set(SERVERS):
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}")
    from slmtune.models.registry import resolve

    model_dir = resolve(MODEL)
    bin_dir = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    adapters = [] if args.no_adapters else make_adapters(tmp)
    rows, texts = [], {}

    def per_client(c: int) -> int:
        return max(1, min(4, 32 // c)) if c > 1 else 4

    servers = []  # (label, command, port, model name in requests, keep-alive)
    for name in only:
        port = free_port()
        if name in SLMTUNE:
            label = " ".join(["slmtune serve", *SLMTUNE[name]])
            cmd = [str(bin_dir / "slmtune"), "serve", "--no-auth", "--no-worker", "--port", str(port),
                   *SLMTUNE[name], "--data-dir", str(tmp / f"svc-{name}")]
            if name in ("slmtune", "slmtune-fp32"):
                cmd += [f"--adapter=tuned{i}={d}" for i, d in enumerate(adapters)]
            servers.append((label, cmd, port, MODEL, True))
        elif name == "transformers":
            servers.append(("transformers serve --continuous-batching", [
                str(bin_dir / "transformers"), "serve", "--continuous-batching", "--host", "127.0.0.1", "--port",
                str(port), str(model_dir)], port, str(model_dir), True))
        else:  # llama.cpp: built from the llama-cpp-python sdist, fed slmtune's own GGUF export
            from llama_server import llama_server

            kind = name.removeprefix("llama-")
            gguf = tmp / f"model-{kind}.gguf"
            subprocess.run([str(bin_dir / "slmtune"), "export", "gguf", MODEL, "--out", str(gguf), "--type", kind],
                           check=True, stdout=subprocess.DEVNULL)
            slots = max(levels)
            servers.append((f"llama-server {kind} ({slots} slots)", [
                str(llama_server()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(os.cpu_count()), "-np", str(slots), "-c", str(1024 * slots), "--no-ui"],
                port, "model", False))
    for label, cmd, port, model, keepalive in servers:
        try:
            proc = start(cmd, port, tmp / f"{port}.log")
        except RuntimeError as e:  # one server that cannot start (llama-server's q8_0 on some CPUs) ends no run
            print(f"{label}: did not start ({str(e).splitlines()[0]}; its log: {tmp / f'{port}.log'})", flush=True)
            rows.append({"server": label, "error": "did not start"})
            continue
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            asyncio.run(level(url, [model], 2, 1, 8, keepalive))  # warm-up: loads the model
            for c in levels:
                r = asyncio.run(level(url, [model], c, per_client(c), args.tokens, keepalive))
                if c == 1:
                    texts[label] = r["texts"]
                rows.append({"server": label, **{k: v for k, v in r.items() if k != "texts"}})
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            if label in ("slmtune serve", "slmtune serve --precision fp32") and adapters:
                asyncio.run(level(url, ["tuned0"], 2, 1, 8))  # loads the adapters
                asyncio.run(level(url, [f"tuned{i}" for i in range(4)], 4, 1, 8))
                for tag, models in (("one adapter", ["tuned0"]),
                                    ("4 adapters + base", [MODEL] + [f"tuned{i}" for i in range(4)])):
                    r = asyncio.run(level(url, models, 8, 4, args.tokens))
                    rows.append({"server": f"{label}, {tag}", **{k: v for k, v in r.items()
                                                                       if k != "texts"}})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if "transformers" in only:  # same greedy text? slmtune in fp32 (as the anchor loads this folder), 4 at once
        port = free_port()
        proc = start([str(bin_dir / "slmtune"), "serve", "--no-auth", "--no-worker", "--port", str(port),
                      "--precision", "fp32", "--data-dir", str(tmp / "svc32")], port, tmp / "fp32.log")
        try:
            texts["slmtune serve --precision fp32, 4 in one batch"] = asyncio.run(level(
                f"http://127.0.0.1:{port}/v1/chat/completions", [MODEL], 4, 1, args.tokens))["texts"]
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n" + table(rows))
    anchor = texts.get("transformers serve --continuous-batching", texts.get("slmtune serve --precision fp32"))
    for name, got in texts.items():
        if anchor is not None and got is not anchor:
            same = sum(x == y for x, y in zip(got, anchor))
            print(f"{name}: the same greedy text as the anchor (fp32) for {same} of {len(anchor)} prompts")
            rows.append({"server": name, "same_text_as_anchor": same, "of": len(anchor)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
