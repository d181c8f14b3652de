"""Order rule and request parsing, without a chain: every refusal path."""

from __future__ import annotations

import pytest

from marketplace.ocean.orders import (
    OrderFacts,
    OrderRejected,
    check_order,
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
    ("f", "signer", "status", "code"),
    [
        (OrderFacts(found=False), CONSUMER, 403, "order_not_found"),
        (facts(succeeded=False), CONSUMER, 403, "order_not_found"),
        (facts(consumer=None), CONSUMER, 403, "wrong_datatoken"),
        (facts(), None, 401, "bad_signature"),
        (facts(), account(dev_key(2)).address, 403, "not_your_order"),
        (facts(amount=ONE_TOKEN - 1), CONSUMER, 403, "amount_too_low"),
        (facts(provider=account(dev_key(3)).address), CONSUMER, 403, "foreign_provider"),
        (facts(provider=None), CONSUMER, 403, "foreign_provider"),
        (facts(valid_until=NOW - 1), CONSUMER, 403, "order_expired"),
        (facts(block_timestamp=NOW - 3601), CONSUMER, 403, "order_expired"),
    ],
)
def test_refusals(f: OrderFacts, signer: str | None, status: int, code: str) -> None:
    with pytest.raises(OrderRejected) as exc:
        judge(f, signer)
    assert (exc.value.status, exc.value.code) == (status, code)


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
def test_bad_requests_are_400(body: object, code: str) -> None:
    with pytest.raises(OrderRejected) as exc:
        parse_download_request(body)
    assert (exc.value.status, exc.value.code) == (400, code)


def test_unsigned_request_parses_without_signature() -> None:
    assert parse_download_request({"order_tx": TX.upper().replace("0X", "0x")}) == (TX, None)
