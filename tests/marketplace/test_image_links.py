"""Signed image links: the clinic accepts, with the marketplace's public key, exactly what the
marketplace signed for one case and one doctor, until expiry - and nothing another key signed."""

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.messaging import generate_key, public_key
from marketplace.image_links import sign_image_url, verify_image_signature

MARKET_KEY = generate_key()
MARKET_PUBLIC = public_key(MARKET_KEY)
OTHER_KEY = generate_key()
NOW = 1_800_000_000.0


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


def _link(key: str = MARKET_KEY, ttl_s: int = 60) -> dict[str, str]:
    return _parts(sign_image_url(key, "http://p0", "case1", "doc1", ttl_s, NOW))[1]


def test_url_shape_and_roundtrip() -> None:
    url = sign_image_url(MARKET_KEY, "http://127.0.0.1:8080/", "case1", "doc1", 300, NOW)
    assert url.startswith("http://127.0.0.1:8080/image/case1?doctor=doc1&expires=")
    path, q = _parts(url)
    assert path == "/image/case1" and set(q) == {"doctor", "expires", "sig"}
    assert q["expires"] == str(int(NOW) + 300)
    assert verify_image_signature(MARKET_PUBLIC, "case1", "doc1", q["expires"], q["sig"], NOW)
    assert verify_image_signature(MARKET_PUBLIC, "case1", "doc1", q["expires"], q["sig"], NOW + 300)


def test_expired_link_refused() -> None:
    q = _link(ttl_s=60)
    assert not verify_image_signature(
        MARKET_PUBLIC, "case1", "doc1", q["expires"], q["sig"], NOW + 61
    )


def test_link_signed_with_another_key_refused() -> None:
    """Only the marketplace's key signs links: a key anyone else holds (the clinic's own, a
    forger's) gets nothing, and the marketplace's link does not verify under another key."""
    forged = _link(key=OTHER_KEY)
    assert not verify_image_signature(
        MARKET_PUBLIC, "case1", "doc1", forged["expires"], forged["sig"], NOW
    )
    q = _link()
    assert not verify_image_signature(
        public_key(OTHER_KEY), "case1", "doc1", q["expires"], q["sig"], NOW
    )


@pytest.mark.parametrize(
    ("case_id", "doctor_id", "bump"),
    [("case2", "doc1", 0), ("case1", "doc2", 0), ("case1", "doc1", 1000)],
    ids=["other-case", "other-doctor", "extended-expiry"],
)
def test_tampering_refused(case_id: str, doctor_id: str, bump: int) -> None:
    q = _link()
    expires = str(int(q["expires"]) + bump)
    assert not verify_image_signature(MARKET_PUBLIC, case_id, doctor_id, expires, q["sig"], NOW)


def test_a_message_signature_is_not_a_link_signature() -> None:
    """Links are domain-separated: the key's signature over other bytes never verifies."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(MARKET_KEY))
    q = _link()
    undomained = key.sign(f"case1\ndoc1\n{q['expires']}".encode()).hex()
    assert not verify_image_signature(MARKET_PUBLIC, "case1", "doc1", q["expires"], undomained, NOW)


@given(
    expires=st.one_of(st.text(max_size=30), st.just("-1"), st.just("1e9"), st.just("²")),
    sig=st.one_of(st.text(max_size=140), st.just("ab" * 64), st.just("AB" * 64)),
    case_id=st.text(max_size=70),
)
def test_malformed_input_is_false_not_error(expires: str, sig: str, case_id: str) -> None:
    assert verify_image_signature(MARKET_PUBLIC, case_id, "doc1", expires, sig, NOW) is False


def test_malformed_public_key_is_false_not_error() -> None:
    q = _link()
    for bad in ("", "zz", "ab" * 31, MARKET_KEY + "00"):
        assert not verify_image_signature(bad, "case1", "doc1", q["expires"], q["sig"], NOW)


def test_bad_signing_arguments() -> None:
    with pytest.raises(ValueError):
        sign_image_url("", "http://p0", "case1", "doc1", 60, NOW)
    with pytest.raises(ValueError):
        sign_image_url("zz" * 32, "http://p0", "case1", "doc1", 60, NOW)
    with pytest.raises(ValueError):
        sign_image_url(MARKET_KEY, "http://p0", "../x", "doc1", 60, NOW)
    with pytest.raises(ValueError):
        sign_image_url(MARKET_KEY, "http://p0", "case1", "doc1", 0, NOW)
