from pathlib import Path

import pytest

from infra.settings import secrets_to_env, settings_to_argv
from predictor.settings import PredictorSettings, parse_predictor_settings


def test_flags_override_environment_which_overrides_defaults():
    env = {"CRYPTO_DOCTOR_PATIENT_PORT": "9000", "CRYPTO_DOCTOR_BACKBONE": "resnet18"}
    settings = parse_predictor_settings(["--patient-port", "9100"], env)
    assert settings.patient_port == 9100
    assert settings.backbone == "resnet18"
    assert settings.doctor_port == 8081
    assert settings.resolved_model_path == Path("models/resnet18.pth")


def test_invalid_values_are_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_predictor_settings(["--backbone", "vgg"], {})
    assert "backbone must be one of" in capsys.readouterr().err


def test_child_argv_round_trips_the_settings_and_keeps_secrets_off_it():
    settings = PredictorSettings(
        patient_port=1234, provider="TTP", max_batch=3, operator_token="op-secret"
    ).with_keys()
    argv = " ".join(settings_to_argv(settings))
    for secret in (settings.clinic_key, settings.market_key, "op-secret"):
        assert secret not in argv
    assert settings.market_public_key in argv  # public: a flag is fine
    rebuilt = parse_predictor_settings(settings_to_argv(settings), secrets_to_env(settings))
    assert rebuilt == settings


def test_market_policy_comes_from_the_same_settings():
    env = {"CRYPTO_DOCTOR_BOUNTY_BASE": "700", "CRYPTO_DOCTOR_REVIEW_WINDOW_S": "60"}
    settings = parse_predictor_settings(["--quorum", "3", "--panel-size", "5"], env)
    assert settings.policy.pricing.base == 700
    assert settings.policy.review_window.total_seconds() == 60
    assert (settings.policy.panel.quorum, settings.policy.panel.panel_size) == (3, 5)


def test_keys_must_be_32_bytes_of_hex(capsys):
    with pytest.raises(SystemExit):
        parse_predictor_settings([], {"CRYPTO_DOCTOR_CLINIC_KEY": "zz"})
    assert "clinic_key must be 32 bytes of hex" in capsys.readouterr().err


def test_a_party_between_hosts_must_name_its_tunnel_interface(capsys):
    with pytest.raises(SystemExit):
        parse_predictor_settings(["--rank", "1", "--master-addr", "10.0.0.5"], {})
    assert "--mpc-interface" in capsys.readouterr().err
    pinned = parse_predictor_settings(
        ["--rank", "1", "--master-addr", "10.77.0.1", "--mpc-interface", "wg0"], {}
    )
    assert pinned.mpc_interface == "wg0"
    assert parse_predictor_settings(["--rank", "1"], {}).mpc_interface == ""  # loopback


def test_the_marketplace_links_passports_to_the_ocean_service_run_here(capsys):
    from predictor.supervisor import marketplace_settings

    def view_url(*argv: str) -> str:
        market = marketplace_settings(parse_predictor_settings(list(argv), {}).with_keys())
        flags = settings_to_argv(market)
        assert flags[flags.index("--passport-view-url") + 1] == market.passport_view_url
        return market.passport_view_url

    assert view_url() == "http://127.0.0.1:8082"
    assert view_url("--ocean-port", "9082") == "http://127.0.0.1:9082"
    assert view_url("--host", "0.0.0.0") == "http://127.0.0.1:8082"  # reachable, not 0.0.0.0
    assert view_url("--host", "::1") == "http://[::1]:8082"
    assert view_url("--no-ocean") == ""  # no passport pages served here: no links
    public = "https://ocean.example.org"
    assert view_url("--ocean-public-url", public) == public
    assert view_url("--no-ocean", "--ocean-public-url", public) == public
    with pytest.raises(SystemExit):
        parse_predictor_settings(["--ocean-public-url", "javascript:alert(1)"], {})
    assert "ocean_public_url must be an http:// or https://" in capsys.readouterr().err
