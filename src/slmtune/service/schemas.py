"""Wire models, in the order of the OpenAI API reference (shared/specs/finetuning-api.md).

Input models reject unknown fields with a 400 naming the field (as OpenAI does); vendor extras that clients are
known to send (Azure's ``trainingType``) are listed explicitly. Output models list every field, nullable ones
included, so a response is always complete.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmtune.config import EarlyStopping, ScenarioName
from slmtune.graders.spec import MAX_TEMPLATE_CHARS, Grader
from slmtune.service.states import JobStatus

MAX_CHOICES = 8  # n per chat request
MAX_MESSAGES = 2048  # messages per chat request
MAX_STOP_CHARS = 256  # characters per stop sequence (each is matched against the text at every token)
MAX_CHAT_CHARS = 1_000_000  # characters of message content per chat request (far past any context window here)
MAX_TOOLS = 128  # tools per chat request (OpenAI's limit); their JSON counts toward MAX_CHAT_CHARS


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer: ``{"error": {"message", "type", "param", "code"}}`` (and a stream's in-band failure).
    The one builder of that body: ``gate.envelope`` and the chat stream serialise it; the OpenAPI schema shows it."""

    error: ErrorBody

    @classmethod
    def body(cls, message: str, type_: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> dict:
        return cls(error=ErrorBody(message=message, type=type_, param=param, code=code)).model_dump()


def error_responses(*statuses: int) -> dict:
    """The ``responses=`` of a route or router: each status answers with the error envelope."""
    text = {400: "Invalid request (the message names the field)", 401: "Missing, unknown or expired API key",
            404: "No such object in this project", 413: "Upload past the size limit or the project's storage quota",
            429: "Rate limit or queue limit; see Retry-After"}
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}


# --- files ----------------------------------------------------------------------------------------------------
UploadPurpose = Literal["fine-tune", "batch", "assistants", "vision", "user_data", "evals"]

class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


# --- slmtune extras (not in the OpenAI API; under /v1/slmtune/) ---------------------------------------------------
class CheckProblem(BaseModel):
    line: int = Field(description="1-based line of the JSONL file.")
    field: str = Field(description="The record's field, e.g. messages[1].role.")
    message: str


class PreviewSegment(BaseModel):
    text: str
    trained: bool = Field(description="True where these tokens carry loss (what the model learns to write).")
    tokens: int


class PreviewExample(BaseModel):
    line: int
    tokens: int
    trained_tokens: int
    segments: list[PreviewSegment]


class FileCheck(BaseModel):
    """``GET /v1/slmtune/files/{file_id}/check``: the file as training reads it, for one base model."""

    object: Literal["file.check"] = "file.check"
    file_id: str
    filename: str
    model: str
    ok: bool
    n_problems: int
    problems: list[CheckProblem] = Field(description="The first 200 problems, in line order.")
    formats: dict[str, int] = Field(description="Examples per detected format (chat, completion, preference, "
                                    "alpaca, sharegpt).")
    warnings: list[str] = Field(default_factory=list, description="What training will read past: keys the records "
                                "have beyond their format's (ignored), named with how many records had each.")
    stats: dict[str, Any] = Field(description="Token statistics, as `slmtune data validate` prints them.")
    preview: list[PreviewExample]


# --- fine-tuning jobs -------------------------------------------------------------------------------------------
class SupervisedHyperparameters(_In):
    batch_size: Literal["auto"] | int = Field("auto", description="Examples per step, 1–256.")
    learning_rate_multiplier: Literal["auto"] | float = Field("auto", description="Scales the method's base LR.")
    n_epochs: Literal["auto"] | int = Field("auto", description="Passes over the training file, 1–50.")
    eval_interval: Literal["auto"] | int = Field("auto", description="slmtune extra: steps between validations "
                                                 "(auto: ten in the run with early_stopping or keep best, else each "
                                                 "epoch's end).")
    early_stopping: EarlyStopping | None = Field(None, description="slmtune extra: stop when validation stops "
                                                 "improving, {metric, patience, min_delta} (needs a validation "
                                                 "file); the events say when and why.")
    keep: Literal["last", "best"] = Field("last", description="slmtune extra: the fine-tuned model is the last "
                                          "step's weights, or the checkpoint of the best validation.")


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Literal["auto"] | float = "auto"


