"""``POST /v1/chat/completions``: requests go to the model's continuous-batching engine (its own thread); this route
only waits on an asyncio queue, so the API's thread pool and event loop stay free for files, jobs and models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

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
    return SamplingParams(max_new_tokens=req.max_completion_tokens or req.max_tokens or 256,
                          temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, seed=req.seed,
                          stop=req.stops(), logprobs=bool(req.logprobs), top_logprobs=req.top_logprobs or 0)


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
        handle = await submit_async(server, prepared, req.text_messages(), params, n=n, emit=emit, project=project)
    except PromptTooLong as e:
        raise BadRequest(str(e), param="messages", code="context_length_exceeded") from None
    except Overloaded as e:
        raise RateLimited(str(e), retry_after=e.retry_after) from None
    except ValueError as e:  # an option this model cannot honour (logprobs on ONNX Runtime)
        raise BadRequest(str(e), param="logprobs" if "logprobs" in str(e) else None) from None
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
    done, want = collector.completion, bool(req.logprobs)
    choices = [Choice(index=i, message=ChoiceMessage(content=c.text.strip()), finish_reason=c.finish_reason,
                      logprobs=ChoiceLogprobs(content=c.logprobs) if want else None)
               for i, c in enumerate(done.choices)]
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
                yield chunk([choice(ev.choice, {"content": ev.text}, logprobs=ev.logprobs)])
            elif isinstance(ev, Finished):
                left -= 1
                completion += ev.completion_tokens
                yield chunk([choice(ev.choice, {}, finish=ev.finish_reason, logprobs=ev.logprobs)])
        if include_usage:
            p = handle.prompt_tokens
            yield chunk([], usage={"prompt_tokens": p, "completion_tokens": completion,
                                   "total_tokens": p + completion})
        yield "data: [DONE]\n\n"
    finally:
        with contextlib.suppress(Exception):
            handle.cancel()  # the client went away (or we are done): free the slot at the next token
