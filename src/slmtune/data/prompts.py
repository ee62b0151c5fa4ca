"""Reinforcement data: prompts the model answers and a grader scores (``train.objective: grpo``; a job's method
``reinforcement``). One JSON object a line, OpenAI's RFT format::

    {"messages": [{"role": "developer", "content": "..."}, {"role": "user", "content": "..."}],
     "tools": [...], "answer": "42", "any_other_field": ...}

``messages`` must end with the user's turn; ``tools`` are offered to the model; every line, whole, is the grader's
``item`` (``{{ item.answer }}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmtune.data.formats import Problem, check_prompt_record, jsonl_lines, jsonl_records


@dataclass
class PromptRecord:
    line: int
    messages: list[dict]  # normalised (data.formats): role, content, tool calls of earlier turns
    tools: list[dict] | None
    item: dict  # the line as written: what the grader's templates read


def read_prompts(path: str | Path, *, limit: int | None = None) -> tuple[list[PromptRecord], list[Problem]]:
    """Every valid record of a JSONL file and every problem (file, line, field)."""
    file = str(path)
    out, problems = [], []
    with open(path, "rb") as f:
        for number, obj in jsonl_records(jsonl_lines(f)):
            if limit is not None and len(out) >= limit:
                break

            def add(field: str, msg: str, _n=number) -> None:
                problems.append(Problem(file, _n, field, msg))

            if isinstance(obj, ValueError):
                add("(json)", str(obj))
                continue
            got = check_prompt_record(obj, add)
            if got is not None:
                out.append(PromptRecord(number, got[0], got[1], obj))
    if not out and not problems:
        problems.append(Problem(file, 1, "(file)", "no examples (the file is empty)"))
    return out, problems
