"""Function calling: tool definitions and calls, checked; the one way a conversation with tools becomes text; the
model's reply read back into calls.

Data (the OpenAI fine-tuning format): a record may carry ``tools: [{"type": "function", "function": {"name",
"description"?, "parameters"?: JSON Schema, "strict"?}}]`` and ``parallel_tool_calls``; an assistant message may
carry ``tool_calls: [{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}]`` (its content
null or text); a ``tool`` message carries ``tool_call_id`` and the result as its content. The deprecated
``functions`` / ``function_call`` / ``function`` role form is converted to this one.

Rendering (:func:`render`): a chat template that handles tools itself in the ``<tool_call>`` JSON syntax (Qwen2.5,
Hermes, SmolLM3 ...) gets them through ``apply_chat_template(..., tools=...)``. Every other template (the default
SmolLM2's among them) gets the *fallback*, plain messages any template renders:

* the tool definitions, one JSON object a line between ``<tools>`` and ``</tools>``, with how to call them, at the
  end of the system turn (a system turn is added when there is none);
* each call as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` after the assistant's text;
* tool results as a user turn of ``<tool_response>\\n...\\n</tool_response>`` blocks (consecutive results merged).

Training, serving (both engines), ``slmtune chat``, the ONNX runtime and the GGUF/Ollama template all use it, so a
model is asked for calls in exactly the form it was taught. :func:`parse_reply` reads calls back from generated text;
the grammar that forces a valid call (``inference.constraints``) produces this same form.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI: a-z, A-Z, 0-9, underscores and dashes, 64 at most; dots too
FALLBACK_PROMPT = (  # {tools} is replaced by the definitions
    "You can call functions to help with the request. They are listed below, one JSON object a line, between "
    "<tools> and </tools>:\n<tools>\n{tools}\n</tools>\nTo call a function, answer with a <tool_call></tool_call> "
    "block holding a JSON object with the function's name and its arguments, one block per call:\n"
    '<tool_call>\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n</tool_call>'
)


def dumps(obj: Any) -> str:
    """The one JSON spelling of calls and schemas in prompts (what training taught and the grammar produces)."""
    return json.dumps(obj, ensure_ascii=False)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# --- checking --------------------------------------------------------------------------------------------------------
def check_tools(tools: Any, add, path: str = "tools") -> list[dict] | None:
    """The tool list as ``[{"type": "function", "function": {...}}]``, or None after reporting every problem."""
    if not isinstance(tools, list):
        add(path, f"expected a list of tools, got {type(tools).__name__}")
        return None
    out, seen, ok = [], set(), True
    for i, t in enumerate(tools):
        where = f"{path}[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            add(where, 'expected {"type": "function", "function": {"name": ..., "parameters": ...}}')
            ok = False
            continue
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            add(f"{where}.function.name", f"expected a name of 1-64 letters, digits, '_', '-' or '.', got {name!r}")
            ok = False
        elif name in seen:
            add(f"{where}.function.name", f"{name!r} is defined twice")
            ok = False
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            add(f"{where}.function.description", "expected a string")
            ok = False
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            add(f"{where}.function.parameters", "expected a JSON Schema object")
            ok = False
        elif (problem := schema_problem(params)) is not None:
            add(f"{where}.function.parameters", problem)
            ok = False
        if "strict" in fn and not isinstance(fn["strict"], bool):
            add(f"{where}.function.strict", "expected true or false")
            ok = False
        extra = [k for k in fn if k not in ("name", "description", "parameters", "strict")]
        for k in extra:
            add(f"{where}.function.{k}", "unknown key")
            ok = False
        if ok:
            out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out if ok else None


def schema_problem(schema: dict) -> str | None:
    """Why ``schema`` is not a valid JSON Schema (draft 2020-12), or None."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        return f"not a valid JSON Schema: {e.message}"
    except RecursionError:
        return "not a valid JSON Schema: nested too deeply"
    return None


