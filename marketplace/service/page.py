"""The doctor web page: plain HTML/CSS/JS served from the package, no build step or CDN."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from marketplace.service.settings import MarketplaceSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"


def add_page(app: web.Application, settings: MarketplaceSettings) -> None:
    """``GET /`` (with a strict CSP: this origin only) and ``/static/``.

    The page shows no image: it links to the clinic's viewer, which opens in its own tab on the
    clinic's origin (the doctor's key lives there), so nothing here loads from the clinic. It
    stays live through ``GET /api/events`` (same origin, read with a streamed ``fetch``) and
    draws the doctor's track record as inline SVG with its own ``chart.js``.
    """
    csp = (
        "default-src 'self'; img-src 'self'; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    index_html = (STATIC_DIR / "index.html").read_bytes()

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            body=index_html,
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": csp},
        )

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
