"""The clinic's image viewer for doctors: ``GET /viewer`` and its script and style.

The doctor's signing key is made and kept by this page, on the clinic's origin (party 0), so
no script the marketplace serves can ever use it. The page creates an ECDSA P-256 key pair with
WebCrypto (private key non-extractable, stored in IndexedDB), shows the public key to enrol,
and for ``/viewer?case=ID&doctor=ID`` signs :func:`predictor.access.protocol.request_message`
and fetches ``GET /image/{case}`` with it. The image is drawn on a ``<canvas>`` by the page's
own ``scan-canvas.js`` (zoom, pan, window/level, invert), from a same-origin blob, so the
canvas stays readable without any CORS on the clinic. Everything is served from files in
``predictor/static`` under a CSP that admits only this origin's script, style and requests.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from infra.web import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Nothing but this origin's files; images only from this origin or the page's own blob: URLs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
#: The page's assets, served at ``/viewer/{asset}`` (nothing else from the folder).
ASSETS = {
    "viewer.js": "text/javascript",
    "scan-canvas.js": "text/javascript",
    "viewer.css": "text/css",
}


def add_viewer_routes(app: web.Application) -> None:
    """``GET /viewer`` (the page) and ``GET /viewer/{asset}`` (its script and style)."""
    page = (STATIC_DIR / "viewer.html").read_bytes()
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}

    async def viewer(request: web.Request) -> web.Response:
        return web.Response(
            body=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS
        )

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["asset"]
        if name not in assets:
            raise ApiError(404, "not_found", "no such file")
        return web.Response(
            body=assets[name], content_type=ASSETS[name], charset="utf-8", headers=SECURITY_HEADERS
        )

    app.router.add_get("/viewer", viewer)
    app.router.add_get("/viewer/{asset}", asset)