class SupervisedMethod(_In):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(_In):
    hyperparameters: DpoHyperparameters | None = None


PREFERENCE_TYPES = ("dpo", "orpo", "simpo", "kto")  # dpo is OpenAI's; the others are slmtune extras (TRL's)


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """What each means for an open model here: docs/rft.md."""

    batch_size: Literal["auto"] | int = Field("auto", description="Prompts per step, 1–256 (each sampled "
                                              "compute_multiplier × 4 times).")
    compute_multiplier: Literal["auto"] | float = Field("auto", description="Scales the completions sampled per "
                                                        "prompt (4 at 1.0; 2–16).")
    eval_interval: Literal["auto"] | int = Field("auto", description="Steps between validation rewards.")
    eval_samples: Literal["auto"] | int = Field("auto", description="Validation prompts scored at each evaluation.")
    reasoning_effort: Literal["default", "low", "medium", "high"] = Field(
        "default", description="The completion-length budget: low 64 tokens, default/medium 128, high 256.")


class ReinforcementMethod(_In):
    grader: Grader
    hyperparameters: ReinforcementHyperparameters | None = None


class JobMethod(_In):
    """A job's ``method`` (the training objective, OpenAI's wire name; slmtune.methods.Method is the PEFT method)."""

    type: Literal["supervised", "dpo", "reinforcement", "orpo", "simpo", "kto"] = Field(
        ..., description="OpenAI's supervised, dpo and reinforcement; slmtune extras: orpo and simpo (preference "
        "data, no reference model), kto (unpaired good/bad replies or preference data). The extras take "
        "hyperparameters as dpo does, under their own key.")
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None
    orpo: DpoMethod | None = None
    simpo: DpoMethod | None = None
    kto: DpoMethod | None = None


# --- graders (OpenAI's /v1/fine_tuning/alpha/graders) -----------------------------------------------------------
class GraderRunRequest(_In):
    grader: Grader
    model_sample: str = Field(..., max_length=MAX_TEMPLATE_CHARS, description="The model's reply being graded: "
                              "sample.output_text (and output_json when it is JSON, output_tools for its calls).")
    item: dict[str, Any] | None = Field(None, description="The data line the templates read as item.*")


class GraderValidateRequest(_In):
    grader: Grader


class GraderValidateResponse(BaseModel):
    grader: dict[str, Any]


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: dict[str, Any]
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderRunResponse(BaseModel):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobCreate(_In):
    """``POST /v1/fine_tuning/jobs`` (https://platform.openai.com/docs/api-reference/fine-tuning/create)."""

    model: str
    training_file: str
    hyperparameters: SupervisedHyperparameters | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                               description="Up to 64 of A-Z, a-z, 0-9, '_' and '-' (it becomes part of the model id).")
    validation_file: str | None = None
    integrations: list[dict] | None = None
    seed: int | None = Field(None, ge=0, le=2147483647)
    method: JobMethod | None = None
    metadata: dict[str, str] | None = None
    scenario: ScenarioName | None = Field(
        None, description="slmtune extra: the files hold this scenario's records (docs/scenarios.md), turned into "
        "chat examples by its prompt template; after training the base and tuned models are scored on the "
        "validation records (or a 20% hold-out) and report.md with its plots joins the job's result files.")
    # --- vendor extras (accepted, not used) ---
    trainingType: str | None = Field(None, description="Azure OpenAI extra; accepted and ignored.")


