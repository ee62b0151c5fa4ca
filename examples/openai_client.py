"""Fine-tune the default model through slmtune's OpenAI-compatible API with the official `openai` SDK.

    python examples/openai_client.py                       # starts `slmtune serve --no-auth` on a free port itself
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1 --api-key sk-slm-...   # a running server

Uploads the demo data (examples/demo/), creates a job on smollm2-135m-instruct, prints its events as they come,
then asks the tuned model a held-out question, streaming. Nothing here is slmtune-specific but the base URL:
the same code drives OpenAI's hosted fine-tuning.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

HERE = Path(__file__).parent


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="slmtune-example-")
    exe = Path(sys.executable).parent / "slmtune"
    proc = subprocess.Popen([str(exe), "serve", "--no-auth", "--port", str(port), "--data-dir", data_dir,
                             "--db", f"sqlite:///{data_dir}/slmtune.db"])
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    for _ in range(300):
        try:
            httpx.get(url.removesuffix("/v1") + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"))
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    server = None
    if not args.base_url:
        server, args.base_url = start_server()
    t0 = time.perf_counter()
    try:
        client = OpenAI(base_url=args.base_url, api_key=args.api_key)
        train = client.files.create(file=open(HERE / "demo" / "train.jsonl", "rb"), purpose="fine-tune")
        val = client.files.create(file=open(HERE / "demo" / "val.jsonl", "rb"), purpose="fine-tune")
        t_create = time.perf_counter()
        job = client.fine_tuning.jobs.create(
            model=args.model, training_file=train.id, validation_file=val.id, suffix="lumora",
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": args.epochs, "batch_size": 8, "learning_rate_multiplier": 5}}},
        )
        print(f"created {job.id} in {1000 * (time.perf_counter() - t_create):.0f} ms, status {job.status}")
        seen: set[str] = set()
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            new = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=50).data if e.id not in seen]
            for e in reversed(new):
                seen.add(e.id)
                if e.type == "message" or e.data.get("step", 0) % 10 == 0 or "valid_loss" in e.data:
                    print(f"  [{e.level}] {e.message}")
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(2)
        if job.status != "succeeded":
            print(f"job {job.status}: {job.error}")
            return 1
        print(f"fine-tuned model: {job.fine_tuned_model} (trained tokens {job.trained_tokens})")
        for ck in client.fine_tuning.jobs.checkpoints.list(job.id).data:
            print(f"  checkpoint {ck.fine_tuned_model_checkpoint}: valid_loss {ck.metrics.valid_loss}")

        question = "If my lamp breaks after two years, is the warranty still valid?"
        messages = [{"role": "system", "content": "You are Nova, the support assistant for the Brightnook Lumora A3 "
                     "desk lamp. Answer briefly."}, {"role": "user", "content": question}]
        t_chat = time.perf_counter()
        r = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=64)
        chat_ms = 1000 * (time.perf_counter() - t_chat)
        t_chat = time.perf_counter()
        client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=64)
        warm_ms = 1000 * (time.perf_counter() - t_chat)
        print(f"\nQ: {question}\nA: {r.choices[0].message.content}\n(first call {chat_ms:.0f} ms incl. loading the "
              f"base model and adapter; again {warm_ms:.0f} ms; {r.usage.completion_tokens} tokens)")
        print("\nstreamed from the base model for comparison:")
        for chunk in client.chat.completions.create(model=args.model, messages=messages, max_tokens=48, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print(f"\n\nend to end: {time.perf_counter() - t0:.0f} s")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
