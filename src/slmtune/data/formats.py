"""Training data formats, read and checked line by line.

* chat: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, "weight": 0|1?}, ...],
  "tools"?: [...], "parallel_tool_calls"?: bool}`` as in the OpenAI fine-tuning API. ``weight: 0`` on an assistant
  turn keeps it as context without training on it. Assistant turns may carry ``tool_calls`` and ``tool`` turns
  answer them (``tool_call_id``); the deprecated ``functions``/``function_call``/``function`` form is converted
  (:mod:`slmtune.data.tools`).
* completion: ``{"prompt": str, "completion": str}``; the loss covers the completion and the end-of-sequence token.
* preference (DPO, ORPO, SimPO, KTO): ``{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant",
  "content": ...}], "non_preferred_output": [{"role": "assistant", "content": ...}]}`` as in the OpenAI API.
* unpaired (KTO): ``{"prompt": [messages ending with the user's], "completion": [{"role": "assistant", "content":
  ...}], "label": true|false, "tools"?}``: one reply, good (true) or bad (false); TRL's conversational form (or its
  standard one: the prompt and the completion as strings).
* alpaca: ``{"instruction": str, "input": str?, "output": str, "system": str?}`` → a chat of one user turn
  (instruction, then the input after a blank line) and the assistant's output.
* sharegpt: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...], "system": str?,
  "tools": str?}`` → a chat (``human``/``user`` → user, ``gpt``/``assistant``/``chatgpt``/``bard``/``bing`` →
  assistant; LLaMA-Factory's ``function_call`` turn, a JSON call, → an assistant call and ``observation`` → its
  result; ``tools``: the functions as JSON text).

``columns`` (``data.columns``) renames a source's fields to these names first, e.g. ``{"question": "instruction",
"answer": "output"}``. Keys a record has beyond its format's are ignored and counted (real exports carry ids,
sources, timestamps); with ``strict`` they are problems. Every problem is reported as ``FILE:LINE: field.path:
message`` (``FILE: row N: …`` for table sources) and reading never stops at the first one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from slmtune.data import tools as tool_data

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call"}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str
    unit: str = "line"  # "row" for table sources (Parquet, CSV, a saved Hugging Face dataset, a JSON array)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file}: {self.unit} {self.line}"
        return f"{where}: {self.path}: {self.message}"


@dataclass
class Example:
    line: int  # the line (JSONL) or row (table sources) it came from, counted from 1
    kind: Literal["chat", "completion", "preference", "unpaired"]
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    chosen: str = ""  # preference: the preferred assistant reply to ``messages``
    rejected: str = ""
    fmt: str = ""  # the format it was written in: chat, completion, preference, alpaca, sharegpt
    tools: list[dict] | None = None  # function definitions the conversation may call (data.tools)
    label: bool | None = None  # unpaired (KTO): whether ``completion`` is a desirable reply to ``messages``

    def as_record(self) -> dict:
        """The example as a training-data line (chat or prompt/completion), read back as the same example."""
        if self.kind == "completion":
            return {"prompt": self.prompt, "completion": self.completion}
        msgs = []
        for m in self.messages:
            item = {"role": m["role"], "content": m["content"]}
            if m.get("tool_calls"):
                item["tool_calls"] = m["tool_calls"]
                item["content"] = m["content"] or None
            if m["role"] == "tool":
                item["tool_call_id"] = m["tool_call_id"]
            if m["role"] == "assistant" and "weight" in m:
                item["weight"] = m["weight"]
            msgs.append(item)
        return {"messages": msgs, **({"tools": self.tools} if self.tools else {})}


# the records each objective trains on (grpo reads prompt records through data.prompts)
OBJECTIVE_KINDS = {"sft": ("chat", "completion"), "dpo": ("preference",), "orpo": ("preference",),
                   "simpo": ("preference",), "kto": ("preference", "unpaired")}


def objective_mismatch(kind: str, objective: str) -> str | None:
    """Why records of ``kind`` cannot train ``objective`` (``train.objective``; a service job's method type), said
    the same way by the engine and the service's file check; None when they can."""
    if kind in OBJECTIVE_KINDS[objective]:
        return None
    if objective == "kto":
        return (f"{kind} format: kto needs unpaired records (prompt, completion, label) or preference records "
                "(input.messages, preferred_output, non_preferred_output)")
    if objective != "sft":
        return (f"{kind} format: {objective} needs preference records (input.messages, preferred_output, "
                "non_preferred_output)")
    return (f"{kind} format: {objective} trains on chat or prompt/completion records (set train.objective: dpo, or "
            "a job's method dpo, to train on preference data)")


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


def _check_chat(obj: dict, add, *, tools: list[dict] | None = None, strict: bool = False,
                warn=None, prompt: bool = False) -> list[dict] | None:
    """The messages of a chat record, normalised (role, content, weight; tool_calls on assistant turns and
    tool_call_id on tool turns), or None after reporting every problem through ``add(field, message)``. Calls are
    checked against ``tools``; arguments off their schema are problems with ``strict``, else go to ``warn``."""
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        add("messages", f"expected a list of messages, got {type(msgs).__name__}")
        return None
    if not msgs:
        add("messages", "empty list; " + ("the conversation needs a user message" if prompt
                                          else "at least one user and one assistant message are needed"))
        return None
    by_name = {t["function"]["name"]: t for t in tools} if tools else None
    warn = warn or (lambda path, msg: None)
    out: list[dict] = []
    ok = True
    legacy: list[str] = []  # ids given to deprecated function_call turns, answered by 'function' turns
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            add(where, f"expected an object, got {type(m).__name__}")
            ok = False
            continue
        for key in m:
            if key not in MESSAGE_KEYS:
                add(f"{where}.{key}", "unknown key")
                ok = False
        role = m.get("role")
        if "role" not in m:
            add(f"{where}.role", "missing")
            ok = False
        elif not isinstance(role, str):
            add(f"{where}.role", f"expected a string, got {type(role).__name__}")
            ok = False
        elif role == "function":  # deprecated: the result of a function_call
            role = "tool"
        elif role not in ROLES:
            add(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
            ok = False
        raw_calls = m.get("tool_calls")
        if "function_call" in m:  # deprecated: one call, no id
            if raw_calls is not None:
                add(f"{where}.function_call", "give tool_calls or the deprecated function_call, not both")
                ok = False
            legacy.append(f"call_{i}")
            raw_calls = [{"id": legacy[-1], "type": "function", "function": m["function_call"]}]
        calls = None
        if raw_calls is not None:
            if role != "assistant":
                add(f"{where}.tool_calls", "only assistant messages can make tool calls")
                ok = False
            else:
                calls = tool_data.check_calls(raw_calls, add, where, by_name, strict=strict, warn=warn)
                ok = ok and calls is not None
        text = None
        if role == "assistant" and raw_calls is not None and m.get("content") is None:
            text = ""
        elif "content" not in m:
            add(f"{where}.content", "missing")
            ok = False
        else:
            text = _content_text(m["content"])
            if text is None:
                add(f"{where}.content", f"expected a string, got {type(m['content']).__name__}")
                ok = False
            elif not text.strip() and role != "tool" and raw_calls is None:
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
        item = {"role": role, "content": text, "weight": weight}
        if calls:
            item["tool_calls"] = calls
        if role == "tool":
            cid = m.get("tool_call_id")
            if cid is None and m.get("role") == "function" and legacy:
                cid = legacy[-1]
            if not isinstance(cid, str):
                add(f"{where}.tool_call_id", "missing (a tool message names the call it answers)")
                ok = False
            item["tool_call_id"] = cid
        elif "tool_call_id" in m:
            add(f"{where}.tool_call_id", "only tool messages answer a call")
            ok = False
        out.append(item)
    if ok and prompt:  # a prompt for the model to answer (reinforcement records): it ends with the user's turn
        roles = [m["role"] for m in out]
        if roles[-1] != "user":
            add(f"messages[{len(out) - 1}].role", f"the last message must be the user's (the model answers it), "
                f"not {roles[-1]!r}")
            ok = False
        elif any(r == "system" for r in roles[1:]):
            add(f"messages[{roles.index('system', 1)}].role", "a system or developer message may only come first")
            ok = False
        return out if ok and tool_data.check_exchange(out, add) else None
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
        ok = ok and tool_data.check_exchange(out, add)
    return out if ok else None


def _check_tools(obj: dict, add) -> tuple[bool, list[dict] | None]:
    """A record's ``tools`` (or deprecated ``functions``) and ``parallel_tool_calls``: (ok, tools or None)."""
    ok = True
    if "tools" in obj and "functions" in obj:
        add("functions", "give tools or the deprecated functions, not both")
        return False, None
    raw = obj["tools"] if "tools" in obj else tool_data.functions_to_tools(obj.get("functions"))
    path = "tools" if "tools" in obj else "functions"
    tools = None
    if raw is not None:
        tools = tool_data.check_tools(raw, add, path)
        ok = tools is not None
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        add("parallel_tool_calls", "expected true or false")
        ok = False
    return ok, tools


def check_prompt_record(obj, add) -> tuple[list[dict], list[dict] | None] | None:
    """A reinforcement record — ``{"messages": [... ending with a user turn], "tools"?, <any other fields>}`` — as
    (messages, tools), or None after reporting every problem through ``add``. The other fields are the grader's
    ``item``; a ``developer`` message is a system message."""
    if not isinstance(obj, dict):
        add("(root)", f"expected a JSON object, got {type(obj).__name__}")
        return None
    if "messages" not in obj:
        add("messages", "missing (a reinforcement record holds the conversation the model answers)")
        return None
    msgs = obj["messages"]
    if isinstance(msgs, list):
        msgs = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in msgs]
    tools_ok, tools = _check_tools(obj, add)
    out = _check_chat({"messages": msgs}, add, tools=tools, prompt=True)
    return (out, tools) if out is not None and tools_ok else None


def _check_unpaired(obj: dict, add) -> tuple[list[dict], str, bool, list[dict] | None] | None:
    """An unpaired record (KTO; TRL's conversational form): ``{"prompt": [messages ending with the user's],
    "completion": [{"role": "assistant", "content": ...}], "label": true|false, "tools"?}`` — (messages, reply,
    label, tools), or None after reporting every problem."""
    ok = True
    label = obj.get("label")
    if not isinstance(label, bool):
        add("label", f"expected true (a desirable reply) or false (an undesirable one), got {label!r}")
        ok = False
    prompt = obj.get("prompt")
    msgs = None
    if isinstance(prompt, str):  # TRL's standard (not conversational) form: the prompt is the user's turn
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        add("prompt", "expected a list of messages ending with the user's, or a string")
        ok = False
    else:
        tools_ok, tools = _check_tools(obj, add)
        msgs = _check_chat({"messages": prompt}, lambda path, msg: add(path.replace("messages", "prompt", 1), msg),
                           tools=tools, prompt=True)
        ok = ok and tools_ok and msgs is not None
    out = obj.get("completion")
    reply = None
    if isinstance(out, str):
        out = [{"role": "assistant", "content": out}]
    if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict)):
        add("completion", "expected a list with exactly one assistant message, or a string")
        ok = False
    elif out[0].get("role") != "assistant":
        add("completion[0].role", "must be 'assistant'")
        ok = False
    else:
        reply = _content_text(out[0].get("content"))
        if reply is None or not reply.strip():
            add("completion[0].content", "missing or empty")
            ok = False
    return (msgs, reply, label, tools) if ok else None


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


