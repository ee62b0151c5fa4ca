"""Constrained decoding: a request's tools (``tool_choice``) and ``response_format`` as a grammar, and a per-row
token mask from it in the batch.

The grammar engine is llguidance (PyPI, MIT; Rust, no dependencies): it builds a mask for any tokenizer from a Lark
grammar with embedded JSON Schemas, needs no ahead-of-time compilation per schema (a request's tools are new with
each request; building a matcher takes ~1 ms), and computes a 49k-token mask in microseconds on one CPU core
(docs/benchmarks.md, ``benchmarks/constrained.py``). xgrammar needs a compile step per schema and pulls triton;
outlines-core indexes the whole vocabulary per schema ahead of time.

What each request gets (tools in the fallback's ``<tool_call>`` form, ``data.tools``):

* ``tool_choice: "required"`` — one call (or several, with ``parallel_tool_calls``), forced from the first token;
* a named function — that function's call, forced;
* ``"auto"`` (the default with tools) — free text until the model opens a ``<tool_call>`` block, then the block is
  forced to be a valid call (a *triggered* grammar);
* ``"none"`` — the tools are in the prompt but a call cannot start (``<tool_call>`` is a stop string);
* ``response_format`` ``json_object`` / ``json_schema`` — the reply is JSON (of that schema) from the first token.

A call's arguments follow its function's parameter schema, closed to the arguments it declares (unless the schema
sets ``additionalProperties`` itself). With ``strict: true`` (the function's, or the
json_schema's) a schema feature the grammar cannot express is a 400 naming it; otherwise such a schema is relaxed to
any JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slmtune.data.tools import CALL_CLOSE, CALL_OPEN

# the spelling the grammar forces: the fallback template's (data.tools.dumps: ", " and ": ", no other whitespace)
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class UnsupportedSchema(ValueError):
    """A schema the grammar engine cannot enforce (a 400 naming the parameter and the feature)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Grammar:
    """What a request's sequences are held to: a Lark grammar, forced from the first token or, with ``trigger``,
    once the generated text ends with it (and whitespace)."""

    lark: str
    trigger: str | None = None


def _json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


def _call_rule(fn: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": _closed(fn["parameters"])},
            "required": ["name", "arguments"], "additionalProperties": False}


def _closed(params: dict) -> dict:
    """A function takes the arguments it declares: an object schema that does not say otherwise gets
    ``additionalProperties: false`` at its top level, so a forced call cannot invent arguments."""
    if params.get("type", "object") == "object" and "properties" in params and "additionalProperties" not in params:
        return {**params, "additionalProperties": False}
    return params


def _calls_lark(functions: list[dict], parallel: bool, *, opened: bool) -> str:
    """Lark for one call (or one or more with ``parallel``); ``opened``: the first ``<tool_call>`` is already
    written (a triggered grammar starts after it)."""
    block = f'"{_lit(CALL_OPEN)}\\n" call "\\n{_lit(CALL_CLOSE)}"'
    first = f'ws call "\\n{_lit(CALL_CLOSE)}"' if opened else block
    more = f' ("\\n" {block})*' if parallel else ""
    rules = [f"calls: {first}{more}", "ws: /[ \\t\\r\\n]*/",
             "call: " + " | ".join(f"call_{i}" for i in range(len(functions)))]
    rules += [f"call_{i}: {_json(_call_rule(fn))}" for i, fn in enumerate(functions)]
    return "\n".join(rules)


