"""The web console: static assets from the package (fnserve/console/), served by the router at /console.

The console is a client of the public admin API and nothing else: it holds no state on the server and
no route here reads a key. What is served is read once, when the app is built, and answered from memory
with an ETag, so a browser's reloads cost a header comparison. Every answer carries a strict
Content-Security-Policy: scripts and styles only from this origin, no inline script, no frames, no
form posts elsewhere — so a function's label or a log line that holds markup can only ever be text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fnserve.router.errors import error_response

ASSETS = Path(__file__).resolve().parent.parent / "console"
"""fnserve/console/: index.html and the files it loads (no build step: plain ES modules and CSS)."""

PREFIX = "/console"

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
          ".ico": "image/x-icon", ".json": "application/json"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets(folder: Path = ASSETS) -> dict[str, Asset]:
    """Every servable file under ``folder`` by its path relative to it (files of unknown type are not
    served: nothing there can be handed out by accident)."""
    found: dict[str, Asset] = {}
    for path in sorted(folder.rglob("*")):
        media_type = _TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            body = path.read_bytes()
            found[path.relative_to(folder).as_posix()] = Asset(body, media_type,
                                                               '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return found


def _answer(request: Request, asset: Asset) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def routes(assets: dict[str, Asset] | None = None) -> list[Route]:
    served = load_assets() if assets is None else assets

    async def home(request: Request) -> Response:
        return RedirectResponse(PREFIX, 302)

    def answer(request: Request, path: str) -> Response:
        found = served.get(path)
        if found is None:  # the one error shape, as for any unknown route
            return error_response(request, 404, f"no such route: GET {request.url.path}")
        return _answer(request, found)

    async def page(request: Request) -> Response:
        """The console's one page (every view is a #fragment of it)."""
        return answer(request, "index.html")

    async def asset(request: Request) -> Response:
        return answer(request, request.path_params["path"])

    return [Route("/", home, methods=["GET"], include_in_schema=False),
            Route(PREFIX, page, methods=["GET"], include_in_schema=False),
            Route(PREFIX + "/", page, methods=["GET"], include_in_schema=False),
            Route(PREFIX + "/assets/{path:path}", asset, methods=["GET"], include_in_schema=False)]
