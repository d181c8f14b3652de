"""Signed image links: what party 0 accepts is exactly what party 1 signed, until expiry."""

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.image_links import sign_image_url, verify_image_signature

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def _parts(url: str) -> tuple[str, dict[str, str]]:
    split = urlsplit(url)
    return split.path, {k: v[0] for k, v in parse_qs(split.query).items()}


def test_url_shape_and_roundtrip() -> None:
    url = sign_image_url(SECRET, "http://127.0.0.1:8080/", "case1", "doc1", 300, NOW)
    assert url.startswith("http://127.0.0.1:8080/image/case1?doctor=doc1&expires=")
    path, q = _parts(url)
    assert path == "/image/case1"
    assert q["expires"] == str(int(NOW) + 300)
    assert verify_image_signature(SECRET, "case1", "doc1", q["expires"], q["sig"], NOW + 299)


def test_expired_link_refused() -> None:
    _, q = _parts(sign_image_url(SECRET, "http://p0", "case1", "doc1", 60, NOW))
    assert not verify_image_signature(SECRET, "case1", "doc1", q["expires"], q["sig"], NOW + 61)


@pytest.mark.parametrize(
    ("case_id", "doctor_id", "secret", "bump"),
    [
        ("case2", "doc1", SECRET, 0),
        ("case1", "doc2", SECRET, 0),
        ("case1", "doc1", b"other-secret", 0),
        ("case1", "doc1", SECRET, 1000),
    ],
)
def test_tampering_refused(case_id: str, doctor_id: str, secret: bytes, bump: int) -> None:
    _, q = _parts(sign_image_url(SECRET, "http://p0", "case1", "doc1", 60, NOW))
    expires = str(int(q["expires"]) + bump)
    assert not verify_image_signature(secret, case_id, doctor_id, expires, q["sig"], NOW)


@given(
    expires=st.one_of(st.text(max_size=30), st.just("-1"), st.just("1e9")),
    sig=st.one_of(st.text(max_size=80), st.just("ab" * 32), st.just("AB" * 32)),
    case_id=st.text(max_size=70),
)
def test_malformed_input_is_false_not_error(expires: str, sig: str, case_id: str) -> None:
    assert verify_image_signature(SECRET, case_id, "doc1", expires, sig, NOW) is False


def test_bad_signing_arguments() -> None:
    with pytest.raises(ValueError):
        sign_image_url(b"", "http://p0", "case1", "doc1", 60, NOW)
    with pytest.raises(ValueError):
        sign_image_url(SECRET, "http://p0", "../x", "doc1", 60, NOW)
    with pytest.raises(ValueError):
        sign_image_url(SECRET, "http://p0", "case1", "doc1", 0, NOW)