def argument_problems(arguments: Any, schema: dict) -> list[str]:
    """What is wrong with a call's arguments (a dict) under its function's parameter schema, one line each."""
    import jsonschema

    v = jsonschema.Draft202012Validator(schema)
    try:
        errors = sorted(v.iter_errors(arguments), key=lambda e: list(map(str, e.absolute_path)))
    except Exception as e:  # noqa: BLE001 - a schema the validator cannot apply (a $ref to nowhere): reported, not raised
        return [f"(arguments): the schema cannot be applied ({e})"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}" for e in errors][:5]


def functions_to_tools(functions: Any) -> Any:
    """The deprecated ``functions`` list as ``tools`` (checked afterwards as tools)."""
    if not isinstance(functions, list):
        return functions
    return [{"type": "function", "function": f} for f in functions]


def check_calls(calls: Any, add, where: str, tools: dict[str, dict] | None, *, strict: bool,
                warn) -> list[dict] | None:
    """An assistant message's ``tool_calls``, each ``{"id", "type", "function": {"name", "arguments"}}`` with its
    arguments re-spelled canonically; None after reporting. ``tools`` by name (None: the record has none, so any
    call is a problem). Arguments off their schema are problems under ``strict``, else ``warn``-ed and kept."""
    if not isinstance(calls, list) or not calls:
        add(f"{where}.tool_calls", "expected a non-empty list of calls")
        return None
    out, ok = [], True
    for j, c in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or c.get("type", "function") != "function":
            add(at, 'expected {"id": ..., "type": "function", "function": {"name": ..., "arguments": "..."}}')
            ok = False
            continue
        name, raw = fn.get("name"), fn.get("arguments", "{}")
        if not isinstance(name, str) or not name:
            add(f"{at}.function.name", "missing")
            ok = False
            continue
        if tools is None:
            add(f"{at}.function.name", f"a call to {name!r}, but the record has no 'tools'")
            ok = False
            continue
        if name not in tools:
            add(f"{at}.function.name", f"{name!r} is not one of the record's tools ({', '.join(tools) or 'none'})")
            ok = False
            continue
        if isinstance(raw, dict):  # some exports store the arguments as an object already
            args = raw
        elif not isinstance(raw, str):
            add(f"{at}.function.arguments", f"expected a JSON string, got {type(raw).__name__}")
            ok = False
            continue
        else:
            try:
                args = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as e:
                add(f"{at}.function.arguments", f"not valid JSON: {e.msg} (column {e.colno})")
                ok = False
                continue
        if not isinstance(args, dict):
            add(f"{at}.function.arguments", f"expected a JSON object, got {type(args).__name__}")
            ok = False
            continue
        problems = argument_problems(args, tools[name]["function"]["parameters"])
        if problems:
            msg = f"do not match {name}'s parameters: {'; '.join(problems)}"
            if strict:
                add(f"{at}.function.arguments", msg + " (data.strict is on)")
                ok = False
                continue
            warn(f"{at}.function.arguments", msg)
        cid = c.get("id")
        if cid is not None and not isinstance(cid, str):
            add(f"{at}.id", "expected a string")
            ok = False
            continue
        out.append({"id": cid or f"call_{j}", "type": "function",
                    "function": {"name": name, "arguments": dumps(args)}})
    return out if ok else None


def check_exchange(messages: list[dict], add) -> bool:
    """Calls and results pair up: each ``tool`` message answers an earlier call of the same turn (by
    ``tool_call_id``), and every call is answered before the next user turn. Messages are the normalised ones."""
    ok, open_calls = True, {}  # call id → index of the assistant message that made it
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            cid = m.get("tool_call_id")
            if cid not in open_calls:
                add(f"messages[{i}].tool_call_id", f"{cid!r} answers no earlier call of this turn")
                ok = False
            else:
                del open_calls[cid]
        elif m["role"] == "assistant" and m.get("tool_calls"):
            open_calls.update({c["id"]: i for c in m["tool_calls"]})
        elif m["role"] == "user" and open_calls:
            cid, at = next(iter(open_calls.items()))
            add(f"messages[{at}].tool_calls", f"call {cid!r} is never answered (no tool message with its "
                "tool_call_id before the next user turn)")
            ok = False
            open_calls.clear()
    return ok


