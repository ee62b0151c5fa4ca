"""``POST /v1/chat/completions``: requests go to the model's continuous-batching engine (its own thread); this route
only waits on an asyncio queue, so the API's thread pool and event loop stay free for files, jobs and models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from slmtune.data.tools import CALL_OPEN, ReplyReader, check_tools, parse_reply, reads_calls, schema_problem
from slmtune.inference.constraints import UnsupportedSchema
from slmtune.inference.request import Delta, Failed, Finished, Overloaded, PromptTooLong
from slmtune.inference.sampling import SamplingParams
from slmtune.inference.serving import Collector, submit_async
from slmtune.service import project_models
from slmtune.service.db import new_id
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep
from slmtune.service.errors import BadRequest, NotFound, RateLimited, ServerError
from slmtune.service.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChoiceMessage,
    ErrorResponse,
    Usage,
)

router = APIRouter(tags=["chat"])
DISCONNECT_POLL_S = 0.2


def _params(req: ChatCompletionRequest) -> SamplingParams:
    stop = req.stops()
    if req.tools and req.choice_of_tool() == "none":
        stop.append(CALL_OPEN)  # the tools are shown to the model, but a call cannot begin
    return SamplingParams(max_new_tokens=req.max_completion_tokens or req.max_tokens or 256,
                          temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, seed=req.seed,
                          stop=stop, logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0)


def _tools(req: ChatCompletionRequest) -> list[dict] | None:
    """The request's tools, checked (each parameters object a valid JSON Schema; a named choice among them)."""
    choice = req.choice_of_tool()
    if req.tool_choice is not None and not req.tools:
        raise BadRequest("'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice")
    tools = req.tool_list()
    if tools:
        problems: list[tuple[str, str]] = []
        # the checked list: a function without "parameters" takes none (an empty object schema), as on OpenAI
        tools = check_tools(tools, lambda path, msg: problems.append((path, msg)))
        if problems:
            path, msg = problems[0]
            raise BadRequest(f"Invalid value for '{path}': {msg}", param=path)
        if isinstance(choice, dict) and choice["function"]["name"] not in {t["function"]["name"] for t in tools}:
            raise BadRequest(f"tool_choice names function {choice['function']['name']!r}, which is not among the "
                             "tools", param="tool_choice")
    rf = req.response_format
    if rf is not None and rf.json_schema is not None and rf.json_schema.schema_ is not None:
        if (problem := schema_problem(rf.json_schema.schema_)) is not None:
            raise BadRequest(f"Invalid value for 'response_format.json_schema.schema': {problem}",
                             param="response_format.json_schema.schema")
    return tools


async def _watch_disconnect(request: Request, handle) -> None:
    """A non-streaming client that goes away cancels its request (its slot frees at the next token)."""
    while True:
        if await request.is_disconnected():
            handle.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                              "description": "A chat.completion, or with `stream: true` server-sent "
                                             "chat.completion.chunk events ending in `data: [DONE]`"}})
async def create_chat_completion(req: ChatCompletionRequest, request: Request, session: SessionDep,
                                 settings: SettingsDep, project: ProjectDep):
    """Chat with a base model, a fine-tuned model or a checkpoint; `stream: true` answers with server-sent events."""
    n = req.n or 1
    params = _params(req)
    tools = _tools(req)
    if req.model in settings.onnx_models:  # an exported model served by ONNX Runtime
        server = request.app.state.onnx
        load = server.prepare(req.model)
    else:
        server = request.app.state.inference
        base, adapter = project_models.resolve_for_chat(session=session, settings=settings, project=project,
                                                model_id=req.model)
        load = server.prepare(base, adapter)
    session.close()  # generation can take seconds: do not hold a database connection meanwhile
    try:
        prepared = await load
    except FileNotFoundError:
        raise NotFound("model", req.model, param="model") from None
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(ev) -> None:  # called on the engine's thread
        loop.call_soon_threadsafe(events.put_nowait, ev)

    try:
        # the grammar is built with the prompt, on the render threads (the first one builds the token table)
        handle = await submit_async(server, prepared, req.text_messages(), params, n=n, emit=emit, project=project,
                                    tools=tools, tool_choice=req.choice_of_tool(),
                                    parallel_tool_calls=req.parallel_tool_calls is not False,
                                    response_format=req.response_format.wire() if req.response_format else None)
    except UnsupportedSchema as e:
        raise BadRequest(str(e), param=e.param) from None
    except PromptTooLong as e:
        raise BadRequest(str(e), param="messages", code="context_length_exceeded") from None
    except Overloaded as e:
        raise RateLimited(str(e), retry_after=e.retry_after) from None
    except ValueError as e:  # an option this model cannot honour (logprobs, constraints on ONNX Runtime)
        param = next((p for p in ("logprobs", "tool_choice", "response_format") if p in str(e)), None)
        raise BadRequest(str(e), param=param) from None
    cid, created = new_id("chatcmpl-"), int(time.time())
    if not req.stream:
        # The engine emits nothing more for a cancelled request, so waiting for the completion would never end
        # once the client has gone: wait for whichever comes first. (Before, every such request left a coroutine
        # waiting forever, and a server shutting down waited for it.)
        work = asyncio.ensure_future(_complete(req, handle, events, cid, created, n))
        watcher = asyncio.create_task(_watch_disconnect(request, handle))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                return work.result()
            work.cancel()  # the client went away: nobody reads an answer
            return Response(status_code=499)
        finally:
            watcher.cancel()
            handle.cancel()  # a no-op once every choice has finished
    return StreamingResponse(_stream(req, handle, events, cid, created, n), media_type="text/event-stream")


