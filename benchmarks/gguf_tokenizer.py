"""`slmtune export gguf` checked in a real llama.cpp: its tokenizer against the model's own, and its greedy answers
against `slmtune chat`.

    .venv/bin/python benchmarks/gguf_tokenizer.py [RUN] [--tokens 48] [--out FILE]     # RUN: default runs/demo

Builds (or finds) `llama-server` from the llama-cpp-python sdist (`benchmarks/llama_server.py`), exports RUN as f16
and q8_0, and starts `llama-server` on each (loopback). Then:

- every text of `models.gguf_tokenizer.CHECK_TEXTS`, the chat-templated demo prompts and every held-out demo
  question go through the server's `/tokenize` (special tokens parsed, none added) and are compared id for id with
  the Hugging Face tokenizer; the same for a file exported with the pre-tokenizer forced to `"default"` (what the
  export wrote before), to show what the name changes;
- the held-out demo questions (with and without their system prompt) are answered greedily by llama-server's
  `/v1/chat/completions` (temperature 0, its own chat template from the file) and by `slmtune.load(RUN).chat`
  (PyTorch fp32), and the answers compared as text.

Prints one JSON report (and writes it to --out); the figures go to docs/inference.md with the llama.cpp version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def start(binary: Path, gguf: Path, port: int, log: Path, extra: list[str]):
    from serving import start as start_server  # waits for /v1/models; the log's tail when it exits

    return start_server([str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "4096",
                         "-np", "1", "-t", str(os.cpu_count()), "--no-ui", *extra], port, log)


def tokenize(port: int, text: str) -> list[int]:
    r = httpx.post(f"http://127.0.0.1:{port}/tokenize", json={"content": text, "add_special": False,
                                                               "parse_special": True}, timeout=60)
    r.raise_for_status()
    return r.json()["tokens"]


def answer(port: int, messages: list[dict], tokens: int) -> str:
    r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
        "messages": messages, "max_tokens": tokens, "temperature": 0.0, "top_k": 1, "seed": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    return next((ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--port", type=int, default=18231)
    ap.add_argument("--out", default=None)
    ap.add_argument("--extra", default="", help="more llama-server flags, e.g. --no-repack on AMX machines")
    args = ap.parse_args()

    from llama_server import VERSION, llama_server

    import slmtune
    from slmtune.export.gguf import export_gguf
    from slmtune.models.gguf_tokenizer import CHECK_TEXTS

    binary = llama_server()
    model = slmtune.load(args.run)
    tokenizer = model.tokenizer
    val = [json.loads(ln) for ln in (ROOT / "examples" / "demo" / "val.jsonl").read_text().splitlines() if ln.strip()]
    asks = [[m for m in r["messages"] if m["role"] != "assistant"] for r in val]
    seen, questions = set(), []
    for a in asks:  # each distinct question once, with its system prompt and without
        if a[-1]["content"] not in seen:
            seen.add(a[-1]["content"])
            questions += [a, [a[-1]]]
    prompts = [tokenizer.apply_chat_template(q, add_generation_prompt=True, tokenize=False) for q in questions[:10]]
    texts = list(CHECK_TEXTS) + prompts + [q[-1]["content"] for q in questions]
    report = {"llama_cpp": f"llama-cpp-python {VERSION} sdist, {version(binary)}", "run": args.run,
              "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name")), "?"), "texts": len(texts)}
    with tempfile.TemporaryDirectory(prefix="gguf-check-") as tmp:
        tmp = Path(tmp)
        files = {}
        for kind, pre in (("f16", None), ("q8_0", None), ("f16-default", "default")):
            rep = export_gguf(args.run, tmp / kind / "m.gguf", type=kind.split("-")[0], pre_tokenizer=pre,
                              check=False)
            files[kind] = (Path(rep["file"]), rep["pre_tokenizer"])
        for kind, (gguf, pre) in files.items():
            proc = start(binary, gguf, args.port, tmp / f"{kind}.log", args.extra.split())
            try:
                differ = []
                for t in texts:
                    ours, theirs = tokenizer(t, add_special_tokens=False)["input_ids"], tokenize(args.port, t)
                    if ours != theirs:
                        differ.append({"text": t[:50], "transformers": len(ours), "llama.cpp": len(theirs)})
                entry = {"pre_tokenizer": pre, "texts_identical": len(texts) - len(differ), "differ": differ[:5]}
                if kind != "f16-default":
                    same, rows = 0, []
                    for q in questions:
                        ref = model.chat(q, max_new_tokens=args.tokens)
                        got = answer(args.port, q, args.tokens)
                        same += got.strip() == ref.strip()
                        if got.strip() != ref.strip():
                            rows.append({"question": q[-1]["content"], "system": len(q) > 1, "slmtune": ref,
                                         "llama.cpp": got})
                    entry |= {"answers_identical": same, "answers": len(questions), "answers_differ": rows[:4]}
                report[kind] = entry
                print(kind, json.dumps({k: v for k, v in entry.items() if k not in ("differ", "answers_differ")}),
                      flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
