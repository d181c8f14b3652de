"""The doctor service's and the doctors CLI's settings: today's env names, flags, secrets."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from infra.messaging import generate_key, public_key
from infra.settings import parse_settings, secrets_to_env, settings_to_argv
from marketplace import doctors
from marketplace.domain.policy import MarketPolicy
from marketplace.service import MarketplaceSettings
from marketplace.storage import make_engine, make_sessionmaker

MARKET_KEY = generate_key()
CLINIC_PUBLIC = public_key(generate_key())
SECRET_ENV = {"CRYPTO_DOCTOR_MARKET_KEY": MARKET_KEY}


def test_every_documented_variable_reaches_its_setting() -> None:
    env = SECRET_ENV | {
        "CRYPTO_DOCTOR_DB_URL": "sqlite:////tmp/x.sqlite3",
        "CRYPTO_DOCTOR_MARKETPLACE_HOST": "0.0.0.0",
        "CRYPTO_DOCTOR_MARKETPLACE_PORT": "9001",
        "CRYPTO_DOCTOR_PATIENT_BASE_URL": "http://10.0.0.1:8080",
        "CRYPTO_DOCTOR_CLINIC_PUBLIC_KEY": CLINIC_PUBLIC,
        "CRYPTO_DOCTOR_COURIER_POLL_S": "0.25",
        "CRYPTO_DOCTOR_COURIER_MAX_BACKOFF_S": "7",
        "CRYPTO_DOCTOR_ESCALATION_INTERVAL_S": "5",
        "CRYPTO_DOCTOR_CSV_POLL_INTERVAL_S": "0.5",
        "CRYPTO_DOCTOR_ALLOW_REGISTRATION": "0",
        "CRYPTO_DOCTOR_OPERATOR_TOKEN": "op-token",
        "CRYPTO_DOCTOR_BOUNTY_BASE": "2000",
        "CRYPTO_DOCTOR_BOUNTY_STEEPNESS": "1.5",
        "CRYPTO_DOCTOR_BOUNTY_FLOOR": "100",
        "CRYPTO_DOCTOR_BOUNTY_CEILING": "9000",
        "CRYPTO_DOCTOR_PANEL_SIZE": "5",
        "CRYPTO_DOCTOR_QUORUM": "3",
        "CRYPTO_DOCTOR_WIDEN_STEP": "1",
        "CRYPTO_DOCTOR_MAX_PANEL": "9",
        "CRYPTO_DOCTOR_MIN_POSTERIOR": "0.95",
        "CRYPTO_DOCTOR_USE_RELIABILITY": "false",
        "CRYPTO_DOCTOR_REVIEW_WINDOW_S": "60",
        "CRYPTO_DOCTOR_ESCALATION_RAISE_PERCENT": "25",
        "CRYPTO_DOCTOR_ESCALATION_CAP": "20000",
        "CRYPTO_DOCTOR_ESCALATION_SEATS": "1",
        "CRYPTO_DOCTOR_MAX_OPEN_CLAIMS": "5",
        "CRYPTO_DOCTOR_CLAIM_RATE_LIMIT": "12",
        "CRYPTO_DOCTOR_CLAIM_RATE_WINDOW_S": "600",
        "CRYPTO_DOCTOR_REGISTRATION_RATE_LIMIT": "4",
        "CRYPTO_DOCTOR_REGISTRATION_RATE_WINDOW_S": "86400",
    }
    s = parse_settings(MarketplaceSettings, [], env)
    assert (s.db_url, s.host, s.port) == ("sqlite:////tmp/x.sqlite3", "0.0.0.0", 9001)
    assert s.signing_key == MARKET_KEY and s.market_public_key == public_key(MARKET_KEY)
    assert s.clinic_public_key == CLINIC_PUBLIC
    assert (s.courier_poll_s, s.courier_max_backoff_s) == (0.25, 7.0)
    assert s.patient_base_url == "http://10.0.0.1:8080"
    assert (s.escalation_interval_s, s.csv_poll_interval_s) == (5.0, 0.5)
    assert s.allow_registration is False and s.operator_token == "op-token"
    p = s.policy
    assert (p.pricing.base, p.pricing.steepness, p.pricing.floor, p.pricing.ceiling) == (
        2000,
        1.5,
        100,
        9000,
    )
    assert (p.panel.panel_size, p.panel.quorum, p.panel.widen_step, p.panel.max_panel) == (
        5,
        3,
        1,
        9,
    )
    assert p.panel.min_posterior == 0.95 and p.panel.use_reliability is False
    assert p.review_window == timedelta(seconds=60)
    assert (p.escalation_raise_percent, p.escalation_cap) == (25, 20000)
    assert (p.escalation_seats, p.max_open_claims) == (1, 5)
    assert (p.claim_rate_limit, p.claim_rate_window) == (12, timedelta(seconds=600))
    assert (p.registration_rate_limit, p.registration_rate_window) == (4, timedelta(days=1))
    assert p.reputation == MarketPolicy().reputation  # not configurable: defaults stand


def test_defaults_and_flags_over_environment() -> None:
    s = parse_settings(MarketplaceSettings, [], SECRET_ENV)
    assert s.policy == MarketPolicy() and (s.host, s.port) == ("127.0.0.1", 8081)
    env = SECRET_ENV | {"CRYPTO_DOCTOR_MARKETPLACE_PORT": "9001", "CRYPTO_DOCTOR_QUORUM": "3"}
    s = parse_settings(
        MarketplaceSettings, ["--port", "9999", "--quorum", "2", "--review-window-s", "30"], env
    )
    assert s.port == 9999 and s.policy.panel.quorum == 2
    assert s.policy.review_window == timedelta(seconds=30)


def test_secrets_come_only_from_the_environment() -> None:
    """The marketplace's private key and the operator token never go on a command line; the
    clinic's public key is no secret and has a flag."""
    for flag in ("--market-key", "--signing-key", "--operator-token", "--link-secret-hex"):
        with pytest.raises(SystemExit):
            parse_settings(MarketplaceSettings, [flag, "ab"], SECRET_ENV)
    env = SECRET_ENV | {"CRYPTO_DOCTOR_OPERATOR_TOKEN": "op-token"}
    s = parse_settings(MarketplaceSettings, ["--clinic-public-key", CLINIC_PUBLIC], env)
    argv = settings_to_argv(s)
    assert "op-token" not in argv and MARKET_KEY not in " ".join(argv)
    assert argv[argv.index("--clinic-public-key") + 1] == CLINIC_PUBLIC
    assert secrets_to_env(s) == env
    assert MARKET_KEY not in repr(s) and "op-token" not in repr(s)
    rebuilt = parse_settings(MarketplaceSettings, settings_to_argv(s), secrets_to_env(s))
    assert rebuilt == s


