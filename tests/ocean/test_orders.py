"""Order rule and request parsing, without a chain: every refusal path."""

from __future__ import annotations

import pytest

from marketplace.ocean.orders import (
    MalformedRequest,
    OrderFacts,
    OrderNotGranted,
    OrderRefused,
    UnprovenConsumer,
    check_order,
    parse_consumer,
    parse_download_request,
    recover_signer,
    sign_download,
)
from marketplace.ocean.settings import ONE_TOKEN, account, dev_key

CONSUMER = account(dev_key(1)).address
PROVIDER = account(dev_key(0)).address
TX = "0x" + "12" * 32
DT = "0x" + "34" * 20
NOW = 1_800_000_000


def facts(**over: object) -> OrderFacts:
    base = dict(
        found=True,
        succeeded=True,
        consumer=CONSUMER,
        amount=ONE_TOKEN,
        provider=PROVIDER,
        valid_until=NOW + 100,
        block_timestamp=NOW - 100,
    )
    base.update(over)
    return OrderFacts(**base)  # type: ignore[arg-type]


def judge(f: OrderFacts, signer: str | None = CONSUMER) -> str:
    return check_order(f, signer=signer, provider=PROVIDER, now=NOW, timeout_s=3600)


def test_valid_order_grants_the_consumer() -> None:
    assert judge(facts()) == CONSUMER


@pytest.mark.parametrize(
    ("f", "signer", "kind", "code"),
    [
        (OrderFacts(found=False), CONSUMER, OrderNotGranted, "order_not_found"),
        (facts(succeeded=False), CONSUMER, OrderNotGranted, "order_not_found"),
        (facts(consumer=None), CONSUMER, OrderNotGranted, "wrong_datatoken"),
        (facts(), None, UnprovenConsumer, "bad_signature"),
        (facts(), account(dev_key(2)).address, OrderNotGranted, "not_your_order"),
        (facts(amount=ONE_TOKEN - 1), CONSUMER, OrderNotGranted, "amount_too_low"),
        (
            facts(provider=account(dev_key(3)).address),
            CONSUMER,
            OrderNotGranted,
            "foreign_provider",
        ),
        (facts(provider=None), CONSUMER, OrderNotGranted, "foreign_provider"),
        (facts(valid_until=NOW - 1), CONSUMER, OrderNotGranted, "order_expired"),
        (facts(block_timestamp=NOW - 3601), CONSUMER, OrderNotGranted, "order_expired"),
    ],
)
def test_refusals(f: OrderFacts, signer: str | None, kind: type[OrderRefused], code: str) -> None:
    with pytest.raises(OrderRefused) as exc:
        judge(f, signer)
    assert (type(exc.value), exc.value.code) == (kind, code)


def test_signature_binds_order_and_datatoken() -> None:
    sig = sign_download(dev_key(1), TX, DT)
    assert recover_signer(TX, DT, sig) == CONSUMER
    assert recover_signer("0x" + "13" * 32, DT, sig) != CONSUMER
    assert recover_signer(TX, "0x" + "35" * 20, sig) != CONSUMER
    assert recover_signer(TX, DT, "0x" + "00" * 65) is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([], "bad_request"),
        ({}, "bad_order_tx"),
        ({"order_tx": "0x12"}, "bad_order_tx"),
        ({"order_tx": TX, "signature": "0xzz"}, "bad_signature_format"),
        ({"order_tx": TX, "signature": 5}, "bad_signature_format"),
    ],
)
def test_malformed_requests(body: object, code: str) -> None:
    with pytest.raises(MalformedRequest) as exc:
        parse_download_request(body)
    assert exc.value.code == code


@pytest.mark.parametrize("signature", [None, ""])
def test_unsigned_request_proves_nobody(signature: str | None) -> None:
    with pytest.raises(UnprovenConsumer) as exc:
        parse_download_request({"order_tx": TX, "signature": signature})
    assert exc.value.code == "unsigned"


def test_well_formed_request_is_normalised() -> None:
    sig = "0x" + "ab" * 65
    upper = "0x" + TX[2:].upper()
    assert parse_download_request({"order_tx": upper, "signature": sig}) == (TX, sig)


def test_consumer_must_be_an_address() -> None:
    assert parse_consumer(CONSUMER.lower()) == CONSUMER
    with pytest.raises(MalformedRequest) as exc:
        parse_consumer("bob")
    assert exc.value.code == "bad_consumer"