def _lit(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _response_schema(response_format: dict | None) -> tuple[dict | None, bool]:
    """(schema, strict) of a ``response_format``; (None, False) for text."""
    if not response_format or response_format.get("type") == "text":
        return None, False
    if response_format.get("type") == "json_object":
        return {"type": "object"}, False
    spec = response_format.get("json_schema") or {}
    return spec.get("schema") or {"type": "object"}, bool(spec.get("strict"))


def build(tools: list[dict] | None, tool_choice, parallel: bool, response_format: dict | None,
          check) -> Grammar | None:
    """The grammar a request is held to, or None when it generates freely. ``check(lark)`` returns the grammar
    engine's complaint about a grammar ('' when it is fine); schemas it refuses are relaxed, or raise
    :class:`UnsupportedSchema` when ``strict``."""
    answer, answer_strict = _response_schema(response_format)
    if answer is not None:
        problem = check(f"start: {_json(answer)}")
        if problem:
            if answer_strict:
                raise UnsupportedSchema(f"response_format.json_schema.schema is not supported: {problem}",
                                        "response_format")
            answer = {"type": "object"}
    if not tools or tool_choice == "none":
        return Grammar(f"start: {_json(answer)}") if answer is not None else None
    named = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None
    functions = []
    for i, t in enumerate(tools):  # i: the tool's place in the request, as the 400 names it
        fn = t["function"]
        if named is not None and fn["name"] != named:
            continue
        problem = check("start: " + _json(_call_rule(fn)))
        if problem:
            if fn.get("strict"):
                raise UnsupportedSchema(f"tools[{i}].function.parameters ({fn['name']}) is not supported: {problem}",
                                        "tools")
            fn = {**fn, "parameters": {"type": "object"}}
        functions.append(fn)
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    if forced:
        return Grammar("start: calls\n" + _calls_lark(functions, parallel, opened=False))
    if answer is not None:  # auto with a response format: the JSON answer or calls, from the first token
        return Grammar(f"start: answer | calls\nanswer: {_json(answer)}\n" +
                       _calls_lark(functions, parallel, opened=False))
    return Grammar("start: calls\n" + _calls_lark(functions, parallel, opened=True), trigger=CALL_OPEN)


class Matchers:
    """The grammar engine for one tokenizer: checks grammars and makes a matcher per sequence."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        import llguidance
        import llguidance.hf

        self._llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = self.tokenizer.vocab_size

    @classmethod
    def for_model(cls, tokenizer, model) -> Matchers:
        """Matchers as wide as the model's logits: its embedding may be padded beyond the tokenizer."""
        return cls(tokenizer, max(len(tokenizer), int(getattr(model.config, "vocab_size", 0) or 0)))

    def check(self, lark: str) -> str:
        """'' when the grammar is usable, else the engine's reason (the schema feature it cannot enforce)."""
        try:
            grammar = self._llg.LLMatcher.grammar_from_lark(lark)
            return self._llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        except Exception as e:  # noqa: BLE001 - whatever the engine refuses is the client's schema: a 400, not a 500
            return str(e) or type(e).__name__

    def matcher(self, grammar: Grammar):
        return self._llg.LLMatcher(self.tokenizer, self._llg.LLMatcher.grammar_from_lark(grammar.lark))


class RowConstraint:
    """One sequence's grammar state: inactive until its trigger (if any) appears, then a matcher fed every token."""

    def __init__(self, grammar: Grammar, matchers: Matchers):
        self.grammar = grammar
        self.matchers = matchers
        self.matcher = None if grammar.trigger else matchers.matcher(grammar)
        self.broken = False  # the trigger came inside a token that also began the call: left unconstrained

    @property
    def active(self) -> bool:
        return self.matcher is not None and not self.broken

    def after(self, token: int, text: str) -> None:
        """Feed the token just chosen (``text``: the sequence's whole text after it)."""
        if self.matcher is not None:
            if not self.matcher.consume_token(token):
                self.broken = True  # cannot happen for a masked choice; never raise on the scheduler thread
            return
        trigger = self.grammar.trigger
        at = text.rfind(trigger)
        if at >= 0 and not text[at + len(trigger):].strip():
            self.matcher = self.matchers.matcher(self.grammar)


def apply_masks(logits, rows: list[RowConstraint | None]) -> None:
    """Mask, in place, the tokens each constrained row's grammar does not allow next (``logits`` [rows, vocab])."""
    import llguidance.torch as lt

    active = [i for i, r in enumerate(rows) if r is not None and r.active]
    if not active:
        return
    n = rows[active[0]].matchers.vocab_size
    bitmask = lt.allocate_token_bitmask(len(active), n)
    for j, i in enumerate(active):
        lt.fill_next_token_bitmask(rows[i].matcher, bitmask, j)
    sub = logits[active]
    part = sub[:, :n].contiguous()
    lt.apply_token_bitmask_inplace(part, bitmask)
    sub[:, :n] = part
    sub[:, n:] = float("-inf")  # an embedding padded beyond the tokenizer: those ids are never allowed
    logits[active] = sub
