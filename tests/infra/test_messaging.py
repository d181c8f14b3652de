"""Sealed envelopes: what a receiver accepts, and each way a message is refused."""

from __future__ import annotations

import json
import sys

import pytest

from infra.messaging import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    Envelope,
    ForgedMessage,
    MalformedMessage,
    MessageRefused,
    MisaddressedMessage,
    StaleMessage,
    UnknownSender,
    canonical_json,
    generate_key,
    new_message_id,
    open_sealed,
    public_key,
    seal,
)

NOW = 1_700_000_000.0
CLINIC_KEY = generate_key()
PEERS = {"clinic": public_key(CLINIC_KEY)}


def envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "message_id": new_message_id(),
        "type": "case.needs_review",
        "sender": "clinic",
        "audience": "marketplace",
        "sent_at": NOW,
        "body": {"case_id": "c-1", "bounty": 1200, "note": "été ✓", "nested": [1, 2.5, None]},
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def open_at_marketplace(raw: bytes, now: float = NOW) -> Envelope:
    return open_sealed(raw, me="marketplace", peers=PEERS, now=now)


def test_a_sealed_envelope_opens_to_the_same_envelope():
    sent = envelope()
    assert open_at_marketplace(seal(sent, CLINIC_KEY)) == sent


def test_keys_are_hex_of_32_bytes_and_distinct():
    other = generate_key()
    assert len(bytes.fromhex(CLINIC_KEY)) == len(bytes.fromhex(PEERS["clinic"])) == 32
    assert other != CLINIC_KEY and public_key(other) != PEERS["clinic"]


def test_the_wire_form_is_canonical_json_with_a_signature():
    raw = seal(envelope(), CLINIC_KEY)
    document = json.loads(raw)
    assert set(document) == {"message_id", "type", "sender", "audience", "sent_at", "body"} | {
        "signature"
    }
    assert raw == canonical_json(document) and raw.isascii()


def test_a_tampered_body_is_forged():
    document = json.loads(seal(envelope(), CLINIC_KEY))
    document["body"]["bounty"] = 999_999
    with pytest.raises(ForgedMessage) as refused:
        open_at_marketplace(canonical_json(document))
    assert refused.value.code == "forged_message"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_id", new_message_id()),
        ("type", "case.settled"),
        ("sent_at", NOW + 1),
        ("audience", "party1"),
    ],
)
def test_every_field_is_covered_by_the_signature(field, value):
    document = json.loads(seal(envelope(), CLINIC_KEY))
    document[field] = value
    me = document["audience"]  # a changed audience is "me" for the receiver it now names
    with pytest.raises(ForgedMessage):
        open_sealed(canonical_json(document), me=me, peers=PEERS, now=NOW)


def test_a_message_signed_with_another_key_is_forged():
    with pytest.raises(ForgedMessage):
        open_at_marketplace(seal(envelope(), generate_key()))


def test_a_sender_claiming_another_peers_name_is_forged():
    intruder = generate_key()
    peers = {**PEERS, "researcher": public_key(intruder)}
    with pytest.raises(ForgedMessage):
        open_sealed(seal(envelope(), intruder), me="marketplace", peers=peers, now=NOW)


def test_an_unknown_sender_is_refused():
    stranger = generate_key()
    with pytest.raises(UnknownSender) as refused:
        open_at_marketplace(seal(envelope(sender="stranger"), stranger))
    assert refused.value.code == "unknown_sender"


def test_a_message_for_another_receiver_is_misaddressed():
    raw = seal(envelope(audience="party1"), CLINIC_KEY)
    with pytest.raises(MisaddressedMessage) as refused:
        open_at_marketplace(raw)
    assert refused.value.code == "misaddressed_message"
    assert open_sealed(raw, me="party1", peers=PEERS, now=NOW).audience == "party1"


@pytest.mark.parametrize("offset", [-301.0, 301.0, 86_400.0])
def test_a_message_outside_the_window_is_stale(offset):
    raw = seal(envelope(), CLINIC_KEY)
    with pytest.raises(StaleMessage) as refused:
        open_at_marketplace(raw, now=NOW + offset)
    assert refused.value.code == "stale_message"


