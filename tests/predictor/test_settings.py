from pathlib import Path

import pytest

from predictor.settings import PredictorSettings, parse_settings, settings_to_argv


def test_flags_override_environment_which_overrides_defaults():
    env = {"CRYPTO_DOCTOR_PATIENT_PORT": "9000", "CRYPTO_DOCTOR_BACKBONE": "resnet18"}
    settings = parse_settings(["--patient-port", "9100"], env)
    assert settings.patient_port == 9100
    assert settings.backbone == "resnet18"
    assert settings.doctor_port == 8081
    assert settings.resolved_model_path == Path("models/resnet18.pth")


def test_invalid_values_are_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--backbone", "vgg"], {})
    assert "backbone must be one of" in capsys.readouterr().err


def test_child_argv_round_trips_the_settings():
    settings = PredictorSettings(patient_port=1234, provider="TTP", max_batch=3).with_link_secret()
    assert parse_settings(settings_to_argv(settings), {}) == settings
