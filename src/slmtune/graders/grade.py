"""Grading: a grader (``spec``) scores model samples against data items, a batch at a time.

* :func:`sample_of` — a model's reply as the grader's ``sample`` (``output_text``, ``output_json``, ``output_tools``);
* :func:`grade_batch` — rewards for many (sample, item) pairs: a python grader runs once per batch in the sandbox, a
  model grader sends the whole batch to its judge (the batching engine, through a :class:`Judge`);
* :func:`check_grader` — every problem with a grader before it runs (templates, formula, python source);
* :func:`check_item` — a data line against the grader's templates (a field a template names and the line lacks);
  :func:`read_graded_prompts` — a prompt-record file, every line checked so.

Templates are Jinja expressions only (``{{ item.answer }}``): statements, filters and calls are refused when the
grader is checked, so rendering one costs what the expression reads and no more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol

from slmtune.data.formats import Problem
from slmtune.data.prompts import read_prompts
from slmtune.data.tools import parse_reply
from slmtune.graders import formula, sandbox, similarity
from slmtune.graders.spec import (
    LabelModelGrader,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    leaves,
)

_TEMPLATE_NODES = {"Template", "Output", "TemplateData", "Name", "Getattr", "Getitem", "Const"}


CHECK_LIMITS = sandbox.Limits(cpu_s=5, wall_s=10)  # defining a python grader's source (a check, a job's creation)
RUN_LIMITS = sandbox.Limits(cpu_s=10, wall_s=30)  # one sample through POST /v1/fine_tuning/alpha/graders/run


class Judge(Protocol):
    """What a model grader calls: the replies of ``model`` to each conversation, constrained to
    ``response_format`` (a JSON schema). The service and the training run each give one backed by the batching
    engine (``inference.judge``)."""

    def complete(self, model: str, conversations: list[list[dict]], *, response_format: dict, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None) -> list[str]: ...


class GraderError(ValueError):
    """A grader that cannot run as given (the message names the field)."""


@dataclass
class Grade:
    """One sample's reward, its graders' rewards (a multi grader's parts), and what went wrong (OpenAI's error
    keys: ``python_grader_runtime_error``, ``model_grader_parse_error``, ``invalid_variable_error`` …)."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def sample_of(text: str) -> dict:
    """A reply as the grader sees it: its text (the content before any tool call), the text as JSON when it is
    JSON, and the tool calls it made (OpenAI's ``tool_calls`` shape)."""
    content, calls = parse_reply(text) if "<tool_call>" in text else (text, [])
    out_text = (content or "") if calls else text
    try:
        parsed = json.loads(out_text)
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    return {"output_text": out_text, "output_json": parsed, "output_tools": calls}


# --- templates ----------------------------------------------------------------------------------------------------
@cache
def _env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_text)


def _text(value):
    from jinja2 import Undefined

    if isinstance(value, str):
        return value
    if isinstance(value, Undefined | _AnySample):
        return str(value)  # StrictUndefined raises here, naming what is missing
    return json.dumps(value, ensure_ascii=False, default=str)


@cache
def _template(text: str):
    env = _env()
    try:
        tree = env.parse(text)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateSyntaxError and kin: reported as the grader's problem
        raise GraderError(f"not a template: {e}") from None
    bad = sorted({type(n).__name__ for n in _walk(tree)} - _TEMPLATE_NODES)
    if bad:
        raise GraderError("templates hold only {{ item.… }} and {{ sample.… }} references (found: "
                          + ", ".join(bad) + ")")
    return env.from_string(text)


def _walk(node):
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def render(text: str, sample: dict, item: dict) -> str:
    """A template with the sample and item; GraderError naming the missing variable."""
    from jinja2 import UndefinedError

    try:
        return _template(text).render(sample=sample, item=item)
    except UndefinedError as e:
        raise GraderError(f"a variable the template names is missing: {e.message}") from None


def _templates(g) -> list[tuple[str, str]]:
    """(field, template) of a leaf grader."""
    if isinstance(g, StringCheckGrader | TextSimilarityGrader):
        return [("input", g.input), ("reference", g.reference)]
    if isinstance(g, ScoreModelGrader | LabelModelGrader):
        return [(f"input[{i}].content", t.content) for i, t in enumerate(g.input)]
    return []


