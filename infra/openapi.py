"""OpenAPI 3 documents of the HTTP services, served at ``GET /openapi.json``.

Each service keeps its document as YAML next to its routes; :func:`undocumented_routes` lets a
test prove every route the app serves is in it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

_PARAM = re.compile(r"\{([^}:]+)(:[^}]*)?\}")


def load_spec(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not str(spec.get("openapi", "")).startswith("3."):
        raise ValueError(f"{path} is not an OpenAPI 3 document")
    return spec


def add_openapi_route(app: web.Application, spec: dict[str, Any]) -> None:
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi)


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route, as OpenAPI spells them (HEAD and static left out)."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template is None or route.method in ("HEAD", "*"):
            continue
        found.add((route.method.lower(), _PARAM.sub(r"{\1}", template)))
    return found


def undocumented_routes(app: web.Application, spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Routes the app serves that the document does not describe."""
    documented = {
        (method.lower(), path)
        for path, item in spec.get("paths", {}).items()
        for method in item
        if method.lower() in {"get", "post", "put", "patch", "delete"}
    }
    return served_routes(app) - documented
