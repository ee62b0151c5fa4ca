"""Training data formats, read and checked line by line.

* chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1?}, ...]}``
  as in the OpenAI fine-tuning API. ``weight: 0`` on an assistant turn keeps it as context without training on it.
* completion: ``{"prompt": str, "completion": str}``; the loss covers the completion and the end-of-sequence token.
* preference (DPO): ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}],
  "non_preferred_output": [{"role": "assistant", "content": ...}]}`` as in the OpenAI API.

Every problem is reported as ``FILE:LINE: field.path: message`` and reading never stops at the first one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "weight", "name"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


@dataclass
class Example:
    line: int
    kind: Literal["chat", "completion", "preference"]
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    chosen: str = ""  # preference: the preferred assistant reply to ``messages``
    rejected: str = ""


class DataError(ValueError):
    """Raised with every problem found in a data file (``problems``); nothing is trained on bad data."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


def _content_text(content: Any) -> str | None:
    """OpenAI allows content as a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _check_chat(obj: dict, add) -> list[dict] | None:
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        add("messages", f"expected a list of messages, got {type(msgs).__name__}")
        return None
    if not msgs:
        add("messages", "empty list; at least one user and one assistant message are needed")
        return None
    out: list[dict] = []
    ok = True
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            add(where, f"expected an object, got {type(m).__name__}")
            ok = False
            continue
        for key in m:
            if key not in MESSAGE_KEYS:
                what = "not supported yet" if key in ("tool_calls", "function_call", "tool_call_id") else "unknown key"
                add(f"{where}.{key}", what)
                ok = False
        role = m.get("role")
        if "role" not in m:
            add(f"{where}.role", "missing")
            ok = False
        elif not isinstance(role, str):
            add(f"{where}.role", f"expected a string, got {type(role).__name__}")
            ok = False
        elif role not in ROLES:
            add(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
            ok = False
        if "content" not in m:
            add(f"{where}.content", "missing")
            ok = False
            text = None
        else:
            text = _content_text(m["content"])
            if text is None:
                add(f"{where}.content", f"expected a string, got {type(m['content']).__name__}")
                ok = False
            elif not text.strip():
                add(f"{where}.content", "empty")
                ok = False
        weight = m.get("weight", 1)
        if "weight" in m:
            if role != "assistant":
                add(f"{where}.weight", "only assistant messages can have a weight")
                ok = False
            elif isinstance(weight, bool) or weight not in (0, 1):
                add(f"{where}.weight", f"must be 0 or 1, got {weight!r}")
                ok = False
        if "name" in m and not isinstance(m["name"], str):
            add(f"{where}.name", f"expected a string, got {type(m['name']).__name__}")
            ok = False
        out.append({"role": role, "content": text, "weight": weight})
    if ok:
        roles = [m["role"] for m in out]
        if "assistant" not in roles:
            add("messages", "missing assistant turn: at least one assistant message is needed")
            ok = False
        elif not any(m["role"] == "assistant" and m["weight"] == 1 for m in out):
            add("messages", "every assistant message has weight 0: nothing to train on")
            ok = False
        elif "user" not in roles:
            add("messages", "missing user turn: at least one user message is needed")
            ok = False
        sys_late = [i for i, r in enumerate(roles) if r == "system" and i > 0]
        if ok and sys_late:
            add(f"messages[{sys_late[0]}].role", "a system message may only come first")
            ok = False
    return out if ok else None


def _check_completion(obj: dict, add) -> tuple[str, str] | None:
    ok = True
    for key in ("prompt", "completion"):
        if key not in obj:
            add(key, "missing")
            ok = False
        elif not isinstance(obj[key], str):
            add(key, f"expected a string, got {type(obj[key]).__name__}")
            ok = False
    for key in obj:
        if key not in ("prompt", "completion"):
            add(key, "unknown key")
            ok = False
    if ok and not obj["completion"].strip():
        add("completion", "empty")
        ok = False
    return (obj["prompt"], obj["completion"]) if ok else None


def _check_preference(obj: dict, add) -> tuple[list[dict], str, str] | None:
    ok = True
    for key in obj:
        if key not in ("input", "preferred_output", "non_preferred_output"):
            add(key, "unknown key")
            ok = False
    inp = obj.get("input")
    msgs = None
    if not isinstance(inp, dict) or "messages" not in inp:
        add("input", "expected an object with 'messages'")
        ok = False
    else:
        msgs = inp["messages"]
        if not isinstance(msgs, list) or not msgs:
            add("input.messages", "expected a non-empty list of messages")
            ok = False
        else:
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES:
                    add(f"input.messages[{i}].role", f"expected one of {', '.join(ROLES)}")
                    ok = False
                elif _content_text(m.get("content")) is None or not _content_text(m.get("content")).strip():
                    add(f"input.messages[{i}].content", "missing or empty")
                    ok = False
            if ok and msgs[-1].get("role") != "user":
                add(f"input.messages[{len(msgs) - 1}].role", "the prompt must end with a user message")
                ok = False
    replies = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj.get(key)
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict)):
            add(key, "expected a list with exactly one assistant message")
            ok = False
            continue
        if out[0].get("role") != "assistant":
            add(f"{key}[0].role", "must be 'assistant'")
            ok = False
        text = _content_text(out[0].get("content"))
        if text is None or not text.strip():
            add(f"{key}[0].content", "missing or empty")
            ok = False
        replies.append(text)
    if not ok:
        return None
    prompt = [{"role": m["role"], "content": _content_text(m["content"]), "weight": 1} for m in msgs]
    return prompt, replies[0], replies[1]


def parse_lines(lines, file: str) -> tuple[list[Example], list[Problem]]:
    """Parse JSONL lines (an iterable of str) into examples, collecting every problem."""
    examples: list[Example] = []
    problems: list[Problem] = []
    first_kind: tuple[str, int] | None = None
    n_nonblank = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        n_nonblank += 1

        def add(path: str, msg: str, _line=lineno) -> None:
            problems.append(Problem(file, _line, path, msg))

        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            add("(json)", f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            add("(root)", f"expected a JSON object, got {type(obj).__name__}")
            continue
        if "messages" in obj:
            kind = "chat"
            extra = [k for k in obj if k not in ("messages", "tools", "parallel_tool_calls")]
            for k in extra:
                add(k, "unknown key")
            if "tools" in obj or "parallel_tool_calls" in obj:
                add("tools", "tool definitions are not supported yet")
            msgs = _check_chat(obj, add)
            if msgs is not None and not extra and "tools" not in obj:
                examples.append(Example(line=lineno, kind="chat", messages=msgs))
        elif "input" in obj or "preferred_output" in obj:
            kind = "preference"
            pref = _check_preference(obj, add)
            if pref is not None:
                examples.append(Example(line=lineno, kind="preference", messages=pref[0], chosen=pref[1],
                                        rejected=pref[2]))
        elif "prompt" in obj or "completion" in obj:
            kind = "completion"
            pc = _check_completion(obj, add)
            if pc is not None:
                examples.append(Example(line=lineno, kind="completion", prompt=pc[0], completion=pc[1]))
        else:
            add("(root)", "expected 'messages' (chat format), 'prompt' and 'completion', or 'input' with "
                "'preferred_output' and 'non_preferred_output' (preference format)")
            continue
        if first_kind is None:
            first_kind = (kind, lineno)
        elif kind != first_kind[0]:
            add("(root)", f"{kind} format, but line {first_kind[1]} is {first_kind[0]} format; use one format a file")
            examples = [e for e in examples if e.line != lineno]
    if n_nonblank == 0:
        problems.append(Problem(file, 1, "(file)", "no examples (the file is empty)"))
    return examples, problems


def read_jsonl(path: str | Path) -> tuple[list[Example], list[Problem]]:
    """Read a JSONL data file. Returns the valid examples and every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], [Problem(str(path), 0, "(file)", "no such file")]
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        return [], [Problem(str(path), line, "(file)", "not valid UTF-8 text")]
    return parse_lines(text.splitlines(), str(path))