def _check_preference(obj: dict, add) -> tuple[list[dict], str, str, list[dict] | None] | None:
    ok = True
    for key in obj:
        if key not in ("input", "preferred_output", "non_preferred_output"):
            add(key, "unknown key")
            ok = False
    inp = obj.get("input")
    msgs, tools = None, None
    if not isinstance(inp, dict) or "messages" not in inp:
        add("input", "expected an object with 'messages'")
        ok = False
    else:
        for key in inp:
            if key not in ("messages", "tools", "parallel_tool_calls"):
                add(f"input.{key}", "unknown key")
                ok = False
        tools_ok, tools = _check_tools(inp, lambda path, msg: add(f"input.{path}", msg))
        ok = ok and tools_ok
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
    return prompt, replies[0], replies[1], tools


FORMAT_KEYS = {
    "chat": {"messages", "tools", "parallel_tool_calls", "functions"},
    "completion": {"prompt", "completion"},
    "preference": {"input", "preferred_output", "non_preferred_output"},
    "unpaired": {"prompt", "completion", "label", "tools"},
    "alpaca": {"instruction", "input", "output", "system"},
    "sharegpt": {"conversations", "system", "tools"},
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "function_call": "assistant", "observation": "tool"}
KIND = {"chat": "chat", "completion": "completion", "preference": "preference", "unpaired": "unpaired",
        "alpaca": "chat", "sharegpt": "chat"}


