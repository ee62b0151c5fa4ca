"""OpenAI's grader endpoints as plain functions (no HTTP): ``graders/run`` scores one sample, ``graders/validate``
checks a grader. A model grader's judge is a model this server serves to the project (a base model or its ``ft:``
models), run on the service's batching engine."""

from __future__ import annotations

from sqlalchemy.orm import Session

from slmtune.graders.grade import RUN_LIMITS, check_grader, grade_batch, sample_of
from slmtune.graders.spec import judge_models
from slmtune.inference.judge import EngineJudge
from slmtune.inference.serving import ModelServer
from slmtune.service import project_models
from slmtune.service.errors import BadRequest
from slmtune.service.schemas import GraderRunMetadata, GraderRunRequest, GraderRunResponse
from slmtune.service.settings import Settings


def _checked(grader) -> None:
    problems = check_grader(grader)
    if problems:
        raise BadRequest(f"Invalid grader: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                             if len(problems) > 1 else ""),
                         param="grader", code="invalid_grader")


def validate_grader(grader) -> dict:
    """The grader as it will run; 400 naming the first problem (a python grader's source is defined in the
    sandbox, so a syntax error or a missing ``grade`` is found here)."""
    _checked(grader)
    return grader.model_dump(exclude_none=True)


def run_grader(*, session: Session, settings: Settings, project: str, server: ModelServer,
               req: GraderRunRequest) -> GraderRunResponse:
    _checked(req.grader)
    routes = {m: project_models.resolve_for_chat(session=session, settings=settings, project=project, model_id=m)
              for m in judge_models(req.grader)}  # 404 for a judge the project cannot use
    session.close()  # grading can take seconds: hold no database connection meanwhile
    judge = EngineJudge(server, routes.__getitem__) if routes else None
    g = grade_batch(req.grader, [sample_of(req.model_sample)], [req.item or {}], judge=judge, limits=RUN_LIMITS)[0]
    errors = {k: bool(g.errors.get(k)) for k in ERROR_KEYS}
    details = {k: v for k, v in g.errors.items() if k in ERROR_KEYS}
    for flag, detail in (("python_grader_runtime_error", "python_grader_runtime_error_details"),
                         ("model_grader_server_error", "model_grader_server_error_details")):
        errors[detail] = details.get(flag)
    errors["other_error"] = errors["other_error"] or any(k not in ERROR_KEYS for k in g.errors)
    errors["messages"] = [f"{k}: {v}" for k, v in g.errors.items()]  # slmtune extra: what went wrong, in words
    return GraderRunResponse(
        reward=g.reward, sub_rewards=g.sub_rewards,
        metadata=GraderRunMetadata(name=req.grader.name, type=req.grader.type, errors=errors,
                                   execution_time=round(g.seconds, 4), scores=g.sub_rewards,
                                   sampled_model_name=next(iter(routes), None)))


ERROR_KEYS = ("formula_parse_error", "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error",
              "invalid_variable_error", "other_error", "python_grader_server_error", "python_grader_runtime_error",
              "model_grader_server_error", "model_grader_refusal_error", "model_grader_parse_error")
