"""Signed envelopes between organisations: seal and open, pure (no I/O), Ed25519.

Each organisation holds one private key; its peers know the public key. The signature
covers every field (id, type, sender, audience, sent_at, body), so a message sealed for
one receiver cannot be replayed to another, and a captured one is refused once it is older
than the freshness window. Replays inside the window reach the inbox, which applies each
message id once (``infra.mailbox.accept``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: Prefix of every signed byte string: a signature made for anything else never verifies here.
DOMAIN = b"crypto-doctor-message-v1\n"
#: Largest sealed message accepted (and produced): bodies are small facts, not files.
MAX_MESSAGE_BYTES = 256 * 1024
#: Largest body (canonical JSON): leaves room for the envelope fields and the signature.
MAX_BODY_BYTES = MAX_MESSAGE_BYTES - 1024
#: Deepest nesting of arrays and objects accepted, the envelope's own object included. Checked
#: before parsing: with a raised recursion limit (py_ecc, imported with web3, sets 100000)
#: CPython's JSON decoder overflows the C stack on deep input and kills the process.
MAX_DEPTH = 32
#: Default freshness window (seconds) either side of the receiver's clock.
DEFAULT_WINDOW_S = 300.0
#: Longest organisation name and message type (they are stored in String(64) columns).
MAX_NAME_CHARS = 64

_FIELDS = ("message_id", "type", "sender", "audience", "sent_at", "body")
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
# A string, or an unterminated one up to the end: a match never fails once begun, so one
# left-to-right pass (no rescans from every quote, which would be quadratic).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_OPENERS = frozenset(b"[{")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}")
#: Plausible unix times (bounded so that arithmetic on them never overflows a float).
_LATEST_SENT_AT = 1e11


class MessageRefused(Exception):
    """A received message that must have no effect; ``code`` is stable for the JSON error."""

    code = "message_refused"


class MalformedMessage(MessageRefused):
    """Not a sealed envelope: bad JSON, missing or extra fields, wrong types, too large."""

    code = "malformed_message"


class UnknownSender(MessageRefused):
    """The claimed sender is not one of the receiver's peers."""

    code = "unknown_sender"


class ForgedMessage(MessageRefused):
    """The signature does not verify with the claimed sender's public key."""

    code = "forged_message"


class MisaddressedMessage(MessageRefused):
    """Validly signed, but for another receiver."""

    code = "misaddressed_message"


class StaleMessage(MessageRefused):
    """Validly signed, but sent outside the freshness window (a late replay, or clock skew)."""

    code = "stale_message"


@dataclass(frozen=True)
class Envelope:
    """One message between organisations; ``sent_at`` is the delivery attempt (unix seconds)."""

    message_id: str
    type: str
    sender: str
    audience: str
    sent_at: float
    body: dict[str, Any]


def new_message_id() -> str:
    """A fresh message id (uuid4 hex): the key that makes delivery idempotent."""
    return uuid.uuid4().hex


def generate_key() -> str:
    """A new Ed25519 private key, as the hex of its 32-byte seed (keep it secret)."""
    return Ed25519PrivateKey.generate().private_bytes_raw().hex()


def public_key(private_hex: str) -> str:
    """The raw 32-byte Ed25519 public key (hex) that peers configure for this private key."""
    raw = _private(private_hex).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw.hex()


def check_public_key(public_hex: str) -> None:
    """Raise ``ValueError`` unless ``public_hex`` is a raw Ed25519 public key (config check)."""
    _public(public_hex)


