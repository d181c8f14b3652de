"""CrypTen 0.4.1 on today's torch: every patch the project needs, in one place.

CrypTen has been unmaintained since late 2022. Import ``crypten`` only through
:func:`load_crypten` (or import this module before ``crypten``), in every process: spawned
MPC parties re-import their modules, so each one applies the patches itself.

The project never uses CrypTen's ONNX path (``crypten.nn.from_pytorch``) nor
``crypten.load``: encrypted networks are built from the torch weights directly
(``models.encrypted``), which sidesteps CrypTen's ONNX-exporter and pickle breakages. The
patches below are the failure met on the path the project does use (with a test in
``tests/models/test_crypten_compat.py`` that fails without it) and one measured slowness.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _alias_onnx_registration() -> None:
    """Failure: ``import crypten`` raises ``No module named 'torch.onnx._internal.registration'``.

    ``crypten.nn.onnx_converter`` imports that module at import time; torch >= 2.9 moved it
    to ``torch.onnx._internal.torchscript_exporter.registration``. Alias the new location.
    """
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        from torch.onnx._internal.torchscript_exporter import registration

        sys.modules[name] = registration


class _ConfigView:
    """Read-through snapshot of one OmegaConf node with plain-attribute reads.

    Writes go to the OmegaConf node as well, so ``cfg.mpc.provider = "TTP"`` keeps working.
    """

    __slots__ = ("_node", "_values")

    def __init__(self, node: DictConfig) -> None:
        from omegaconf import DictConfig

        values: dict[str, Any] = {
            str(key): _ConfigView(value) if isinstance(value, DictConfig) else value
            for key, value in node.items()  # CrypTen's keys are all strings (from YAML)
        }
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._node, name, value)
        self._values[name] = getattr(self._node, name)


def _fast_config_reads() -> None:
    """Slowness: every ``crypten.cfg.a.b`` read walks OmegaConf (~80 us on this machine).

    CrypTen reads its config hundreds of times per encrypted LeNet forward and thousands per
    ResNet18 forward, on every party. Serve reads from a plain snapshot, rebuilt whenever
    CrypTen swaps its config object (``load_config``, ``set_config``, ``temp_override``,
    top-level sets all assign ``self.config``).
    """
    from crypten.config.config import CrypTenConfig

    if getattr(CrypTenConfig, "_crypto_doctor_fast_reads", False):
        return
    original = CrypTenConfig.__getattribute__

    def __getattribute__(self: CrypTenConfig, name: str) -> Any:  # noqa: N807 - replaces CrypTen's
        if name in ("config", "__dict__", "__class__") or name.startswith("_"):
            return original(self, name)
        state = self.__dict__
        try:
            return state[name] if name in state else type(self).__dict__[name].__get__(self)
        except (KeyError, AttributeError):
            pass
        config = state["config"]
        cached = state.get("_view")
        if cached is None or cached[0] is not config:
            cached = (config, _ConfigView(config))
            state["_view"] = cached
        value = cached[1]
        for key in name.split("."):
            value = getattr(value, key)
        return value

    CrypTenConfig.__getattribute__ = __getattribute__
    CrypTenConfig._crypto_doctor_fast_reads = True


def load_crypten() -> types.ModuleType:
    """Apply the patches (idempotent) and return the ``crypten`` module."""
    _alias_onnx_registration()
    import crypten

    _fast_config_reads()
    return crypten
