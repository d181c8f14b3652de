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
    ).with_link_secret()
    argv = settings_to_argv(settings)
    assert settings.link_secret_hex not in " ".join(argv)
    assert "op-secret" not in " ".join(argv)
    assert parse_predictor_settings(argv, secrets_to_env(settings)) == settings


def test_market_policy_comes_from_the_same_settings():
    env = {"CRYPTO_DOCTOR_BOUNTY_BASE": "700", "CRYPTO_DOCTOR_REVIEW_WINDOW_S": "60"}
    settings = parse_predictor_settings(["--quorum", "3", "--panel-size", "5"], env)
    assert settings.policy.pricing.base == 700
    assert settings.policy.review_window.total_seconds() == 60
    assert (settings.policy.panel.quorum, settings.policy.panel.panel_size) == (3, 5)


def test_link_secret_must_be_hex(capsys):
    with pytest.raises(SystemExit):
        parse_predictor_settings([], {"CRYPTO_DOCTOR_LINK_SECRET_HEX": "zz"})
    assert "must be hex" in capsys.readouterr().err