def canonical_json(value: Any) -> bytes:
    """The one byte form that is signed: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def check(envelope: Envelope) -> None:
    """Raise ``ValueError`` unless every field of ``envelope`` is one a receiver accepts."""
    try:
        _check_fields(_fields_of(envelope))
    except MalformedMessage as exc:
        raise ValueError(str(exc)) from None


def seal(envelope: Envelope, private_hex: str) -> bytes:
    """The wire form of ``envelope``: its canonical JSON plus a signature over those bytes.

    Raises ``ValueError`` if the body is not JSON, a field is invalid, or the result would be
    larger than ``MAX_MESSAGE_BYTES`` (the receiver would refuse it forever).
    """
    fields = _fields_of(envelope)
    check(envelope)
    signed = canonical_json(fields)
    signature = _private(private_hex).sign(DOMAIN + signed).hex()
    raw = canonical_json({**fields, "signature": signature})
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ValueError(f"sealed message is {len(raw)} bytes, over {MAX_MESSAGE_BYTES}")
    return raw


def open_sealed(
    raw: bytes,
    *,
    me: str,
    peers: Mapping[str, str],
    now: float,
    window_s: float = DEFAULT_WINDOW_S,
) -> Envelope:
    """Verify a sealed message addressed to ``me`` and return its envelope.

    ``peers`` maps each sender's name to its public key (hex). Raises a ``MessageRefused``
    subclass for anything that must have no effect.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    if deeper_than(raw, MAX_DEPTH):
        raise MalformedMessage(f"message nested deeper than {MAX_DEPTH}")
    try:
        document = json.loads(
            raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedMessage("message is not valid JSON") from None
    if not isinstance(document, dict) or set(document) != {*_FIELDS, "signature"}:
        raise MalformedMessage(f"message must have exactly the fields {[*_FIELDS, 'signature']}")
    signature = document.pop("signature")
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise MalformedMessage("signature must be 128 lowercase hex digits")
    _check_fields(document)

    sender = document["sender"]
    if sender not in peers:
        raise UnknownSender(f"unknown sender {sender!r}")
    try:
        _public(peers[sender]).verify(bytes.fromhex(signature), DOMAIN + canonical_json(document))
    except InvalidSignature:
        raise ForgedMessage("signature does not verify") from None
    if document["audience"] != me:
        raise MisaddressedMessage(f"message is addressed to {document['audience']!r}")
    if abs(now - document["sent_at"]) > window_s:
        raise StaleMessage(f"message sent outside the {window_s:g} s window")
    return Envelope(**{name: document[name] for name in _FIELDS})


def _fields_of(envelope: Envelope) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in _FIELDS}


def _check_fields(fields: Mapping[str, Any]) -> None:
    """Types and shapes of the envelope fields (a sent_at of int is accepted as seconds)."""
    if not isinstance(fields["message_id"], str) or not _MESSAGE_ID.fullmatch(fields["message_id"]):
        raise MalformedMessage("message_id must be 32 lowercase hex digits")
    for name in ("type", "sender", "audience"):
        if not isinstance(fields[name], str) or not _NAME.fullmatch(fields[name]):
            raise MalformedMessage(f"{name} must be a name of 1-{MAX_NAME_CHARS} characters")
    sent_at = fields["sent_at"]
    if (
        isinstance(sent_at, bool)
        or not isinstance(sent_at, int | float)
        or not 0 <= sent_at <= _LATEST_SENT_AT  # also false for NaN
    ):
        raise MalformedMessage("sent_at must be unix seconds")
    if not isinstance(fields["body"], dict):
        raise MalformedMessage("body must be a JSON object")
    try:
        body = canonical_json(fields["body"])
    except (TypeError, ValueError, RecursionError):
        raise MalformedMessage("body must be plain JSON") from None
    if len(body) > MAX_BODY_BYTES:
        raise MalformedMessage(f"body is {len(body)} bytes, over {MAX_BODY_BYTES}")
    if deeper_than(body, MAX_DEPTH - 1):
        raise MalformedMessage(f"body nested deeper than {MAX_DEPTH - 1}")


def deeper_than(raw: bytes, depth: int) -> bool:
    """Whether ``raw`` nests arrays/objects deeper than ``depth``, counted without recursion.

    Strings are dropped first (a bracket inside one does not nest); unbalanced input is left
    for the JSON parser to refuse.
    """
    level = 0
    for char in _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw)):
        if char in _OPENERS:
            level += 1
            if level > depth:
                return True
        else:
            level -= 1
    return False


def _private(private_hex: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    except ValueError:
        raise ValueError("private key must be 64 hex digits (an Ed25519 seed)") from None


def _public(public_hex: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
    except ValueError:
        raise ValueError("public key must be 64 hex digits (a raw Ed25519 key)") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