class _AnySample:
    """A sample whose every path exists (an empty string): checking items must not depend on the reply."""

    def __getitem__(self, key):
        return _AnySample()

    __getattr__ = __getitem__

    def __str__(self):
        return ""


# --- checks -------------------------------------------------------------------------------------------------------
def check_grader(grader, *, judges: set[str] | None = None) -> list[str]:
    """Every problem with ``grader`` (``field: message``), running nothing but a python grader's definition (in the
    sandbox). ``judges``: the models a model grader may name (None: not checked here)."""
    problems = []
    parts = grader.graders.items() if isinstance(grader, MultiGrader) else [(None, grader)]
    for key, g in parts:
        where = f"graders.{key}." if key is not None else ""
        for fld, text in _templates(g):
            try:
                _template(text)
            except GraderError as e:
                problems.append(f"{where}{fld}: {e}")
        if isinstance(g, PythonGrader):
            reason = sandbox.unavailable()
            if reason:
                problems.append(f"{where}source: {reason}")
            else:
                _, fatal = sandbox.run(g.source, [], CHECK_LIMITS)
                if fatal:
                    problems.append(f"{where}source: {fatal.strip()}")
        if isinstance(g, ScoreModelGrader | LabelModelGrader) and judges is not None and g.model not in judges:
            problems.append(f"{where}model: {g.model!r} is not a model this server can run as a judge")
        if isinstance(g, LabelModelGrader):
            extra = sorted(set(g.passing_labels) - set(g.labels))
            if extra:
                problems.append(f"{where}passing_labels: not among labels: {', '.join(extra)}")
        if isinstance(g, ScoreModelGrader) and not g.range[0] < g.range[1]:
            problems.append(f"{where}range: the low end must be below the high end")
    if isinstance(grader, MultiGrader):
        try:
            formula.parse(grader.calculate_output, set(grader.graders))
        except formula.FormulaError as e:
            problems.append(str(e))
    return problems


def read_graded_prompts(path, grader=None, *, limit: int | None = None) -> tuple[list, list[Problem]]:
    """A prompt-record file (``data.prompts``) with, beside each record's own problems, every field the grader's
    templates read that its line lacks (``(item)``), in line order."""
    records, problems = read_prompts(path, limit=limit)
    if grader is not None:
        problems += [Problem(str(path), r.line, "(item)", msg) for r in records for msg in check_item(grader, r.item)]
        problems.sort(key=lambda p: p.line)
    return records, problems


def check_item(grader, item: dict) -> list[str]:
    """The grader's templates rendered against a data line: ``field: message`` for each one naming a field the line
    lacks."""
    problems = []
    for g in leaves(grader):
        for fld, text in _templates(g):
            try:
                render(text, _AnySample(), item)
            except GraderError as e:
                problems.append(f"grader {g.name}: {fld}: {e}")
    return problems


# --- grading ------------------------------------------------------------------------------------------------------
def grade_batch(grader, samples: list[dict], items: list[dict], *, judge: Judge | None = None,
                limits: sandbox.Limits | None = None) -> list[Grade]:
    """One :class:`Grade` per (sample, item). Nothing raises for a sample: an error scores 0 and is recorded."""
    t0 = time.perf_counter()
    limits = limits or sandbox.Limits()
    n = len(samples)
    parts = grader.graders if isinstance(grader, MultiGrader) else {grader.name: grader}
    scores: dict[str, list[float]] = {}
    errors: list[dict[str, str]] = [{} for _ in range(n)]
    for key, g in parts.items():
        col, errs = _leaf(g, samples, items, judge, limits)
        scores[key] = col
        for i, e in enumerate(errs):
            if e:
                errors[i].update(e)
    if isinstance(grader, MultiGrader):
        tree = formula.parse(grader.calculate_output, set(parts))
        rewards = []
        for i in range(n):
            try:
                rewards.append(formula.evaluate(tree, {k: v[i] for k, v in scores.items()}))
            except formula.FormulaError as e:
                errors[i]["formula_parse_error"] = str(e)
                rewards.append(0.0)
    else:
        rewards = scores[grader.name]
    dt = (time.perf_counter() - t0) / max(n, 1)
    return [Grade(reward=rewards[i], sub_rewards={k: v[i] for k, v in scores.items()}, errors=errors[i], seconds=dt)
            for i in range(n)]