def _logprobs(entries: list[dict] | None) -> dict | None:
    return {"content": entries or [], "refusal": None} if entries is not None else None


async def _complete(req, handle, events: asyncio.Queue, cid: str, created: int, n: int) -> ChatCompletion:
    collector = Collector(handle)
    try:
        while not collector.add(await events.get()):
            pass
    except Exception as e:  # noqa: BLE001 - what the engine reported for this request
        raise ServerError(f"The model failed while generating: {e}") from None
    done, want, calling = collector.completion, bool(req.logprobs), reads_calls(req.tools, req.choice_of_tool())
    choices = []
    for i, c in enumerate(done.choices):
        content, calls = parse_reply(c.text) if calling else (c.text.strip(), [])
        finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
        choices.append(Choice(index=i, message=ChoiceMessage(content=content, tool_calls=calls or None),
                              finish_reason=finish, logprobs=ChoiceLogprobs(content=c.logprobs) if want else None))
    p, c = done.prompt_tokens, done.completion_tokens
    return ChatCompletion(id=cid, created=created, model=req.model, choices=choices,
                          usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c))


async def _stream(req, handle, events: asyncio.Queue, cid: str, created: int, n: int):
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    want = bool(req.logprobs)

    def chunk(choices: list[dict], usage=None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": None, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def choice(i: int, delta: dict, finish=None, logprobs=None) -> dict:
        return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": _logprobs(logprobs) if want else None}

    readers = [ReplyReader() for _ in range(n)] if reads_calls(req.tools, req.choice_of_tool()) else None
    called = [0] * n

    def deltas(i: int, content: str, calls: list[dict]) -> list[dict]:
        out = [{"content": content}] if content else []
        for c in calls:
            out.append({"tool_calls": [{"index": called[i], **c}]})
            called[i] += 1
        return out

    try:
        for i in range(n):
            yield chunk([choice(i, {"role": "assistant", "content": ""})])
        left, completion = n, 0
        while left:
            ev = await events.get()
            if isinstance(ev, Failed):  # reported in-band, as OpenAI does mid-stream
                err = ErrorResponse.body(f"The model failed while generating: {ev.error}", "server_error")
                yield f"data: {json.dumps(err)}\n\n"
                return
            if isinstance(ev, Delta):
                if readers is None:
                    yield chunk([choice(ev.choice, {"content": ev.text}, logprobs=ev.logprobs)])
                    continue
                parts = deltas(ev.choice, *readers[ev.choice].feed(ev.text))
                for k, d in enumerate(parts):  # logprobs ride on the first part of their text
                    yield chunk([choice(ev.choice, d, logprobs=ev.logprobs if k == 0 else None)])
            elif isinstance(ev, Finished):
                left -= 1
                completion += ev.completion_tokens
                finish = ev.finish_reason
                if readers is not None:
                    for d in deltas(ev.choice, *readers[ev.choice].finish()):
                        yield chunk([choice(ev.choice, d)])
                    finish = "tool_calls" if called[ev.choice] and finish == "stop" else finish
                yield chunk([choice(ev.choice, {}, finish=finish, logprobs=ev.logprobs)])
        if include_usage:
            p = handle.prompt_tokens
            yield chunk([], usage={"prompt_tokens": p, "completion_tokens": completion,
                                   "total_tokens": p + completion})
        yield "data: [DONE]\n\n"
    finally:
        with contextlib.suppress(Exception):
            handle.cancel()  # the client went away (or we are done): free the slot at the next token
