"""One error envelope for every non-2xx answer: ``{"error": {"message", "type", "param", "code"}}``.

Lower layers raise these (or ValueError); the handlers in app.py turn them into responses. 409 is never used for a
permanent conflict because the OpenAI SDK retries 409s: invalid state transitions are 400.
"""

from __future__ import annotations

import math


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}
        if status is not None:
            self.status = status


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401

    def __init__(self, message: str = "Incorrect API key provided.", **kw):
        kw.setdefault("code", "invalid_api_key")
        super().__init__(message, **kw)


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404

    def __init__(self, kind: str, ident: str, *, param: str | None = "id", code: str | None = None):
        code = code or ("model_not_found" if kind == "model" else f"{kind}_not_found" if kind == "file"
                        else "not_found")
        label = {"file": "File", "job": "fine-tuning job", "model": "model"}.get(kind, kind)
        msg = f"No such {label} object: {ident}" if kind == "file" else f"The {label} '{ident}' does not exist"
        super().__init__(msg, param=param, code=code)


class TooLarge(APIError):
    status = 413


class RateLimited(APIError):
    status = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw):
        kw.setdefault("code", "rate_limit_exceeded")
        super().__init__(message, **kw)
        self.headers = {"retry-after": str(max(1, math.ceil(retry_after)))}


class ServerError(APIError):
    status = 500
    type = "server_error"


class NotImplementedYet(APIError):
    status = 400  # a 501 would make clients think the server is broken; OpenAI answers 400 for unsupported options
