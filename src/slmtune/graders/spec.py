"""Grader definitions, OpenAI's wire format: what the job's ``method.reinforcement.grader``, ``train.rl.grader`` and
the ``/v1/fine_tuning/alpha/graders/*`` endpoints accept. Typed here once; the service's schemas and the engine's
config read these models.

Templates (``input``, ``reference``, a model grader's messages) are Jinja text over two variables: ``item`` (the data
line: its extra fields, ``messages``, ``tools``) and ``sample`` (``output_text``, ``output_json`` when the text is
JSON, ``output_tools`` — the calls the reply made). ``{{ item.answer }}``, ``{{ sample.output_json.score }}``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEMPLATE_CHARS = 64_000
MAX_SOURCE_CHARS = 256_000  # a python grader's source: Azure's limit (256 kB)
MAX_FORMULA_CHARS = 1_000
MAX_SUB_GRADERS = 16
SIMILARITY_METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
                      "rouge_l")


class _Grader(BaseModel):
    # strict: a JSON false is not a 0 threshold, a "1" not a seed (what the API's schema says is what it takes)
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(..., min_length=1, max_length=256, description="The grader's name (its sub-reward key).")


class StringCheckGrader(_Grader):
    """1 when ``input`` compares to ``reference`` as ``operation`` says, else 0: ``eq``/``ne`` exact, ``like``
    contains, ``ilike`` contains ignoring case."""

    type: Literal["string_check"] = "string_check"
    input: str = Field(..., max_length=MAX_TEMPLATE_CHARS)
    reference: str = Field(..., max_length=MAX_TEMPLATE_CHARS)
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(_Grader):
    """A similarity in [0, 1] between ``input`` and ``reference`` (rapidfuzz, sacrebleu, nltk, rouge-score).
    ``pass_threshold`` (optional) turns it into 0/1."""

    type: Literal["text_similarity"] = "text_similarity"
    input: str = Field(..., max_length=MAX_TEMPLATE_CHARS)
    reference: str = Field(..., max_length=MAX_TEMPLATE_CHARS)
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]
    pass_threshold: float | None = Field(None, ge=0, le=1)


class PythonGrader(_Grader):
    """``source`` defines ``grade(sample, item) -> float``; it runs in a sandboxed child process (docs/rft.md)."""

    type: Literal["python"] = "python"
    source: str = Field(..., min_length=1, max_length=MAX_SOURCE_CHARS)
    image_tag: str | None = Field(None, max_length=128, description="Accepted for compatibility; one runtime here.")


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(..., max_length=MAX_TEMPLATE_CHARS)
    type: Literal["message"] | None = None


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_completions_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class ScoreModelGrader(_Grader):
    """A judge model (a base or ``ft:`` model this server serves) reads ``input`` and answers a number in
    ``range``; the reward is that number."""

    type: Literal["score_model"] = "score_model"
    model: str = Field(..., min_length=1, max_length=256)
    input: list[ChatTurn] = Field(..., min_length=1, max_length=32)
    range: list[float] = Field([0.0, 1.0], min_length=2, max_length=2, description="[low, high]")
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None


class LabelModelGrader(_Grader):
    """A judge model picks one of ``labels``; the reward is 1 when it is one of ``passing_labels``."""

    type: Literal["label_model"] = "label_model"
    model: str = Field(..., min_length=1, max_length=256)
    input: list[ChatTurn] = Field(..., min_length=1, max_length=32)
    labels: list[str] = Field(..., min_length=2, max_length=64)
    passing_labels: list[str] = Field(..., min_length=1, max_length=64)
    sampling_params: SamplingParams | None = None


Leaf = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader,
                 Field(discriminator="type")]


class MultiGrader(_Grader):
    """Several graders combined by ``calculate_output``, a formula over their names: ``+ - * / ^``, parentheses,
    ``min max abs floor ceil exp sqrt log`` (parsed, never evaluated as Python)."""

    type: Literal["multi"] = "multi"
    graders: dict[str, Leaf] = Field(..., min_length=1, max_length=MAX_SUB_GRADERS)
    calculate_output: str = Field(..., min_length=1, max_length=MAX_FORMULA_CHARS)


Grader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | LabelModelGrader
                   | MultiGrader, Field(discriminator="type")]
MODEL_GRADERS = (ScoreModelGrader, LabelModelGrader)


def leaves(grader) -> list:
    """The grader itself, or a multi grader's parts."""
    return list(grader.graders.values()) if isinstance(grader, MultiGrader) else [grader]


def judge_models(grader) -> set[str]:
    """The judge models a grader calls (score_model, label_model)."""
    return {g.model for g in leaves(grader) if isinstance(g, MODEL_GRADERS)}


def parse_grader(spec: dict):
    """A grader from its JSON (a job's stored method, ``rl.grader``); pydantic's ValidationError when it is not
    one."""
    from pydantic import TypeAdapter

    return TypeAdapter(Grader).validate_python(spec)