@pytest.mark.parametrize("offset", [-300.0, 0.0, 299.5])
def test_a_message_inside_the_window_opens(offset):
    assert open_at_marketplace(seal(envelope(), CLINIC_KEY), now=NOW + offset).sent_at == NOW


def test_the_window_is_the_receivers_choice():
    raw = seal(envelope(), CLINIC_KEY)
    with pytest.raises(StaleMessage):
        open_sealed(raw, me="marketplace", peers=PEERS, now=NOW + 11, window_s=10)


def test_an_oversized_message_is_refused_before_parsing():
    with pytest.raises(MalformedMessage) as refused:
        open_at_marketplace(b"{" + b" " * MAX_MESSAGE_BYTES + b"}")
    assert refused.value.code == "malformed_message"


def test_a_body_too_large_to_deliver_cannot_be_sealed():
    with pytest.raises(ValueError, match="over"):
        seal(envelope(body={"blob": "x" * MAX_BODY_BYTES}), CLINIC_KEY)
    just_fits = envelope(body={"blob": "x" * (MAX_BODY_BYTES - 20)})
    assert open_at_marketplace(seal(just_fits, CLINIC_KEY)) == just_fits


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'"a string"',
        b"\xff\xfe",
        b'{"message_id": NaN}',
    ],
)
def test_what_is_not_an_envelope_is_malformed(raw):
    with pytest.raises(MalformedMessage):
        open_at_marketplace(raw)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"body":' * 30_000, b"[{" * 50_000])
def test_deep_nesting_is_refused_before_parsing(raw):
    """py_ecc (imported with web3) raises the recursion limit to 100000; CPython's JSON
    decoder then overflows the C stack on such input and the whole process dies."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(MalformedMessage, match="deeper"):
            open_at_marketplace(raw)
    finally:
        sys.setrecursionlimit(limit)


def test_brackets_inside_strings_do_not_count_as_nesting():
    sent = envelope(body={"text": "[" * 1000 + '\\"{' * 100})
    assert open_at_marketplace(seal(sent, CLINIC_KEY)) == sent


def test_a_body_nested_too_deep_to_deliver_cannot_be_sealed():
    body: dict[str, object] = {}
    for _ in range(MAX_DEPTH - 2):
        body = {"next": body}
    assert open_at_marketplace(seal(envelope(body=body), CLINIC_KEY)).body == body
    with pytest.raises(ValueError, match="deeper"):
        seal(envelope(body={"next": body}), CLINIC_KEY)


@pytest.mark.parametrize(
    "change",
    [
        {"signature": None},
        {"signature": "ab"},
        {"message_id": "not-a-uuid"},
        {"message_id": 7},
        {"type": ""},
        {"type": "t" * 65},
        {"sender": "line\nbreak"},
        {"sent_at": "yesterday"},
        {"sent_at": True},
        {"sent_at": 10**400},
        {"sent_at": -1},
        {"body": ["not", "an", "object"]},
        {"extra": "field"},
    ],
)
def test_wrong_fields_are_malformed(change):
    document = json.loads(seal(envelope(), CLINIC_KEY))
    document.update(change)
    with pytest.raises(MalformedMessage):
        open_at_marketplace(canonical_json(document))


def test_a_missing_field_is_malformed():
    document = json.loads(seal(envelope(), CLINIC_KEY))
    del document["body"]
    with pytest.raises(MalformedMessage):
        open_at_marketplace(canonical_json(document))


def test_a_duplicated_key_is_malformed():
    raw = seal(envelope(), CLINIC_KEY)
    doubled = raw[:-1] + b',"type":"case.settled"}'
    with pytest.raises(MalformedMessage):
        open_at_marketplace(doubled)


def test_every_refusal_is_a_message_refused_with_its_own_code():
    kinds = (MalformedMessage, UnknownSender, ForgedMessage, MisaddressedMessage, StaleMessage)
    assert all(issubclass(kind, MessageRefused) for kind in kinds)
    assert len({kind.code for kind in kinds}) == len(kinds)


def test_bad_keys_are_configuration_errors_not_refusals():
    with pytest.raises(ValueError, match="private key"):
        seal(envelope(), "zz")
    with pytest.raises(ValueError, match="public key"):
        open_sealed(seal(envelope(), CLINIC_KEY), me="marketplace", peers={"clinic": "00"}, now=NOW)