def test_bad_settings_are_refused_with_their_source(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_settings(MarketplaceSettings, [], {"CRYPTO_DOCTOR_MARKET_KEY": "zz"})
    assert "Ed25519" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(MarketplaceSettings, [], {})  # no signing key at all
    assert "CRYPTO_DOCTOR_MARKET_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(MarketplaceSettings, ["--clinic-public-key", "ab" * 31], SECRET_ENV)
    assert "public key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(MarketplaceSettings, ["--quorum", "4"], SECRET_ENV)  # > panel size
    assert "quorum" in capsys.readouterr().err


def test_no_setting_is_a_secret_shared_with_the_clinic() -> None:
    """The image-link HMAC key is gone: the only keys are the market's own and the clinic's
    public one."""
    from dataclasses import fields

    names = {f.name for f in fields(MarketplaceSettings)}
    assert "image_link_secret" not in names
    assert {"signing_key", "clinic_public_key"} <= names


def test_doctors_cli_takes_the_database_from_flag_or_environment(
    empty_db_url, tmp_path, monkeypatch, capsys
) -> None:
    argv = ["create", "--name", "Dr Flag", "--specialty", "neuro", "--reputation", "150"]
    assert doctors.main(["--db-url", empty_db_url, *argv]) == 0
    created = json.loads(capsys.readouterr().out)
    engine = make_engine(empty_db_url)
    with make_sessionmaker(engine)() as session:
        profile = doctors.doctor_profile(session, created["doctor_id"])
        assert (profile.display_name, profile.reputation, profile.tier) == ("Dr Flag", 150, 1)
        assert doctors.authenticate(session, created["token"]) == created["doctor_id"]
    engine.dispose()
    monkeypatch.setenv("CRYPTO_DOCTOR_DB_URL", f"sqlite:///{tmp_path / 'from-env.sqlite3'}")
    assert doctors.main(argv) == 0
    assert (tmp_path / "from-env.sqlite3").exists()
