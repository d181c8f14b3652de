"""Readable model passports, served next to the research downloads (web layer over `passport`).

- `GET /passports/{passport_id}`            an HTML page: every version's entry as on chain,
  with the fields kept off chain filled in from its document once that matched its hash;
- `GET /passports/documents/{sha256}`       a passport's off-chain document, as minted.

A document whose bytes no longer match the hash on chain is never shown as the passport's:
the page says it was tampered with, the document route answers 409.
"""

from __future__ import annotations

import html
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from infra.web import run_blocking
from marketplace.ocean.passport import (
    DocumentMismatch,
    DocumentStore,
    PassportChain,
    PassportNotFound,
)
from marketplace.ocean.settings import OceanSettings

routes = web.RouteTableDef()
PASSPORT_SETTINGS = web.AppKey("passport_settings", OceanSettings)
#: The app's chain thread pool (chain and file reads never block the event loop).
PASSPORT_POOL = web.AppKey("passport_pool", ThreadPoolExecutor)

#: Fields a reader sees first, in this order (the rest follow as they come).
SHOWN = (
    "version", "date", "checkpoint_sha256", "architecture", "training", "datasets", "metrics",
    "limits", "dp_epsilon", "contributor_shares", "parent",
)  # fmt: skip


def documents_dir(settings: OceanSettings) -> Path:
    """Where minted passport documents live: ``<ocean data dir>/passports``."""
    return settings.data_dir / "passports"


@dataclass(frozen=True)
class VersionPage:
    entry: dict[str, Any]
    full: dict[str, Any] | None
    document_state: str  # "checked", "missing", "tampered"


def read_passport(settings: OceanSettings, passport_id: str) -> tuple[str, str, list[VersionPage]]:
    """(lineage name, owner, versions) of a passport; PassportNotFound if there is none."""
    chain = PassportChain(settings.rpc_url, settings.address_file, settings.network_name)
    lineage = chain.lineage(passport_id)
    store = DocumentStore(documents_dir(settings))
    pages = []
    for entry in chain.entries(lineage.passport_id):
        sha = str((entry.get("document") or {}).get("sha256", ""))
        try:
            full = json.loads(store.get(sha)).get("entry")
            pages.append(VersionPage(entry, full if isinstance(full, dict) else None, "checked"))
        except DocumentMismatch:
            pages.append(VersionPage(entry, None, "tampered"))
        except PassportNotFound:
            pages.append(VersionPage(entry, None, "missing"))
    return lineage.name, chain.owner(lineage.passport_id), pages


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, dict):
        return html.escape(json.dumps(value, ensure_ascii=False))
    return html.escape("–" if value is None else str(value))


def render(passport_id: str, lineage: str, owner: str, pages: list[VersionPage]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Model passport {html.escape(lineage)}</title></head><body><main>",
        f"<h1>Model passport: {html.escape(lineage)}</h1>",
        f"<p>Passport <code>{html.escape(passport_id)}</code>, owner "
        f"<code>{html.escape(owner)}</code>. This is the model owner's own signed statement "
        "about its model, kept on the chain where only the owner may write it. The clinic's "
        "model side checks its checkpoint's sha256 against it before serving.</p>",
    ]
    for page in reversed(pages):
        shown = page.full or page.entry
        parts.append(f"<section><h2>Version {_value(page.entry.get('version'))}</h2>")
        notes = {
            "checked": "Every field below matches the hashes on chain.",
            "missing": "The document with the long fields is not here: long fields show hashes.",
            "tampered": "WARNING: the document kept off chain does NOT match the hash on "
            "chain: it was changed after minting; only the on-chain fields are shown.",
        }
        parts.append(f"<p>{notes[page.document_state]}</p><dl>")
        keys = [k for k in SHOWN if k in shown] + [k for k in shown if k not in SHOWN]
        for key in keys:
            parts.append(f"<dt>{html.escape(key)}</dt><dd>{_value(shown[key])}</dd>")
        parts.append("</dl></section>")
    parts.append("</main></body></html>")
    return "".join(parts)


@routes.get("/passports/documents/{sha256}")
async def passport_document(request: web.Request) -> web.Response:
    settings = request.app[PASSPORT_SETTINGS]
    store = DocumentStore(documents_dir(settings))
    data = await run_blocking(request.app[PASSPORT_POOL], store.get, request.match_info["sha256"])
    return web.Response(body=data, content_type="application/json")


@routes.get("/passports/{passport_id}")
async def passport_page(request: web.Request) -> web.Response:
    settings = request.app[PASSPORT_SETTINGS]
    passport_id = request.match_info["passport_id"]
    lineage, owner, pages = await run_blocking(
        request.app[PASSPORT_POOL], read_passport, settings, passport_id
    )
    return web.Response(
        text=render(passport_id, lineage, owner, pages), content_type="text/html", charset="utf-8"
    )