class JobPlanRequest(FineTuningJobCreate):
    """``POST /v1/slmtune/plan`` (slmtune extra): a job body, planned and not created."""

    memory_limit_mb: float | None = Field(None, gt=0, description="Memory to plan against (default: this machine's "
                                                                  "available memory).")


class JobPlan(BaseModel):
    """The planner's prediction for a job (``slmtune plan`` for the job's config)."""

    object: Literal["fine_tuning.job.plan"] = "fine_tuning.job.plan"
    hyperparameters: dict[str, Any] = Field(description="The job's hyperparameters with \"auto\" resolved.")
    method: str
    precision: str
    total_params: int
    trainable_params: int
    peak_memory_mb: float
    memory_breakdown_mb: dict[str, float]
    tokens_per_second: float
    tokens_total: int
    steps: int
    wall_seconds: float
    cost: float | None = None
    fits: bool
    reason: str = Field(description="Why it does not fit (empty when it fits).")
    notes: list[str]
    calibration_runs: int = Field(0, description="How many earlier runs of the model on this machine tokens_per_second "
                                                 "comes from (0: estimated from a matmul probe and the class of CPU).")


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float | None]


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# --- models -----------------------------------------------------------------------------------------------------
class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# --- chat completions ---------------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    """One part of a message's content; text parts are read, others (images, audio) are accepted and left out."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, in a request's history
    tool_call_id: str | None = None  # a tool message: the call it answers


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None  # JSON Schema of the arguments object
    strict: bool | None = None  # arguments always validate against parameters (constrained decoding)


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    name: str = Field("response", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (JSON valid under ``json_schema.schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self

    def wire(self) -> dict:
        out: dict = {"type": self.type}
        if self.json_schema is not None:
            out["json_schema"] = {"name": self.json_schema.name, "schema": self.json_schema.schema_,
                                  "strict": self.json_schema.strict}
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` (https://platform.openai.com/docs/api-reference/chat/create).

    Implemented: ``max_completion_tokens`` (``max_tokens``), ``n`` (up to 8), ``logprobs``/``top_logprobs``, ``seed``
    (a sampled request is reproducible whatever shares its batch), ``stop`` (up to 4), ``stream``,
    ``stream_options.include_usage``, ``temperature``, ``top_p``, ``tools`` (up to 128) with ``tool_choice`` and
    ``parallel_tool_calls``, ``response_format`` (``json_object``, ``json_schema``), the last two by constrained
    decoding (docs/tools.md). Fields the engine does not implement (penalties, logit_bias ...) are accepted and
    ignored so that SDK defaults never fail a call.
    """

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if stops is not None and any(len(x) > MAX_STOP_CHARS for x in stops):
            raise ValueError(f"a stop sequence may hold at most {MAX_STOP_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _bounds(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("logprobs must be true when top_logprobs is set")
        size = sum(len(m["content"]) for m in self.text_messages())
        size += sum(len(t.model_dump_json()) for t in self.tools or [])
        if size > MAX_CHAT_CHARS:
            raise ValueError(f"the messages and tools hold {size} characters; at most {MAX_CHAT_CHARS} are accepted")
        return self

    def tool_list(self) -> list[dict] | None:
        """The tools as plain dicts (``data.tools``' form), None when there are none."""
        if not self.tools:
            return None
        return [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in self.tools]

    def choice_of_tool(self) -> str | dict:
        """``tool_choice`` as data: "none", "auto", "required" or the named-function dict (default: auto)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.model_dump()
        return self.tool_choice or "auto"

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def text_messages(self) -> list[dict]:
        out = []
        for m in self.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(p.text or "" for p in content if p.type == "text")
            role = "system" if m.role == "developer" else m.role
            item = {"role": role, "content": content or ""}
            if m.tool_calls:
                item["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                item["tool_call_id"] = m.tool_call_id
            out.append(item)
        return out


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChoiceLogprobs(BaseModel):
    content: list[dict] | None
    refusal: list[dict] | None = None


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
