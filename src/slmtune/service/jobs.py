"""Fine-tuning jobs, events and checkpoints: plain data functions (no HTTP), shared by routes and the worker."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from slmtune.config import EarlyStopping, TrainSection
from slmtune.data.validate import check_file
from slmtune.graders.grade import check_grader
from slmtune.graders.spec import judge_models
from slmtune.planner import plan
from slmtune.scenarios import catalog as scenario_catalog
from slmtune.scenarios.pipeline import records_as_examples
from slmtune.service.db import CheckpointRow, EventRow, FileRow, JobRow, new_id, now
from slmtune.service.errors import BadRequest, NotFound, NotImplementedYet, RateLimited
from slmtune.service.files import check_quota, get_file
from slmtune.service.project_models import base_models, resolve_for_chat
from slmtune.service.schemas import (
    PREFERENCE_TYPES,
    FineTuningJob,
    FineTuningJobCreate,
    JobCheckpoint,
    JobError,
    JobEvent,
    JobPlan,
    JobPlanRequest,
)
from slmtune.service.settings import Settings
from slmtune.service.states import JobStatus

HYPER_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
RL_HYPER_KEYS = (*HYPER_KEYS, "compute_multiplier", "eval_interval", "eval_samples")
COMPLETION_TOKENS = {"low": 64, "default": 128, "medium": 128, "high": 256}  # reasoning_effort → rl budget
# learning_rate_multiplier scales the config's default learning rate (what `slmtune train` uses)
BASE_LR = TrainSection.model_fields["learning_rate"].default
MAX_LR_MULTIPLIER = 100.0  # a learning rate of 0.02: past it a LoRA run only diverges


# --- create -------------------------------------------------------------------------------------------------------
def create_job(*, session: Session, settings: Settings, project: str, req: FineTuningJobCreate) -> JobRow:
    _check_model_and_files(session=session, settings=settings, project=project, req=req)
    method = _method_dict(req, settings, session=session, project=project)
    if req.integrations:
        raise NotImplementedYet("Integrations are not supported yet.", param="integrations")
    if req.metadata is not None:
        if len(req.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items()):
            raise BadRequest("metadata: at most 16 pairs, keys up to 64 and values up to 512 characters.",
                             param="metadata")
    active = session.scalar(select(func.count()).select_from(JobRow).where(
        JobRow.project_id == project, JobRow.status.in_(JobStatus.active())))
    check_quota(session, settings, project, 0, param="training_file")
    if active >= settings.max_active_jobs_per_project:
        raise RateLimited(f"This project already has {active} active fine-tuning jobs (limit "
                          f"{settings.max_active_jobs_per_project}); wait for one to finish or cancel one.",
                          code="rate_limit_exceeded")
    job = JobRow(
        id=new_id("ftjob-"), project_id=project, created_at=now(), model=req.model,
        training_file=req.training_file, validation_file=req.validation_file, suffix=req.suffix,
        seed=req.seed if req.seed is not None else secrets.randbelow(2**31), metadata_=req.metadata,
        method=method, status=JobStatus.VALIDATING_FILES, result_files=[],
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job: {job.id}", key="created")
    return job


def check_model(settings: Settings, model: str) -> None:
    """400 (param ``model``) unless ``model`` is a base model this service fine-tunes."""
    if model not in base_models(settings):
        if model.startswith("ft:"):
            raise NotImplementedYet("Continued training from a fine-tuned model is not supported yet.", param="model",
                                    code="model_not_supported")
        raise BadRequest(f"Model {model!r} is not available for fine-tuning; available: "
                         f"{', '.join(base_models(settings))}.", param="model", code="model_not_available")


def _check_model_and_files(*, session: Session, settings: Settings, project: str,
                           req: FineTuningJobCreate) -> tuple[FileRow, FileRow | None]:
    """The request's training and validation file rows, after checking the model and the files' purpose."""
    check_model(settings, req.model)
    rows = []
    for param, fid in (("training_file", req.training_file), ("validation_file", req.validation_file)):
        f = None
        if fid is not None:
            f = get_file(session=session, project=project, file_id=fid, param=param)
            if f.purpose != "fine-tune":
                raise BadRequest(f"File {fid} has purpose {f.purpose!r}; fine-tuning needs purpose 'fine-tune'.",
                                 param=param, code="invalid_file_purpose")
        rows.append(f)
    return rows[0], rows[1]


def _method_dict(req: FineTuningJobCreate, settings: Settings | None = None, *, session: Session | None = None,
                 project: str | None = None) -> dict:
    """Normalise ``hyperparameters`` (deprecated) and ``method`` into one method dict, with "auto" defaults."""
    kind = req.method.type if req.method is not None else "supervised"
    hp = None
    sub = getattr(req.method, kind, None) if req.method is not None else None
    if kind == "reinforcement":
        return _reinforcement_dict(req, sub, settings, session, project)
    if sub is not None:
        hp = sub.hyperparameters
    preference = kind in PREFERENCE_TYPES
    if preference and req.hyperparameters is not None:
        raise BadRequest(f"{kind.upper()} hyperparameters go in method.{kind}.hyperparameters.",
                         param="hyperparameters")
    if hp is not None and req.hyperparameters is not None:
        raise BadRequest("Give hyperparameters either at the top level or in method.supervised, not both.",
                         param="hyperparameters")
    hp = hp or req.hyperparameters
    values: dict[str, Any] = {k: "auto" for k in HYPER_KEYS}
    if preference:
        values["beta"] = "auto"
    if hp is not None:
        values.update(hp.model_dump())
    top = 2 if kind == "dpo" else 10  # OpenAI's range for dpo; SimPO's reward scale runs past it
    if kind == "simpo" and values["beta"] == "auto":
        values["beta"] = 2.0  # SimPO's beta is a reward scale (its paper: 2 to 2.5), not a pull toward a reference
    if preference and values["beta"] != "auto" and not 0 < values["beta"] <= top:
        raise BadRequest(f"hyperparameters.beta must be 'auto' or in (0, {top}].", param="hyperparameters.beta")
    _check_common(values)
    _check_selection(values, req, kind)
    if values.get("eval_interval", "auto") != "auto" and not 1 <= values["eval_interval"] <= 100_000:
        raise BadRequest("hyperparameters.eval_interval must be 'auto' or a positive integer.",
                         param="hyperparameters.eval_interval")
    _drop_unused_extras(values)
    if req.scenario is not None and kind != "supervised":
        raise BadRequest(f"A scenario trains with the supervised method, not {kind}.", param="scenario")
    return {"type": kind, kind: {"hyperparameters": values}, **({"scenario": req.scenario} if req.scenario else {})}


def _check_common(values: dict) -> None:
    checks = {"batch_size": (1, 256), "n_epochs": (1, 50)}
    for key, (lo, hi) in checks.items():
        v = values[key]
        if v != "auto" and not (lo <= v <= hi):
            raise BadRequest(f"hyperparameters.{key} must be 'auto' or an integer from {lo} to {hi}.",
                             param=f"hyperparameters.{key}")
    lrm = values["learning_rate_multiplier"]
    if lrm != "auto" and not 0 < lrm <= MAX_LR_MULTIPLIER:  # NaN and infinity fail this too
        raise BadRequest(f"hyperparameters.learning_rate_multiplier must be 'auto' or a number in (0, "
                         f"{MAX_LR_MULTIPLIER:g}] (it scales the base learning rate {BASE_LR:g}).",
                         param="hyperparameters.learning_rate_multiplier")


def _drop_unused_extras(values: dict) -> None:
    """slmtune's extras appear in a job's hyperparameters only when asked for: a job that does not use them has
    exactly OpenAI's keys. eval_interval stays where the job chooses its step (and always for reinforcement)."""
    if values.get("early_stopping") is None:
        values.pop("early_stopping", None)
    if values.get("keep") == "last":
        values.pop("keep", None)
    judged = "early_stopping" in values or "keep" in values
    if values.get("eval_interval") == "auto" and not judged and "compute_multiplier" not in values:
        values.pop("eval_interval")