def detect_format(obj: dict) -> str | None:
    """The format a record is written in, by the keys it has."""
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    if "input" in obj or "preferred_output" in obj:
        return "preference"
    if "label" in obj and ("prompt" in obj or "completion" in obj):
        return "unpaired"
    if "prompt" in obj or "completion" in obj:
        return "completion"
    return None


@dataclass
class Reading:
    """What reading a source gave: the valid examples, every problem, the ignored keys (key → records) and the
    formats seen (format → records)."""

    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    warnings: list[Problem] = field(default_factory=list)  # kept records' doubtful parts (tool arguments off schema)
    unit: str = "line"  # what its numbers count: line (JSONL), record (a JSON array), row (a table)
    first_kind: tuple[str, int] | None = None  # (kind, number) of the first record: the file's kind

    def parse(self, records, file: str, *, columns: dict | None = None, strict: bool = False):
        """Check ``(number, obj)`` records one at a time: yields the valid examples; problems, formats and
        ignored keys accumulate here. A generator, so a file can be checked without holding its examples."""
        return _parse(self, records, file, columns=columns, strict=strict)

    def ignored_note(self, file: str) -> str | None:
        """One line naming the ignored keys and how many records had each; None when there were none."""
        if not self.ignored:
            return None
        keys = ", ".join(f"{k} ({n} record{'s' if n != 1 else ''})" for k, n in self.ignored.most_common())
        return f"{file}: ignored key(s) not part of the data format: {keys} (data.strict: true makes them errors)"


