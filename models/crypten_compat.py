"""CrypTen 0.4.1 on today's torch: every patch the project needs, in one place.

CrypTen has been unmaintained since late 2022. Import ``crypten`` only through
:func:`load_crypten` (or import this module before ``crypten``), in every process: spawned
MPC parties re-import their modules, so each one applies the patches itself.

The project never uses CrypTen's ONNX path (``crypten.nn.from_pytorch``) nor
``crypten.load``: encrypted networks are built from the torch weights directly
(``models.encrypted``), which sidesteps CrypTen's ONNX-exporter and pickle breakages. The
patches below are exactly the failures met on the path the project does use; each has a
test in ``tests/test_crypten_compat.py`` that fails without it.
"""

from __future__ import annotations

import sys
import types


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


def load_crypten() -> types.ModuleType:
    """Apply the patches (idempotent) and return the ``crypten`` module."""
    _alias_onnx_registration()
    import crypten

    return crypten
