"""Assembles the FastAPI app: settings, database, workers, inference, routes under /v1, error envelope."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import DataError as SQLAlchemyDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmtune import __version__
from slmtune.inference.metrics import ServingMetrics
from slmtune.inference.onnx_runtime import OnnxServer
from slmtune.inference.serving import ModelServer
from slmtune.service import migrations
from slmtune.service.auth import ensure_project
from slmtune.service.console import mount_console
from slmtune.service.db import Database, new_id
from slmtune.service.errors import APIError
from slmtune.service.gate import AUTH_THREADS, Gate, envelope, error_response
from slmtune.service.ratelimit import RateLimiter
from slmtune.service.routes import chat, files, graders, jobs, models
from slmtune.service.schemas import error_responses
from slmtune.service.settings import Settings
from slmtune.service.worker import start_worker_threads

log = logging.getLogger("slmtune.service")


class RequestIdMiddleware:
    """Adds ``x-request-id`` to every response. Plain ASGI (not ``@app.middleware``): Starlette's BaseHTTPMiddleware
    wraps ``receive``, and a route could then no longer see that its client disconnected."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", new_id("req_").encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class AdmissionMiddleware:
    """At most ``limit`` API requests (chat excepted) run at once; the rest wait on the event loop, at no cost. It
    sits inside the :class:`~slmtune.service.gate.Gate`: a slot is taken only by a caller with a valid key whose
    (small) body has arrived in full, so neither a keyless flood nor a slow sender can hold one.

    Why: a request holds its database connection from its route to the end of its session, and in between FastAPI
    validates the response on the thread pool. With every thread busy, requests holding connections wait for a
    thread while the threads wait for a connection: with 200 clients that stalled requests for 60 s and ended in
    pool timeouts (500). Admitting no more requests than there are threads (the pool is larger) rules that out.
    The slot is released when the response starts: the session is closed by then (``SessionDep`` has function
    scope), so a long download does not hold it. Not counted: chat requests (they let go of their session before
    generating, and generation runs on the model's own thread) and uploads (async routes: no thread hop while
    they hold a connection, and a slow client sending 512 MB must not hold a slot meanwhile).
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self._sem: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or not path.startswith("/v1/") or path.startswith("/v1/chat/")
                or (scope["method"] == "POST" and path.rstrip("/") == "/v1/files")):
            return await self.app(scope, receive, send)
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limit)
        await self._sem.acquire()
        held = True

        async def send_and_release(message):
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                self._sem.release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            if held:
                self._sem.release()


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, less the 422 it lists for every route: invalid requests answer 400 here, as OpenAI's
    do (the handler below), so a client generated from the schema expects what the server sends."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in doc["paths"].values():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def _allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """The methods some route answers at this request's path (Starlette's own matching, method swapped)."""
    from starlette.routing import Match

    return [m for m in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
            if any(route.matches({**scope, "method": m})[0] == Match.FULL for route in app.router.routes)]


def create_app(settings: Settings | None = None, workers: int = 1) -> FastAPI:
    """The API app: /v1 routes, the console at /, error envelopes, /health and /metrics; ``workers`` job workers
    start with it (in threads) and hand their running jobs back to the queue when it stops."""
    settings = settings or Settings()
    # in-server workers, their heartbeats and the health check take connections too: a margin over the threads
    db = Database(settings.db_url, pool_size=settings.api_threads + 2 * workers + 4 + AUTH_THREADS)
    app = FastAPI(
        title="slmtune",
        version=__version__,
        description="Fine-tuning service wire-compatible with the OpenAI fine-tuning API "
        "(files, fine_tuning/jobs, events, checkpoints, models, chat/completions).",
        lifespan=_lifespan(settings, db, workers),
        # Swagger/ReDoc pages load their scripts from a CDN: off unless asked for (`serve --api-docs`)
        docs_url="/docs" if settings.api_docs else None, redoc_url="/redoc" if settings.api_docs else None,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.metrics = ServingMetrics()
    app.state.limiter = RateLimiter(settings.rate_limit_rpm)

    for r in (files.router, jobs.router, graders.router, models.router, chat.router):
        app.include_router(r, prefix="/v1", responses=error_responses(400, 401, 404, 429))
    app.openapi = lambda: _openapi(app)

    mount_console(app)

    # the last added runs first: request id → gate (host/origin, key, rate limit, body) → admission → the routes
    app.add_middleware(AdmissionMiddleware, limit=settings.api_threads)
    app.add_middleware(Gate, settings=settings, db=db, limiter=app.state.limiter)
    app.add_middleware(RequestIdMiddleware)
    _add_error_handlers(app)
    _add_probes(app, db)
    return app


def _lifespan(settings: Settings, db: Database, workers: int):
    """Start-up (schema, thread limit, default project, model servers, workers) and the orderly shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        migrations.ensure(db.url, migrate=settings.migrate)  # created, checked, or upgraded when asked
        # sync routes and dependencies run on anyio's thread pool: as many threads as the pool has connections
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        if not settings.auth:
            with db.session() as s:
                ensure_project(s, settings.default_project)
        # chat runs on each model's own scheduler thread, never on the API's thread pool
        app.state.inference = ModelServer(precision=settings.serve_precision, decode=settings.serve_decode,
                                          max_running=settings.max_running,
                                          max_queued=settings.max_queued,
                                          max_queued_per_project=settings.max_queued_per_project,
                                          adapter_cache_size=settings.adapter_cache_size, metrics=app.state.metrics)
        app.state.onnx = OnnxServer(settings.onnx_models, max_running=settings.max_running,
                                    max_queued=settings.max_queued, metrics=app.state.metrics)
        app.state.workers = start_worker_threads(settings, db, workers)
        yield
        for w in app.state.workers:  # all stop taking jobs; each hands its running job back to the queue
            w.stop.set()
        for w in app.state.workers:
            w.shutdown(wait=w.shutdown_grace + 30)
        app.state.inference.shutdown()
        app.state.onnx.shutdown()
        db.dispose()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's envelope ``{"error": {message, type, param, code}}``; 4xx say not to retry."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param} (extra inputs are not permitted)"
        else:
            msg = f"Invalid value for '{param}': {first.get('msg', 'invalid request')}" if param else first.get(
                "msg", "Invalid request")
        return envelope(400, msg, param=param, code="invalid_request_error" if param else None,
                         headers={"x-should-retry": "false"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = "Invalid URL" if exc.status_code == 404 else str(exc.detail)
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        if exc.status_code == 405:  # Starlette names the methods of the first matching route only: name them all
            headers["allow"] = ", ".join(_allowed_methods(app, request.scope))
        return envelope(exc.status_code, f"{msg} ({request.method} {request.url.path})", headers=headers,
                        code=getattr(exc, "code", None), param=getattr(exc, "param", None))

    @app.exception_handler(SQLAlchemyDataError)
    async def unstorable_value(request: Request, exc: SQLAlchemyDataError):
        # a value the database cannot hold or compare, sent by the client (a NUL character in an id or a cursor:
        # PostgreSQL text refuses it; SQLite merely finds nothing): the request's fault, not the server's
        return envelope(400, f"Invalid value in the request: {str(exc.orig).strip() or type(exc.orig).__name__}.",
                        code="invalid_request_error", headers={"x-should-retry": "false"})

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, f"The server had an error while processing your request: {type(exc).__name__}",
                         type_="server_error")


def _add_probes(app: FastAPI, db: Database) -> None:
    """/health for load balancers, /metrics for Prometheus (neither in the OpenAPI schema)."""

    @app.get("/health", include_in_schema=False)
    def health():
        """200 when the database answers, 503 when it does not (load balancers take the server out meanwhile)."""
        try:
            with db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as e:  # noqa: BLE001 - any database failure means not ready
            return JSONResponse({"status": "unavailable", "database": type(e).__name__}, status_code=503)
        return {"status": "ok", "database": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        """Prometheus text format: running/queued sequences, tokens, TTFT and inter-token latency, adapter cache."""
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