def _leaf(g, samples, items, judge, limits) -> tuple[list[float], list[dict]]:
    n = len(samples)
    out, errs = [0.0] * n, [{} for _ in range(n)]
    if isinstance(g, PythonGrader):
        try:
            outcomes, _ = sandbox.run(g.source, [{"sample": s, "item": it} for s, it in zip(samples, items)], limits)
        except sandbox.SandboxUnavailable as e:
            return out, [{"python_grader_server_error": str(e)} for _ in range(n)]
        for i, o in enumerate(outcomes):
            if o.score is None:
                errs[i] = {"python_grader_runtime_error": o.error or "no score"}
            else:
                out[i] = o.score
        return out, errs
    if isinstance(g, ScoreModelGrader | LabelModelGrader):
        return _model_leaf(g, samples, items, judge)
    for i, (s, it) in enumerate(zip(samples, items)):
        try:
            a, b = render(g.input, s, it), render(g.reference, s, it)
        except GraderError as e:
            errs[i] = {"invalid_variable_error": f"grader {g.name}: {e}"}
            continue
        if isinstance(g, StringCheckGrader):
            out[i] = float({"eq": a == b, "ne": a != b, "like": b in a, "ilike": b.lower() in a.lower()}[g.operation])
        else:
            v = similarity.score(g.evaluation_metric, a, b)
            out[i] = float(v >= g.pass_threshold) if g.pass_threshold is not None else v
    return out, errs


def _model_leaf(g, samples, items, judge) -> tuple[list[float], list[dict]]:
    n = len(samples)
    out, errs = [0.0] * n, [{} for _ in range(n)]
    if judge is None:
        return out, [{"model_grader_server_error": f"grader {g.name}: no judge model is available here"}] * n
    convs, idx = [], []
    for i, (s, it) in enumerate(zip(samples, items)):
        try:
            convs.append([{"role": "system" if t.role == "developer" else t.role, "content": render(t.content, s, it)}
                          for t in g.input])
            idx.append(i)
        except GraderError as e:
            errs[i] = {"invalid_variable_error": f"grader {g.name}: {e}"}
    if isinstance(g, ScoreModelGrader):
        lo, hi = g.range
        # a number of bounded length, as text: a small judge held to {"type": "number"} can run out of tokens in
        # its digits, and a reply cut short is no score
        result = {"type": "string", "pattern": r"^-?[0-9]{1,6}(\.[0-9]{1,3})?$"}
    else:
        result = {"type": "string", "enum": list(g.labels)}
    schema = {"type": "object", "properties": {"result": result}, "required": ["result"],
              "additionalProperties": False}
    sp = g.sampling_params
    try:
        replies = judge.complete(g.model, convs, response_format={"type": "json_schema", "json_schema": {
            "name": "grade", "schema": schema, "strict": True}},
            max_tokens=(sp.max_completions_tokens if sp and sp.max_completions_tokens else 64),
            temperature=sp.temperature if sp and sp.temperature is not None else 0.0,
            top_p=sp.top_p if sp and sp.top_p is not None else 1.0, seed=sp.seed if sp else None) if convs else []
    except Exception as e:  # noqa: BLE001 - the judge failing scores its samples 0, recorded as the server's error
        for i in idx:
            errs[i] = {"model_grader_server_error": f"grader {g.name}: {type(e).__name__}: {e}"}
        return out, errs
    for i, reply in zip(idx, replies):
        try:
            value = json.loads(reply)["result"]
        except (json.JSONDecodeError, KeyError, TypeError):
            errs[i] = {"model_grader_parse_error": f"grader {g.name}: the judge's reply is not a result: "
                                                   f"{reply[:200]!r}"}
            continue
        if isinstance(g, ScoreModelGrader):
            try:
                score = float(value)
            except (TypeError, ValueError):
                errs[i] = {"model_grader_parse_error": f"grader {g.name}: score {value!r} is not a number"}
                continue
            out[i] = min(max(score, lo), hi)
            if g.pass_threshold is not None:
                out[i] = float(out[i] >= g.pass_threshold)
        else:
            out[i] = float(value in g.passing_labels)
    return out, errs