def _check_selection(values: dict, req: FineTuningJobCreate, kind: str) -> None:
    """early_stopping and keep best judge validations: a validation file (or a scenario's hold-out) is needed, and
    the metric must be one the method measures (a reward for reinforcement, a loss or accuracy otherwise)."""
    stop = values.get("early_stopping")
    if not stop and values.get("keep") != "best":
        return
    param = "hyperparameters.early_stopping" if stop else "hyperparameters.keep"
    if req.validation_file is None and req.scenario is None:
        raise BadRequest(f"{param.split('.')[1]} judges validation results: give a validation_file.", param=param)
    scored = scenario_catalog.get(req.scenario).scored if req.scenario else ()
    if stop and (why := EarlyStopping(**stop).unmeasured(kind, scored)):
        raise BadRequest(f"early_stopping.metric: {why}.", param="hyperparameters.early_stopping.metric")


def _reinforcement_dict(req: FineTuningJobCreate, sub, settings: Settings | None, session: Session | None,
                        project: str | None) -> dict:
    """method.reinforcement: the grader checked (templates, formula, a python grader's source in its sandbox, judge
    models: base models, or the project's fine-tuned models — resolved now to their adapters), a validation file
    required, the hyperparameters' ranges."""
    if sub is None:
        raise BadRequest("method.reinforcement.grader is required for the reinforcement method.",
                         param="method.reinforcement")
    if req.hyperparameters is not None:
        raise BadRequest("Reinforcement hyperparameters go in method.reinforcement.hyperparameters.",
                         param="hyperparameters")
    if req.validation_file is None:
        raise BadRequest("The reinforcement method needs a validation file (its prompts measure the reward).",
                         param="validation_file")
    if req.scenario is not None:
        raise BadRequest("A scenario trains with the supervised method, not reinforcement.", param="scenario")
    adapters = {}  # a fine-tuned judge: its base and adapter folder, for the training run
    if settings is not None and session is not None:
        for m in sorted(judge_models(sub.grader) - set(base_models(settings))):
            try:
                base, adapter = resolve_for_chat(session=session, settings=settings, project=project, model_id=m)
            except NotFound:
                raise BadRequest(f"The grader's judge model {m!r} is not a base model or one of this project's "
                                 "fine-tuned models.", param="method.reinforcement.grader",
                                 code="model_not_found") from None
            adapters[m] = {"base": base, "adapter": str(adapter[1])}
    problems = check_grader(sub.grader)
    if problems:
        raise BadRequest(f"The grader cannot run: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                                    if len(problems) > 1 else ""),
                         param="method.reinforcement.grader", code="invalid_grader")
    values: dict[str, Any] = {k: "auto" for k in RL_HYPER_KEYS}
    values["reasoning_effort"] = "default"
    if sub.hyperparameters is not None:
        values.update(sub.hyperparameters.model_dump())
    _check_common(values)
    _check_selection(values, req, "reinforcement")
    _drop_unused_extras(values)
    cm = values["compute_multiplier"]
    if cm != "auto" and not 0.00001 < cm <= 10:
        raise BadRequest("hyperparameters.compute_multiplier must be 'auto' or in (0.00001, 10].",
                         param="hyperparameters.compute_multiplier")
    for key in ("eval_interval", "eval_samples"):
        if values[key] != "auto" and not 1 <= values[key] <= 100_000:
            raise BadRequest(f"hyperparameters.{key} must be 'auto' or a positive integer.",
                             param=f"hyperparameters.{key}")
    return {"type": "reinforcement", "reinforcement": {"grader": sub.grader.model_dump(exclude_none=True),
                                                       "hyperparameters": values},
            **({"judges": adapters} if adapters else {})}


