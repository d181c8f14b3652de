"""The one flags/env settings helper every entry point uses."""

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from infra.settings import (
    flag,
    nested,
    parse_settings,
    secrets_to_env,
    settings_from,
    settings_to_argv,
)


@dataclass(frozen=True)
class Pricing:
    base: int = 1000
    steepness: float = 3.0


@dataclass(frozen=True)
class Rules:
    quorum: int = 2


@dataclass(frozen=True)
class Policy:
    pricing: Pricing = field(default_factory=Pricing)
    rules: Rules = field(default_factory=Rules)
    window: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Example:
    port: int = field(default=8080, metadata=flag("the port (95% of users keep it)"))
    model_path: Path | None = None
    ocean: bool = True
    verbose: bool = False
    validate: bool = field(default=False, metadata=flag("check", valued=True))
    link_secret: bytes = field(default=b"", metadata=flag("key", secret=True, env="LINK_HEX"))
    names: tuple[str, ...] = ("a", "b")
    policy: Policy = field(default_factory=Policy, metadata=nested("", pricing="bounty_"))

    def __post_init__(self) -> None:
        if self.port <= 0:
            raise ValueError("port must be positive")


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {
        "CRYPTO_DOCTOR_PORT": "9000",
        "CRYPTO_DOCTOR_BOUNTY_BASE": "700",
        "CRYPTO_DOCTOR_NAMES": "x, y",
    }
    settings = parse_settings(Example, ["--port", "9100", "--no-ocean", "--window-s", "60"], env)
    assert settings.port == 9100
    assert settings.ocean is False and settings.verbose is False
    assert settings.names == ("x", "y")
    assert settings.policy.pricing == Pricing(base=700, steepness=3.0)
    assert settings.policy.window == timedelta(seconds=60)
    assert settings.policy.rules == Rules()  # not marked configurable: defaults stand


def test_help_prints_every_flag_even_with_a_percent_sign_in_its_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_settings(Example, ["--help"], {})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "95% of users" in out and "--bounty-base" in out


def test_valued_bool_flags_take_true_or_false():
    assert parse_settings(Example, ["--validate", "True"], {}).validate is True
    with pytest.raises(SystemExit):
        parse_settings(Example, ["--validate", "maybe"], {})


def test_secrets_come_only_from_the_environment_and_never_go_into_argv(capsys):
    with pytest.raises(SystemExit):
        parse_settings(Example, ["--link-secret", "abcd"], {})
    settings = parse_settings(Example, [], {"CRYPTO_DOCTOR_LINK_HEX": "abcd"})
    assert settings.link_secret == b"\xab\xcd"
    argv = settings_to_argv(settings)
    assert "abcd" not in " ".join(argv)
    assert secrets_to_env(settings) == {"CRYPTO_DOCTOR_LINK_HEX": "abcd"}


def test_child_argv_round_trips_every_field():
    settings = settings_from(
        Example,
        {},
        {},
        port=1,
        model_path=Path("m.pth"),
        ocean=False,
        verbose=True,
        validate=True,
        names=("q",),
        link_secret=b"\x01",
    )
    rebuilt = parse_settings(Example, settings_to_argv(settings), secrets_to_env(settings))
    assert rebuilt == settings


def test_bad_values_name_their_source(capsys):
    with pytest.raises(SystemExit):
        parse_settings(Example, [], {"CRYPTO_DOCTOR_PORT": "eighty"})
    assert "CRYPTO_DOCTOR_PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(Example, ["--port", "0"], {})
    assert "port must be positive" in capsys.readouterr().err
    with pytest.raises(TypeError):
        settings_from(Example, {}, {}, no_such_setting=1)
