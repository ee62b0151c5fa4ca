from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from slmtune.inference.multi import PromptTooLong
from slmtune.service import models
from slmtune.service.db import new_id
from slmtune.service.deps import ProjectDep, SessionDep, SettingsDep
from slmtune.service.errors import BadRequest
from slmtune.service.schemas import ChatCompletion, ChatCompletionRequest, Choice, ChoiceMessage, Usage

router = APIRouter(tags=["chat"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(req: ChatCompletionRequest, request: Request, session: SessionDep,
                                 settings: SettingsDep, project: ProjectDep):
    """Chat with a base model, a fine-tuned model or a checkpoint; `stream: true` answers with server-sent events."""
    if req.n not in (None, 1):
        raise BadRequest("Only n=1 is supported.", param="n")
    onnx = req.model in settings.onnx_models  # an exported model served by ONNX Runtime
    if not onnx:
        base, adapter = models.resolve_for_chat(session=session, settings=settings, project=project,
                                                model_id=req.model)
    session.close()  # generation can take seconds: do not hold a database connection meanwhile
    server = request.app.state.onnx if onnx else request.app.state.inference
    if onnx:
        base, adapter = req.model, None
    kw = dict(max_new_tokens=req.max_completion_tokens or req.max_tokens or 256, temperature=req.temperature or 0.0,
              top_p=req.top_p or 1.0, seed=req.seed, stop=[req.stop] if isinstance(req.stop, str) else req.stop)
    messages = req.text_messages()
    cid, created = new_id("chatcmpl-"), int(time.time())
    try:
        if not req.stream:
            gen = await run_in_threadpool(server.generate, base, adapter, messages, **kw)
            return ChatCompletion(
                id=cid, created=created, model=req.model,
                choices=[Choice(index=0, message=ChoiceMessage(content=gen.text), finish_reason=gen.finish_reason)],
                usage=Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                            total_tokens=gen.prompt_tokens + gen.completion_tokens),
            )
        prompt_tokens, pieces, info = await run_in_threadpool(server.stream, base, adapter, messages, **kw)
    except PromptTooLong as e:
        raise BadRequest(str(e), param="messages", code="context_length_exceeded") from None
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict, finish=None, usage=None, choices=True) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices else [],
                "usage": usage}
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in iterate_in_threadpool(pieces):
                yield chunk({"content": piece})
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:  # noqa: BLE001 - reported in-band, as OpenAI does mid-stream
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
            return
        yield chunk({}, finish=info.get("finish_reason", "stop"))
        if include_usage:
            n = info.get("completion_tokens", 0)
            yield chunk({}, usage={"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                   "total_tokens": prompt_tokens + n}, choices=False)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
