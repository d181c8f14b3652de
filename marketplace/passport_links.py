"""Where a reader sees a model's passport: the Ocean service's readable page, not the marketplace.

The marketplace only says which passport to open, ``{passport_view_url}/passports/{passport_id}``
(served by ``marketplace.ocean.passport_view``); the page reads the chain itself. A passport id is
the passport NFT's address on the project's chain; anything else a clinic sends gets no link.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

#: A passport id: the data NFT's address, ``0x`` and 40 hex digits (either case: checksummed).
PASSPORT_ID = re.compile(r"0x[0-9a-fA-F]{40}")


def check_view_url(url: str, name: str = "passport_view_url") -> None:
    """ValueError (naming the setting ``name``) unless ``url`` is empty (no links) or a plain
    http(s) base URL with a host.

    The links go to doctors' browsers: no credentials, query or fragment in them, and no
    other scheme (a ``javascript:`` base would turn a link into a script).
    """
    if not url:
        return
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{name} {url!r} is not a URL: {exc}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise ValueError(
            f"{name} must be an http:// or https:// base URL such as "
            f"http://127.0.0.1:8082 (no credentials, query or fragment), or empty for no "
            f"passport links; got {url!r}"
        )


def passport_url(view_url: str, passport_id: str | None) -> str | None:
    """``{view_url}/passports/{passport_id}``, or None: no view configured, or no valid id."""
    if not view_url or passport_id is None or not PASSPORT_ID.fullmatch(passport_id):
        return None
    return f"{view_url.rstrip('/')}/passports/{quote(passport_id, safe='')}"
