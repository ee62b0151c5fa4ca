"""The web console: static files shipped in the package, served at ``/`` on the API's own origin.

No template engine and no build step: one HTML page, ES modules served as they are (``web/js``: the DOM helper, the
API client, sign-in, the router, charts, the report's Markdown, and one module per view under ``web/js/views``), one
stylesheet, and uPlot (vendored with its version and licence under ``web/vendor``) for the curves. Everything the
page shows comes from the public ``/v1`` API with the key the user typed (kept in sessionStorage, sent as a header,
never a cookie), so the console can do nothing a client of the API cannot, and project scoping is the API's own.

Every console response carries a Content-Security-Policy: scripts and styles from this origin only (no inline
script, no ``eval``), no framing, no plugins; images may also be ``blob:`` (report plots fetched with the key).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from slmtune.config import SCENARIO_NAMES

STATIC = Path(__file__).parent / "web"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class ConsoleHeadersMiddleware:
    """Security headers on every response outside ``/v1`` (the console's page and assets, /health, /docs ...).

    ``/docs`` (FastAPI's Swagger page) loads its script from a CDN and runs an inline one, so it is left out: the
    CSP would break it, and it shows no user data."""

    SKIP = ("/v1/", "/docs", "/redoc")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.SKIP):
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_console(app: FastAPI) -> None:
    """``/`` → the page; ``/console/…`` → its assets (cached for an hour; versioned by the package release)."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/console/scenarios.json", include_in_schema=False)
    def scenario_names() -> list[str]:  # the record formats the console offers: the config's list, not a copy
        return list(SCENARIO_NAMES)

    @app.get("/console", include_in_schema=False)
    def console_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/console", StaticFiles(directory=STATIC), name="console")
    app.add_middleware(ConsoleHeadersMiddleware)