def _alpaca_chat(obj: dict, add) -> list[dict] | None:
    ok = True
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            add(key, "missing" if key not in obj or obj[key] is None else
                ("empty" if isinstance(obj[key], str) else f"expected a string, got {type(obj[key]).__name__}"))
            ok = False
    for key in ("input", "system"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            add(key, f"expected a string, got {type(obj[key]).__name__}")
            ok = False
    if not ok:
        return None
    user = obj["instruction"] + (f"\n\n{obj['input']}" if (obj.get("input") or "").strip() else "")
    msgs = [{"role": "system", "content": obj["system"], "weight": 1}] if (obj.get("system") or "").strip() else []
    return msgs + [{"role": "user", "content": user, "weight": 1},
                   {"role": "assistant", "content": obj["output"], "weight": 1}]


def _sharegpt_tools(obj: dict, add) -> tuple[bool, list[dict] | None]:
    """LLaMA-Factory's ``tools`` column: the functions (bare or as tools) as JSON text, or as a list."""
    raw = obj.get("tools")
    if raw is None or raw == "":
        return True, None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            add("tools", f"not valid JSON: {e.msg} (column {e.colno})")
            return False, None
    if isinstance(raw, list):
        raw = [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in raw]
    tools = tool_data.check_tools(raw, add)
    return tools is not None, tools


def _sharegpt_call(value, add, where: str, n: int) -> list[dict] | None:
    """A ``function_call`` turn's value (JSON text of one call or a list of them) as tool calls."""
    try:
        got = json.loads(value)
    except json.JSONDecodeError as e:
        add(f"{where}.value", f"a function_call turn holds JSON ({{'name', 'arguments'}}): {e.msg}")
        return None
    got = got if isinstance(got, list) else [got]
    calls = []
    for j, c in enumerate(got):
        if not isinstance(c, dict) or "name" not in c:
            add(f"{where}.value", "a function_call turn holds {'name', 'arguments'} objects")
            return None
        args = c.get("arguments", {})
        calls.append({"id": f"call_{n}_{j}", "type": "function",
                      "function": {"name": c["name"], "arguments": args if isinstance(args, str) else
                                   tool_data.dumps(args)}})
    return calls


def _sharegpt_chat(obj: dict, add, *, strict: bool = False, warn=None) -> tuple[list[dict], list[dict] | None] | None:
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        add("conversations", "expected a non-empty list of {from, value} turns")
        return None
    tools_ok, tools = _sharegpt_tools(obj, add)
    msgs = [{"role": "system", "content": obj["system"]}] if isinstance(obj.get("system"), str) else []
    ok = tools_ok
    answering: list[str] = []  # ids of the last function_call turn's calls, answered by observations in order
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            add(where, f"expected an object, got {type(turn).__name__}")
            ok = False
            continue
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            add(f"{where}.from", f"expected one of {', '.join(SHAREGPT_ROLES)}, got {who!r}")
            ok = False
        if not isinstance(turn.get("value"), str):
            add(f"{where}.value", "missing" if "value" not in turn else
                f"expected a string, got {type(turn['value']).__name__}")
            ok = False
        if who == "function_call" and isinstance(turn.get("value"), str):
            calls = _sharegpt_call(turn["value"], add, where, i)
            if calls is None:
                ok = False
                continue
            answering = [c["id"] for c in calls]
            msgs.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif who == "observation":
            msgs.append({"role": "tool", "content": turn.get("value"),
                         "tool_call_id": answering.pop(0) if answering else "(none)"})
        else:
            msgs.append({"role": SHAREGPT_ROLES.get(who, "user"), "content": turn.get("value")})
    if not ok:
        return None
    # the rest (roles in order, empty turns, a trained assistant turn) as for OpenAI chat; problems name the turn
    sys_shift = 1 if isinstance(obj.get("system"), str) else 0

    def add_turn(path: str, message: str) -> None:
        if path.startswith("messages[") and sys_shift:
            n = int(path[9:path.index("]")]) - sys_shift
            path = "system" if n < 0 else f"conversations[{n}]{path[path.index(']') + 1:]}"
        elif path.startswith("messages["):
            path = "conversations" + path[8:]
        add(path.replace(".role", ".from").replace(".content", ".value"), message)

    checked = _check_chat({"messages": msgs}, add_turn, tools=tools, strict=strict, warn=warn)
    return (checked, tools) if checked is not None else None


def parse_record(obj, add, *, columns: dict | None = None, strict: bool = False,
                 ignored: Counter | None = None, warn=None) -> tuple[Example | None, str | None]:
    """One record (a parsed JSON object or a table row) → (Example or None, its format or None). Problems go to
    ``add(field, message)``, warnings (tool-call arguments off their schema, without ``strict``) to
    ``warn(field, message)``; keys beyond the format's are counted in ``ignored`` (problems when ``strict``)."""
    if not isinstance(obj, dict):
        add("(root)", f"expected a JSON object, got {type(obj).__name__}")
        return None, None
    if columns:
        obj = {columns.get(k, k): v for k, v in obj.items()}
    fmt = detect_format(obj)
    if fmt is None:
        add("(root)", "expected 'messages' (chat format), 'prompt' and 'completion', 'input' with "
            "'preferred_output' and 'non_preferred_output' (preference format), 'prompt', 'completion' and 'label' "
            "(unpaired format), 'instruction' and 'output' "
            "(Alpaca) or 'conversations' (ShareGPT)" + (f"; it has {', '.join(map(str, obj))} (map them with "
                                                         "data.columns)" if obj else ""))
        return None, None
    extra = [k for k in obj if k not in FORMAT_KEYS[fmt]]
    if extra and strict:
        for k in extra:
            add(k, "unknown key (data.strict is on)")
        return None, fmt
    if ignored is not None:
        ignored.update(extra)
    obj = {k: v for k, v in obj.items() if k not in extra}
    if fmt == "chat":
        tools_ok, tools = _check_tools(obj, add)
        msgs = _check_chat(obj, add, tools=tools, strict=strict, warn=warn)
        return (Example(line=0, kind="chat", messages=msgs, fmt=fmt, tools=tools)
                if msgs is not None and tools_ok else None), fmt
    if fmt == "alpaca":
        msgs = _alpaca_chat(obj, add)
        return (Example(line=0, kind="chat", messages=msgs, fmt=fmt) if msgs is not None else None), fmt
    if fmt == "sharegpt":
        got = _sharegpt_chat(obj, add, strict=strict, warn=warn)
        return (Example(line=0, kind="chat", messages=got[0], fmt=fmt, tools=got[1])
                if got is not None else None), fmt
    if fmt == "preference":
        pref = _check_preference(obj, add)
        return (Example(line=0, kind="preference", messages=pref[0], chosen=pref[1], rejected=pref[2], fmt=fmt,
                        tools=pref[3]) if pref is not None else None), fmt
    if fmt == "unpaired":
        got = _check_unpaired(obj, add)
        return (Example(line=0, kind="unpaired", messages=got[0], completion=got[1], label=got[2], fmt=fmt,
                        tools=got[3]) if got is not None else None), fmt
    pc = _check_completion(obj, add)
    return (Example(line=0, kind="completion", prompt=pc[0], completion=pc[1], fmt=fmt)
            if pc is not None else None), fmt


def parse_records(records, file: str, *, unit: str = "line", columns: dict | None = None,
                  strict: bool = False) -> Reading:
    """Check records given as ``(number, obj)`` pairs — ``obj`` a parsed object, or a ``ValueError`` for a line
    that is not JSON — into a :class:`Reading`. One format a source: a record of another kind is a problem."""
    out = Reading(unit=unit)
    out.examples = list(out.parse(records, file, columns=columns, strict=strict))
    return out


def _parse(out: Reading, records, file: str, *, columns: dict | None, strict: bool):
    """:meth:`Reading.parse`: the valid examples one at a time; problems, formats and ignored keys go to ``out``."""
    unit = out.unit
    n = 0
    for number, obj in records:
        n += 1

        def add(path: str, msg: str, _n=number) -> None:
            out.problems.append(Problem(file, _n, path, msg, unit))

        def warn(path: str, msg: str, _n=number) -> None:
            out.warnings.append(Problem(file, _n, path, msg, unit))

        if isinstance(obj, ValueError):
            add("(json)", str(obj))
            continue
        ex, fmt = parse_record(obj, add, columns=columns, strict=strict, ignored=out.ignored, warn=warn)
        if fmt is None:
            continue
        out.formats[fmt] += 1
        kind = KIND[fmt]
        if out.first_kind is None:
            out.first_kind = (kind, number)
        elif kind != out.first_kind[0]:
            add("(root)", f"{kind} format, but {unit} {out.first_kind[1]} is {out.first_kind[0]} format; use one "
                "format a file")
            continue
        if ex is not None:
            ex.line = number
            yield ex
    if n == 0:
        out.problems.append(Problem(file, 1, "(file)", "no examples (the file is empty)", unit))


MAX_LINE_BYTES = 8 << 20  # one JSONL line; past it the line is a problem and is skipped without being held whole
CHUNK_BYTES = 1 << 20


def jsonl_lines(stream, max_line_bytes: int = MAX_LINE_BYTES):
    """``(line number, text or ValueError)`` for each line of a binary stream, never holding more than one line of
    ``max_line_bytes`` (a longer line is skipped in chunks and given as a ValueError). Lines end only at ``\n``
    (``\r\n`` too): JSON strings may hold U+2028 or U+0085, which ``str.splitlines`` would split on."""
    lineno = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while (rest := stream.readline(CHUNK_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield lineno, ValueError(f"the line is longer than {max_line_bytes} bytes")
            continue
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield lineno, ValueError("not valid UTF-8 text")


def jsonl_records(lines):
    """``(line number, object)`` for every non-blank JSONL line; a line that is not JSON gives a ValueError.
    ``lines`` are ``(number, text or ValueError)`` pairs, as :func:`jsonl_lines` gives them."""
    for lineno, raw in lines:
        if isinstance(raw, ValueError):
            yield lineno, raw
            continue
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as e:
            yield lineno, ValueError(f"invalid JSON: {e.msg} (column {e.colno})")
        except RecursionError:
            yield lineno, ValueError("invalid JSON: nested too deeply")
        except ValueError as e:  # an integer longer than Python's digit limit
            yield lineno, ValueError(f"invalid JSON: {str(e).split(';')[0]}")


def parse_lines(lines, file: str, *, columns: dict | None = None, strict: bool = False) -> tuple[list[Example],
                                                                                                  list[Problem]]:
    """Parse JSONL lines (an iterable of str) into examples, collecting every problem."""
    r = parse_records(jsonl_records(enumerate(lines, start=1)), file, columns=columns, strict=strict)
    return r.examples, r.problems