def _group_size(compute_multiplier: float) -> int:
    """compute_multiplier → completions per prompt: 4 at 1.0, between 2 and 16."""
    return max(2, min(16, round(4 * compute_multiplier)))


def resolve_hyperparameters(hp: dict, n_examples: int) -> dict:
    """OpenAI's "auto" heuristic: 3 epochs, clamped so examples × epochs lies in [100, 25000], epochs in [1, 25].
    Reinforcement (its hyperparameters have compute_multiplier): one epoch of 4 prompts a step, a validation reward
    five times in the run, 32 validation prompts."""
    out = dict(hp)
    if "compute_multiplier" in out:
        if out["n_epochs"] == "auto":
            out["n_epochs"] = 1
        if out["batch_size"] == "auto":
            out["batch_size"] = 4
        if out["compute_multiplier"] == "auto":
            out["compute_multiplier"] = 1.0
        if out["eval_interval"] == "auto":
            out["eval_interval"] = max(1, -(-n_examples // out["batch_size"]) * out["n_epochs"] // 5)
        if out["eval_samples"] == "auto":
            out["eval_samples"] = 32
    if out["n_epochs"] == "auto":
        epochs = 3
        if n_examples * epochs < 100:
            epochs = min(25, -(-100 // max(n_examples, 1)))
        elif n_examples * epochs > 25000:
            epochs = max(1, 25000 // n_examples)
        out["n_epochs"] = epochs
    if out["batch_size"] == "auto":
        out["batch_size"] = max(1, min(8, n_examples // 10 or 1))
    if out.get("beta") == "auto":
        out["beta"] = 0.1
    if out["learning_rate_multiplier"] == "auto":
        out["learning_rate_multiplier"] = 1.0 if n_examples >= 100 else 5.0  # small files need a larger step
    if out.get("eval_interval") == "auto":  # supervised and preference: ten validations when they choose the step
        steps = -(-n_examples // out["batch_size"]) * out["n_epochs"]
        judged = out.get("early_stopping") or out.get("keep") == "best"
        out["eval_interval"] = max(1, steps // 10) if judged else 0
    return out


SCENARIO_HOLDOUT = 0.2  # a scenario job without a validation file scores base and tuned on this share of its records


def train_config(*, model: str, kind: str, hp: dict, seed: int, train_path, validation_path, output,
                 scenario: str | None = None, grader: dict | None = None, judges: dict | None = None) -> dict:
    """The engine's config for a job, its hyperparameters resolved: the worker trains it, the planner predicts it.
    LoRA; ``learning_rate_multiplier`` scales ``BASE_LR``; DPO adds its objective and beta; a scenario job trains on
    its records and is scored (base vs tuned) on the validation records or a seeded hold-out; reinforcement trains
    train.objective grpo with the job's grader."""
    holdout = SCENARIO_HOLDOUT if scenario and not validation_path else 0.0
    rl = {}
    if kind == "reinforcement":
        rl = {"rl": {"grader": grader, "judges": judges or {}, "group_size": _group_size(hp["compute_multiplier"]),
                     "max_completion_tokens": COMPLETION_TOKENS[hp.get("reasoning_effort", "default")],
                     "eval_samples": hp["eval_samples"]}}
    return {
        "model": {"name": model},
        "data": {"train": str(train_path), "validation": str(validation_path) if validation_path else None,
                 "validation_split": holdout},
        **({"scenario": {"name": scenario}} if scenario else {}),
        "method": {"name": "lora"},
        "train": {"epochs": hp["n_epochs"], "batch_size": hp["batch_size"],
                  "learning_rate": BASE_LR * hp["learning_rate_multiplier"], "seed": seed % (2**31),
                  "save_total_limit": 3,
                  **({"objective": kind, "dpo_beta": hp["beta"]} if kind in PREFERENCE_TYPES else {}),
                  **({"objective": "grpo"} if kind == "reinforcement" else {}),
                  **({"eval_every": hp["eval_interval"]} if hp.get("eval_interval") else {}),
                  **({"early_stopping": hp["early_stopping"]} if hp.get("early_stopping") else {}),
                  **({"keep": hp["keep"]} if hp.get("keep", "last") != "last" else {})},
        **rl,
        "run": {"output": str(output)},
    }


def plan_job(*, session: Session, settings: Settings, project: str, req: JobPlanRequest) -> JobPlan:
    """The planner's prediction for a job body (``POST /v1/slmtune/plan``), "auto" resolved as the worker will
    resolve it for this training file. Nothing is created."""
    import tempfile

    train, val = _check_model_and_files(session=session, settings=settings, project=project, req=req)
    method = _method_dict(req, settings)
    if method["type"] == "reinforcement":
        raise NotImplementedYet("Planning a reinforcement job is not supported yet (its cost is the sampling, "
                                "which the planner does not model).", param="method.type", code="method_not_supported")
    session.close()  # reading the file and the model takes seconds: hold no database connection meanwhile
    with tempfile.TemporaryDirectory(prefix="slmtune-plan-") as tmp:
        train_path = Path(train.path)
        if req.scenario:  # the planner measures the chat examples the records become
            examples, problems = records_as_examples(train_path, req.scenario, Path(tmp) / "train.jsonl")
            train_path = Path(tmp) / "train.jsonl"  # one example per record
            n_examples = len(examples)
        else:  # streamed and counted, nothing held; no further than a job could train on
            report = check_file(train_path, keep=0, limit=settings.max_examples + 1)
            problems, n_examples = report.problems, report.n_examples
        if problems:
            p = problems[0]
            raise BadRequest(f"The training file cannot be planned: line {p.line}: {p.path}: {p.message}",
                             param="training_file", code="invalid_training_file")
        kind = method["type"]
        hp = resolve_hyperparameters(method[kind]["hyperparameters"], n_examples)
        cfg = train_config(model=req.model, kind=kind, hp=hp, seed=req.seed or 0, train_path=train_path,
                           validation_path=val.path if val and not req.scenario else None, output=Path(tmp) / "run",
                           scenario=req.scenario)
        result = plan(cfg, memory_limit_mb=req.memory_limit_mb, nproc=settings.job_nproc)
    return JobPlan(hyperparameters=hp, **result.to_dict())


# --- read ---------------------------------------------------------------------------------------------------------
def get_job(*, session: Session, project: str, job_id: str) -> JobRow:
    row = session.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.project_id == project))
    if row is None:
        raise NotFound("job", job_id)
    return row


def list_jobs(*, session: Session, project: str, after: str | None, limit: int,
              metadata: dict[str, str] | None, metadata_null: bool = False) -> tuple[list[JobRow], bool]:
    q = select(JobRow).where(JobRow.project_id == project)
    if after:
        anchor = get_job(session=session, project=project, job_id=after)
        q = q.where(JobRow.seq < anchor.seq)
    q = q.order_by(JobRow.seq.desc())
    rows = list(session.scalars(q))
    if metadata_null:
        rows = [r for r in rows if not r.metadata_]
    elif metadata:
        rows = [r for r in rows if r.metadata_ and all(r.metadata_.get(k) == v for k, v in metadata.items())]
    return rows[:limit], len(rows) > limit


def to_public(job: JobRow) -> FineTuningJob:
    method = job.method
    hp = method.get(method["type"], {}).get("hyperparameters", {})
    return FineTuningJob(
        id=job.id, created_at=job.created_at,
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=None if job.model_deleted else job.fine_tuned_model,
        finished_at=job.finished_at, hyperparameters=hp, model=job.model, organization_id=f"org-{job.project_id}",
        result_files=list(job.result_files or []), seed=job.seed, status=job.status,
        trained_tokens=job.trained_tokens, training_file=job.training_file, validation_file=job.validation_file,
        estimated_finish=job.estimated_finish if job.status == JobStatus.RUNNING else None, integrations=None,
        metadata=job.metadata_, method=method, user_provided_suffix=job.suffix,
    )


# --- state changes requested by users -------------------------------------------------------------------------------
def _transition(session: Session, project: str, job_id: str, allowed, values: dict, refuse) -> JobRow:
    """Compare-and-set ``UPDATE … WHERE status IN allowed``: a change that raced another (a worker finishing the
    job, a second request) is refused with the status that won, never written over it."""
    res = session.execute(update(JobRow).where(JobRow.id == job_id, JobRow.project_id == project,
                                               JobRow.status.in_(allowed)).values(**values))
    job = get_job(session=session, project=project, job_id=job_id)  # 404 for another project's id
    if res.rowcount != 1:
        session.refresh(job)
        raise BadRequest(refuse(job), param="id", code="invalid_state")
    session.refresh(job)
    return job


def cancel_job(*, session: Session, project: str, job_id: str) -> JobRow:
    job = _transition(session, project, job_id, JobStatus.active(),
                      {"status": JobStatus.CANCELLED, "finished_at": now(), "pause_requested": False},
                      lambda j: f"Job {job_id} is already {j.status} and cannot be cancelled.")
    add_event(session, job.id, "Job cancelled", key=JobStatus.CANCELLED)
    return job


def pause_job(*, session: Session, project: str, job_id: str) -> JobRow:
    job = get_job(session=session, project=project, job_id=job_id)
    if job.status == JobStatus.RUNNING and job.pause_requested:
        return job
    job = _transition(session, project, job_id, (JobStatus.RUNNING,), {"pause_requested": True},
                      lambda j: f"Job {job_id} is {j.status}; only a running job can be paused.")
    add_event(session, job.id, "Pause requested: saving a checkpoint")
    return job


def resume_job(*, session: Session, project: str, job_id: str) -> JobRow:
    # attempts back to 0: a pause is a clean stop, not a failed start, so pause/resume cycles never use them up
    job = _transition(session, project, job_id, (JobStatus.PAUSED,),
                      {"status": JobStatus.QUEUED, "pause_requested": False, "attempts": 0},
                      lambda j: f"Job {job_id} is {j.status}; only a paused job can be resumed.")
    add_event(session, job.id, "Job resumed: moving job to queued state")
    return job


# --- events and checkpoints -----------------------------------------------------------------------------------------
def add_event(session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None, key: str | None = None, created_at: int | None = None) -> EventRow | None:
    """Insert an event. With ``key``, an event already stored under that key is kept and this one dropped."""
    row = EventRow(id=new_id("ftevent-"), job_id=job_id, created_at=created_at or now(), level=level, type=type,
                   message=message,
                   data=data if data is not None else {}, dedupe_key=key)
    if key is None:
        session.add(row)
        session.flush()
        return row
    exists = session.scalar(select(EventRow.seq).where(EventRow.job_id == job_id, EventRow.dedupe_key == key))
    if exists is not None:
        return None
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # a concurrent writer stored it first
        return None
    return row


def list_events(*, session: Session, project: str, job_id: str, after: str | None,
                limit: int) -> tuple[list[EventRow], bool]:
    get_job(session=session, project=project, job_id=job_id)
    q = select(EventRow).where(EventRow.job_id == job_id)
    if after:
        anchor = session.scalar(select(EventRow).where(EventRow.id == after, EventRow.job_id == job_id))
        if anchor is None:
            raise NotFound("event", after, param="after")
        q = q.where(EventRow.seq < anchor.seq)
    rows = list(session.scalars(q.order_by(EventRow.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def event_to_public(row: EventRow) -> JobEvent:
    return JobEvent(id=row.id, created_at=row.created_at, level=row.level, message=row.message, type=row.type,
                    data=row.data)


def list_checkpoints(*, session: Session, project: str, job_id: str, after: str | None,
                     limit: int) -> tuple[list[CheckpointRow], bool]:
    get_job(session=session, project=project, job_id=job_id)
    q = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    if after:
        anchor = session.scalar(select(CheckpointRow).where(CheckpointRow.id == after,
                                                            CheckpointRow.job_id == job_id))
        if anchor is None:
            raise NotFound("checkpoint", after, param="after")
        q = q.where(CheckpointRow.step_number < anchor.step_number)
    rows = list(session.scalars(q.order_by(CheckpointRow.step_number.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoint_to_public(row: CheckpointRow) -> JobCheckpoint:
    return JobCheckpoint(id=row.id, created_at=row.created_at, fine_tuning_job_id=row.job_id,
                         fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint, step_number=row.step_number,
                         metrics=row.metrics)


def fine_tuned_model_name(job: JobRow) -> str:
    return f"ft:{job.model}:{job.project_id}:{job.suffix or ''}:{job.id[-8:]}"


def files_of(session: Session, job: JobRow) -> tuple[FileRow, FileRow | None]:
    train = session.scalar(select(FileRow).where(FileRow.id == job.training_file))
    val = session.scalar(select(FileRow).where(FileRow.id == job.validation_file)) if job.validation_file else None
    return train, val
