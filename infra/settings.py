"""One way to build a process's settings: a frozen dataclass, CLI flags, ``CRYPTO_DOCTOR_*`` env.

Each entry point declares its settings as a frozen dataclass and calls :func:`parse_settings`
once; the value is then passed down explicitly. A field becomes ``--field-name`` (dashes for
underscores) with the environment variable ``CRYPTO_DOCTOR_FIELD_NAME`` as fallback, then the
field's default. Flags win over the environment, which wins over defaults.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (a switch: ``--no-x`` when the
default is on, ``--x`` when it is off; env ``0/1/true/false``), ``Path``, ``bytes`` (hex),
``timedelta`` (seconds, the flag named ``--<name>-s``), ``tuple[str, ...]`` (comma-separated), ``X | None``, and a nested
dataclass marked with :func:`nested` (its fields get the nested prefix).

Secrets (:func:`flag` with ``secret=True``) are read from the environment only: a command line
is visible to every local user in ``ps``, so they never get a flag and never go into argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "CRYPTO_DOCTOR_"
#: The embedded default database of a single-host run.
DEFAULT_DB_URL = "sqlite:///var/crypto-doctor.sqlite3"

_FALSE = frozenset({"0", "false", "no", "off"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_META = "crypto_doctor_setting"

S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class _Meta:
    help: str = ""
    env: str | None = None
    secret: bool = False
    prefix: str | None = None  # set: a nested dataclass whose fields get this prefix
    #: For a nested dataclass: which of *its* dataclass fields to configure, with their prefix
    #: (lets pure domain dataclasses stay free of settings metadata).
    children: tuple[tuple[str, str], ...] = ()
    configurable: bool = True
    #: A bool that takes a value (``--x True``) instead of being a switch.
    valued: bool = False


def flag(
    help: str = "", *, env: str | None = None, secret: bool = False, valued: bool = False
) -> dict[str, Any]:
    """Field metadata: the flag's help, its env name (after the prefix), secrecy.

    ``valued``: a bool flag that takes a value (``--validate-encrypted True``), not a switch.
    """
    return {_META: _Meta(help=help, env=env, secret=secret, valued=valued)}


def nested(prefix: str = "", **children: str) -> dict[str, Any]:
    """Field metadata for a nested settings dataclass; its fields become ``--<prefix><name>``.

    ``children`` names dataclass fields *inside* it to configure too, with their own prefix
    (``nested("", pricing="bounty_", panel="")``); other nested dataclasses keep defaults.
    """
    return {_META: _Meta(prefix=prefix, children=tuple(children.items()))}


def fixed() -> dict[str, Any]:
    """Field metadata for a field that is not configurable from flags or the environment."""
    return {_META: _Meta(configurable=False)}


def bool_text(text: str) -> bool:
    """``True``/``False`` as people type them (also yes/no/on/off/1/0, any case)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One configurable leaf field, addressed by its path through nested dataclasses."""

    path: tuple[str, ...]
    name: str  # flat name: the flag is --name with dashes, the env var PREFIX + NAME
    kind: Any
    optional: bool
    default: Any
    meta: _Meta

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + (self.meta.env or self.name.upper())


def _meta(f: dataclasses.Field[Any]) -> _Meta:
    meta = f.metadata.get(_META)
    return meta if isinstance(meta, _Meta) else _Meta()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(type, optional) of ``X`` or ``X | None``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _leaves(
    cls: type,
    prefix: str = "",
    path: tuple[str, ...] = (),
    children: Mapping[str, str] | None = None,
) -> Iterator[_Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = _meta(f)
        if children and f.name in children:
            meta = _Meta(prefix=children[f.name])
        if not meta.configurable:
            continue
        kind, optional = _unwrap(hints[f.name])
        if meta.prefix is not None:
            yield from _leaves(kind, prefix + meta.prefix, (*path, f.name), dict(meta.children))
            continue
        if dataclasses.is_dataclass(kind):
            continue  # a nested value nobody marked configurable: its defaults stand
        # A duration is given in seconds, and says so in its name: --review-window-s.
        name = prefix + f.name + ("_s" if kind is timedelta else "")
        yield _Leaf((*path, f.name), name, kind, optional, _default(f), meta)


def _converter(leaf: _Leaf) -> Callable[[str], Any]:
    kind = leaf.kind
    if kind is bool:
        return bool_text
    if kind is Path:
        return Path
    if kind is bytes:
        return bytes.fromhex
    if kind is timedelta:
        return lambda text: timedelta(seconds=float(text))
    if typing.get_origin(kind) is tuple:
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    if kind in (str, int, float):
        return typing.cast(Callable[[str], Any], kind)
    raise TypeError(f"setting {leaf.name}: unsupported type {kind!r}")


def _text(leaf: _Leaf, value: Any) -> str:
    """The flag text that converts back to ``value``."""
    if leaf.kind is bytes:
        return typing.cast(bytes, value).hex()
    if leaf.kind is timedelta:
        return repr(typing.cast(timedelta, value).total_seconds())
    if typing.get_origin(leaf.kind) is tuple:
        return ",".join(value)
    if leaf.kind is float:
        return repr(float(value))
    return str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, *, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per configurable field of ``cls`` (secrets get none: env only)."""
    for leaf in _leaves(cls):
        if leaf.meta.secret or leaf.name in skip:
            continue
        env_help = f"(env {leaf.env_name})"
        if leaf.kind is bool and not leaf.meta.valued:
            on = bool(leaf.default) if leaf.default is not dataclasses.MISSING else False
            option = ("--no-" if on else "--") + leaf.name.replace("_", "-")
            parser.add_argument(
                option,
                dest=leaf.name,
                action="store_const",
                const=not on,
                default=None,
                help=_escaped(f"{leaf.meta.help} {env_help}".strip()),
            )
            continue
        shown = (
            "" if leaf.default in (dataclasses.MISSING, None, "") else f"; default {leaf.default}"
        )
        parser.add_argument(
            leaf.option,
            dest=leaf.name,
            default=None,
            metavar=leaf.name.upper(),
            help=_escaped(f"{leaf.meta.help} {env_help}{shown}".strip()),
        )