# --- rendering -----------------------------------------------------------------------------------------------------
def native_tools(tokenizer) -> bool:
    """Whether the model's own chat template renders tools and calls, in the ``<tool_call>`` JSON syntax this
    package parses. Templates with another call syntax get the fallback, so what is trained is what is parsed."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template and "tool_calls" in template and CALL_OPEN in template


def call_text(calls: list[dict]) -> str:
    """Calls as the fallback spells them: one ``<tool_call>`` block each, one per line."""
    return "\n".join(f"{CALL_OPEN}\n{dumps({'name': c['function']['name'], 'arguments': _args(c)})}\n{CALL_CLOSE}"
                     for c in calls)


def _args(call: dict) -> Any:
    raw = call["function"].get("arguments", "{}")
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw) if raw and raw.strip() else {}
    except json.JSONDecodeError:
        return raw  # a request history may carry what a model once produced; rendered as it is


def tools_prompt(tools: list[dict]) -> str:
    return FALLBACK_PROMPT.replace("{tools}", "\n".join(dumps(t) for t in tools))


def plain_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """The fallback: a conversation with tools as plain role/content messages (``weight`` kept on assistant turns).
    A conversation without tools or calls comes back as it was (role, content, weight)."""
    out: list[dict] = []
    after_result = False  # the last message added is a user turn of tool results (more results join it)
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            content = (content.rstrip() + "\n" if content.strip() else "") + call_text(m["tool_calls"])
        if role == "tool":
            block = f"{RESULT_OPEN}\n{content}\n{RESULT_CLOSE}"
            if after_result:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            after_result = True
            continue
        after_result = False
        item = {"role": role, "content": content}
        if "weight" in m:
            item["weight"] = m["weight"]
        out.append(item)
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"].rstrip() + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def native_messages(messages: list[dict]) -> list[dict]:
    """Messages as tool-aware templates read them (transformers' convention: arguments as an object)."""
    out = []
    for m in messages:
        item = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            item["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                   "function": {"name": c["function"]["name"], "arguments": _args(c)}}
                                  for c in m["tool_calls"]]
        if m.get("tool_call_id"):
            item["tool_call_id"] = m["tool_call_id"]
        out.append(item)
    return out


def reads_calls(tools, tool_choice) -> bool:
    """Whether a reply is read for calls: tools were given and ``tool_choice`` does not rule calls out."""
    return bool(tools) and tool_choice != "none"


def has_tools(messages: list[dict], tools: list[dict] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def render(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
           add_generation_prompt: bool = False) -> str:
    """A conversation (normalised messages, maybe with calls and results) and its tools as the prompt text, through
    the model's chat template: natively where it handles tools, else as :func:`plain_messages`."""
    if has_tools(messages, tools) and native_tools(tokenizer):
        return tokenizer.apply_chat_template(native_messages(messages), tools=tools or None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    msgs = [{"role": m["role"], "content": m["content"]} for m in plain_messages(messages, tools)]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


# --- reading a reply -----------------------------------------------------------------------------------------------
def parse_call(body: str) -> dict | None:
    """One block's JSON as ``{"name", "arguments": <JSON text>}``, or None when it is not a call. The arguments are
    the model's own text where the block is in the canonical form (numbers kept as written), else re-spelled."""
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # arguments given as JSON text
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    head = dumps({"name": obj["name"]})[:-1] + ', "arguments": '
    if set(obj) == {"name", "arguments"} and body.startswith(head) and body.endswith("}"):
        return {"name": obj["name"], "arguments": body[len(head):-1]}
    return {"name": obj["name"], "arguments": dumps(args)}


def _block_call(body: str) -> dict | None:
    """A ``<tool_call>`` block's text (open tag included, close tag not) as a call with a fresh id, or None."""
    body = body.strip()
    call = parse_call(body.removeprefix(CALL_OPEN).strip()) if body.startswith(CALL_OPEN) else None
    return {"id": new_call_id(), "type": "function", "function": call} if call is not None else None


def parse_reply(text: str) -> tuple[str | None, list[dict]]:
    """A generated reply as (content, calls): the text before the first ``<tool_call>`` block (None when empty)
    and each block's call with a fresh id, read as :class:`ReplyReader` reads a stream."""
    reader = ReplyReader()
    content = reader.feed(text)[0] + reader.finish()[0]
    return content.strip() or None, reader.calls


def _partial_open(text: str) -> int:
    """Characters at the end of ``text`` that could be the start of ``<tool_call>`` (held back while streaming)."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


class ReplyReader:
    """Reads a reply while it streams: content until a ``<tool_call>`` block opens, then each call as its block
    closes (what the chat stream sends as content and tool-call deltas). Non-streamed replies use
    :func:`parse_reply`; both read the same text the same way."""

    def __init__(self):
        self.text = ""
        self.sent = 0  # characters of text handled (sent as content, or read as calls)
        self.in_calls = False
        self.calls: list[dict] = []

    def feed(self, piece: str) -> tuple[str, list[dict]]:
        """Take generated text; returns (content to send now, calls completed now)."""
        self.text += piece
        content = ""
        if not self.in_calls:
            at = self.text.find(CALL_OPEN, self.sent)
            if at < 0:
                end = len(self.text) - _partial_open(self.text)
                content, self.sent = self.text[self.sent:end], max(self.sent, end)
                return content, []
            content, self.sent, self.in_calls = self.text[self.sent:at], at, True
        done = []
        while (end := self.text.find(CALL_CLOSE, self.sent)) >= 0:
            call = _block_call(self.text[self.sent:end])
            if call is None:
                break  # not a call after all: left for finish(), which sends it as text
            done.append(call)
            self.sent = end + len(CALL_CLOSE)
        self.calls += done
        return content, done

    def finish(self) -> tuple[str, list[dict]]:
        """The reply has ended: the rest as (content, calls) — an unclosed last block that holds a whole call counts
        as one (a model may end without the closing tag), a partial call after whole ones is dropped, anything else
        is text."""
        rest = self.text[self.sent:]
        self.sent = len(self.text)
        if not self.in_calls:
            return rest, []
        body = rest.strip()
        if not body:
            return "", []
        call = _block_call(body)
        if call is not None:
            self.calls.append(call)
            return "", [call]
        if self.calls and body.startswith(CALL_OPEN):
            return "", []  # a further call cut off by the token limit (finish_reason "length" says so)
        return rest, []


class Reply(str):
    """What ``slmtune.load(...).chat`` answers: the reply's text (a ``str``, as without tools) with the calls it
    made in ``tool_calls`` (OpenAI's ``[{"id", "type": "function", "function": {"name", "arguments"}}]``)."""

    tool_calls: list[dict]
    raw: str  # the generated text as it was (calls in their <tool_call> blocks)

    def __new__(cls, text: str | None, tool_calls: list[dict] | None = None, raw: str | None = None):
        obj = super().__new__(cls, text or "")
        obj.tool_calls = tool_calls or []
        obj.raw = raw if raw is not None else (text or "")
        return obj

    @classmethod
    def read(cls, text: str, tools, tool_choice) -> Reply:
        """A generated text as a Reply: its calls read out when the request allows them (:func:`reads_calls`)."""
        if not reads_calls(tools, tool_choice):
            return cls(text.strip(), raw=text)
        content, calls = parse_reply(text)
        return cls(content, calls, raw=text)

    def message(self) -> dict:
        """The assistant message to append to the history (with its calls)."""
        out: dict = {"role": "assistant", "content": str(self) or None}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out
