"""The ASGI layer every ``/v1`` request passes before the app sees it: who is asking, and what they may send.

In this order, before a single byte of the body is read:

1. ``--no-auth``: the ``Host`` must be a trusted name (loopback unless ``--allowed-hosts`` widens it) — a
   DNS-rebinding name is refused — and a write (any method but GET/HEAD/OPTIONS) that carries an ``Origin`` must come
   from a trusted host too, so a page on another origin cannot upload to a loopback server (403).
2. With auth: the ``Authorization`` key → its project (401 for none, an unknown or an expired key), then that key's
   rate limit (429). The lookup is one indexed query on a few threads of its own (:data:`AUTH_THREADS`), so keyless
   floods never reach the API's thread pool or the admission slots.
3. The body, counted byte by byte whether or not ``Content-Length`` was sent: past the cap (``--max-upload-mb`` for
   ``POST /v1/files``, ``--max-body-mb`` for everything else) 413, and stalled past ``--body-timeout`` 408. A body
   that is not an upload is read whole here (it is small by the cap) before the request takes an admission slot,
   so a client sending slowly holds a connection and a small buffer, never a slot; an upload streams through the
   same count into the multipart parser.

A request refused here gets ``Connection: close``: the server stops reading what the client still sends.

Hand-written (pure ASGI, no ``BaseHTTPMiddleware``) because the checks must run before FastAPI parses the body —
a route dependency runs after the multipart form or the JSON has been read in full.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import anyio
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from slmtune.service.auth import bearer_key, hash_key, project_for_key
from slmtune.service.errors import APIError, Forbidden, TooLarge
from slmtune.service.schemas import ErrorResponse

AUTH_THREADS = 4  # key lookups in flight at once; more wait on the event loop (a coroutine each, no thread)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
UPLOAD_OVERHEAD = 1 << 20  # multipart boundaries and the form's other fields, on top of the upload cap
PROJECT_KEY = "slmtune.project"  # where the gate leaves the caller's project in the ASGI scope


class BodyRefused(HTTPException):
    """A body past its cap or its timeout. An HTTPException because FastAPI re-raises those from its body parser
    (anything else it turns into a 400): raised from ``receive`` during an upload, it reaches the app's handler."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(status, message, headers={"connection": "close"})
        self.code, self.param = code, param


def body_timeout(timeout: float) -> BodyRefused:
    return BodyRefused(408, f"The request body did not arrive within {timeout:g} s.", "request_timeout")


def body_too_large(limit: int, what: str = "The request body", code: str = "request_body_too_large",
                   param: str | None = None) -> BodyRefused:
    return BodyRefused(413, f"{what} is larger than the limit of {limit} bytes.", code, param)


def envelope(status: int, message: str, *, type_: str = "invalid_request_error", param=None, code=None,
             headers: dict | None = None) -> JSONResponse:
    """An error answer (``schemas.ErrorResponse``); the app's exception handlers call it too."""
    return JSONResponse(ErrorResponse.body(message, type_, param, code), status_code=status, headers=headers)


def error_response(exc: APIError, **extra_headers: str) -> JSONResponse:
    headers = {"x-should-retry": "false"} if exc.status < 500 and exc.status != 429 else {}
    headers.update(exc.headers)
    headers.update(extra_headers)
    return envelope(exc.status, exc.message, type_=exc.type, param=exc.param, code=exc.code, headers=headers)


def host_name(value: str) -> str:
    """``Host``-header form (``name:port``, ``[v6]:port``) → the bare lower-case name."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_upload(scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"


class Gate:
    """See the module's docstring. ``settings`` is the service's :class:`~slmtune.service.settings.Settings`."""

    def __init__(self, app, settings, db, limiter):
        self.app, self.settings, self.db, self.limiter = app, settings, db, limiter
        self.trusted = {host_name(h) for h in settings.allowed_hosts}
        self._auth_threads: anyio.CapacityLimiter | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            if not self.settings.auth:
                self._check_origin(scope)
            if scope["path"].startswith("/v1/"):
                scope[PROJECT_KEY] = await self._project(scope)
        except APIError as e:
            return await error_response(e, connection="close")(scope, receive, send)
        if is_upload(scope):
            return await self._upload(scope, receive, send)
        try:
            body = await self._read_body(receive, self.settings.max_body_bytes)
        except BodyRefused as e:
            return await envelope(e.status_code, e.detail, code=e.code, headers={
                "connection": "close", "x-should-retry": "false"})(scope, receive, send)
        sent = False

        async def replay():  # the body once, then the real channel (a route waits on it to see a disconnect)
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    # --- who is asking ---------------------------------------------------------------------------------------
    def _check_origin(self, scope) -> None:
        """``--no-auth``: a trusted Host always, a trusted Origin on writes."""
        if "*" in self.trusted:
            return
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.trusted:
            raise Forbidden(f"Host {host!r} is not trusted by this server (it runs without API keys, so only "
                            "loopback names are served unless `slmtune serve --allowed-hosts` names others).",
                            code="untrusted_host")
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            origin_host = host_name(urlsplit(origin.decode("latin-1")).netloc) if origin != b"null" else "null"
            if origin_host not in self.trusted:
                raise Forbidden(f"Writes from the web page at {origin.decode('latin-1')!r} are refused: this server "
                                "runs without API keys and takes writes only from its own pages (or the hosts "
                                "`--allowed-hosts` names).", code="untrusted_origin")

    async def _project(self, scope) -> str:
        if not self.settings.auth:
            self.limiter.check(self.settings.default_project)
            return self.settings.default_project
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        key = bearer_key(auth)  # 401 at once for no key or a malformed one
        if self._auth_threads is None:
            self._auth_threads = anyio.CapacityLimiter(AUTH_THREADS)
        project = await anyio.to_thread.run_sync(self._lookup, auth, limiter=self._auth_threads)
        self.limiter.check(hash_key(key))  # known keys only
        return project

    def _lookup(self, authorization: str) -> str:
        with self.db.session() as s:
            return project_for_key(s, authorization)

    # --- what they send --------------------------------------------------------------------------------------
    async def _read_body(self, receive, limit: int) -> bytes:
        """The whole body, within ``limit`` bytes and ``--body-timeout`` seconds in all."""
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise body_too_large(limit)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise body_timeout(self.settings.body_timeout) from None
        return b"".join(chunks)

    async def _upload(self, scope, receive, send):
        """An upload streams on to the multipart parser, counted; each chunk must come within the timeout."""
        limit = self.settings.max_upload_bytes + UPLOAD_OVERHEAD
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length and length.isdigit() and int(length) > limit:
            e = TooLarge(f"File is {int(length)} bytes; the limit is {self.settings.max_upload_bytes} bytes.",
                         param="file", code="file_too_large")
            return await error_response(e, connection="close")(scope, receive, send)
        size = 0

        async def counted():
            nonlocal size
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout)
            except TimeoutError:
                raise body_timeout(self.settings.body_timeout) from None
            size += len(message.get("body", b""))
            if size > limit:
                raise body_too_large(self.settings.max_upload_bytes, "File", "file_too_large", "file")
            return message

        await self.app(scope, counted, send)