def _escaped(help_text: str) -> str:
    """argparse formats help with ``%``: a literal one (``95% intervals``) must be doubled."""
    return help_text.replace("%", "%%")


def settings_from(
    cls: type[S],
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> S:
    """Build ``cls``: keyword overrides, then flags (raw text), then env, then defaults.

    Raises ``ValueError`` naming the flag for text that does not convert, and passes on the
    ``ValueError`` of the dataclass's own ``__post_init__`` checks.
    """
    env = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: dict[tuple[str, ...], Any] = {}
    for leaf in _leaves(cls):
        if leaf.name in overrides:
            if overrides[leaf.name] is not None:
                values[leaf.path] = overrides[leaf.name]
            continue
        raw = None if leaf.meta.secret else given.get(leaf.name)
        source = leaf.option
        if raw is None and leaf.env_name in env:
            raw, source = env[leaf.env_name], leaf.env_name
        if raw is None or (isinstance(raw, str) and raw == "" and leaf.kind is not str):
            continue
        if isinstance(raw, str):
            try:
                raw = _converter(leaf)(raw)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from exc
        values[leaf.path] = raw
    unknown = set(overrides) - {leaf.name for leaf in _leaves(cls)}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    return _build(cls, values, ())


def _build(cls: type[S], values: Mapping[tuple[str, ...], Any], path: tuple[str, ...]) -> S:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        here = (*path, f.name)
        if here in values:
            kwargs[f.name] = values[here]
            continue
        kind, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(kind) and any(p[: len(here)] == here for p in values):
            kwargs[f.name] = _build(typing.cast(type, kind), values, here)
    return cls(**kwargs)


def parse_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> S:
    """Parse ``argv`` into ``cls``; bad values exit with argparse's usage message."""
    parser = parser or argparse.ArgumentParser(prog=prog, description=description)
    add_flags(parser, cls)
    args = parser.parse_args(argv)
    try:
        return settings_from(cls, args, env)
    except ValueError as exc:
        parser.error(str(exc))


def settings_to_argv(settings: object) -> list[str]:
    """Flags that rebuild ``settings`` in a child process (secrets excluded: pass them by env)."""
    argv: list[str] = []
    for leaf in _leaves(type(settings)):
        if leaf.meta.secret:
            continue
        value: Any = settings
        for part in leaf.path:
            value = getattr(value, part)
        if value is None:
            continue
        if leaf.kind is bool and not leaf.meta.valued:
            on = bool(leaf.default) if leaf.default is not dataclasses.MISSING else False
            if value != on:
                argv.append(("--no-" if on else "--") + leaf.name.replace("_", "-"))
            continue
        argv += [leaf.option, _text(leaf, value)]
    return argv


def secrets_to_env(settings: object) -> dict[str, str]:
    """The secret fields of ``settings`` as ``CRYPTO_DOCTOR_*`` variables for a child process."""
    env: dict[str, str] = {}
    for leaf in _leaves(type(settings)):
        if not leaf.meta.secret:
            continue
        value: Any = settings
        for part in leaf.path:
            value = getattr(value, part)
        if value not in (None, "", b""):
            env[leaf.env_name] = _text(leaf, value)
    return env
