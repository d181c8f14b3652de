"""CrypTen 0.4.1 on today's torch: every patch the project needs, in one place.

CrypTen has been unmaintained since late 2022. Import ``crypten`` only through
:func:`load_crypten` (or import this module before ``crypten``), in every process: spawned
MPC parties re-import their modules, so each one applies the patches itself.

The project never uses CrypTen's ONNX path (``crypten.nn.from_pytorch``) nor
``crypten.load``: encrypted networks are built from the torch weights directly
(``models.encrypted``), which sidesteps CrypTen's ONNX-exporter and pickle breakages. The
patches below are the failures met on the path the project does use (each with a test in
``tests/models/test_crypten_compat.py`` that fails without it) and two measured slownesses
(config reads; the transport of the two parties' rounds, :func:`use_peer_link`), and two
missing APIs (:func:`encoded_like`, :func:`multiply_together`, :func:`on_shares`). The
one-round comparison's dealing on the TTP server is added here too
(``models.sign_gate.serve_sign_keys``), so the dealer process has it.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from models.peer_link import PeerLink


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


def _exact_decode() -> None:
    """Failure: an opened negative value is off by -1 now and then, e.g. ``-13.99995``
    opens as ``-14.99995``.

    ``FixedPointEncoder.decode`` floor-divides a negative value by ``scale - 1`` instead of
    ``scale``, which is one too low whenever ``value = -k + r / 2^16`` (integer ``k``,
    ``0 < r < 2^16``) has ``r < k``: ``k - 1`` in 65,536 values between ``-k`` and
    ``-k + 1``, so never above -1 and 13 in 65,536 between -14 and -13. One
    opened gradient of 136,000 values then holds a few coordinates off by 1 (found by
    ``tests/models/test_encrypted_training.py``), and a logit difference just above -6 can
    open as about -7. Decode as integer part plus remainder, both by ``scale``.
    """
    import torch
    from crypten.encoder import FixedPointEncoder

    if getattr(FixedPointEncoder, "_crypto_doctor_exact_decode", False):
        return
    original = FixedPointEncoder.decode

    def decode(self: FixedPointEncoder, tensor: Any) -> Any:
        if tensor is None or self._scale <= 1:
            return original(self, tensor)
        whole = torch.div(tensor, self._scale, rounding_mode="floor")
        return whole.float() + (tensor - whole * self._scale).float() / self._scale

    FixedPointEncoder.decode = decode
    FixedPointEncoder._crypto_doctor_exact_decode = True


def load_crypten() -> types.ModuleType:
    """Apply the patches (idempotent) and return the ``crypten`` module."""
    _alias_onnx_registration()
    import crypten

    _fast_config_reads()
    _exact_decode()
    from models import weight_masks
    from models.sign_gate import serve_sign_keys

    serve_sign_keys()  # the TTP dealer deals the sign gate's keys too
    weight_masks.install()  # a served model's weight masks are opened once (TFP)
    return crypten


def encoded_like(x: Any, like: Any) -> Any:
    """Missing API: ``x`` (a CrypTen tensor) re-encoded to ``like``'s fixed-point scale.

    CrypTen's comparisons return 0/1 shares at scale 1, its arithmetic at scale 2^16, and a
    concatenation joins raw shares, so the two cannot share an opening as they are.
    ``ArithmeticSharedTensor.encode_as_`` rescales (locally: the shares times the public
    ratio of the scales, exact) but ``MPCTensor`` does not expose it."""
    out = x.clone()
    out._tensor.encode_as_(like._tensor)
    return out


def on_shares(function: Callable[..., Any], *tensors: Any) -> Any:
    """Slowness: every MPCTensor operation goes through CrypTen's ``__torch_function__``,
    autograd dispatch and attribute validation (0.1-0.5 ms a call on this machine, more
    than the work for a small tensor).

    ``function`` must be exact on additive shares: a reshape, slice or concatenation, or a
    sum or difference of the tensors (secrets at one fixed-point scale; no public constant,
    no product). It is applied to this party's shares directly."""
    import crypten

    scales = {t._tensor.encoder.scale for t in tensors}
    if len(scales) != 1:
        raise ValueError("on_shares takes tensors at one fixed-point scale")
    out = function(*[t._tensor.share for t in tensors])
    precision = tensors[0]._tensor.encoder._precision_bits
    return crypten.mpc.MPCTensor.from_shares(out, precision=precision)


def multiply_together(pairs: Sequence[tuple[str, Any, Any]]) -> list[Any]:
    """Missing API: independent multiplications of secret-shared CrypTen tensors in one round.

    ``pairs`` are ``(op, x, y)`` with ``op`` ``"mul"`` or ``"matmul"`` and ``x``, ``y``
    MPCTensors at CrypTen's fixed-point scale; the result is ``[op(x, y), ...]``. CrypTen's
    own multiplication (``crypten.mpc.primitives.beaver``) opens its masked operands
    ``x - a`` and ``y - b`` in a round of its own; multiplications that do not depend on
    each other can open theirs together, which is all this does differently: the same
    triples (``models.weight_masks``: the provider's, or a kept weight mask), one
    ``reveal_batch`` for every pair, then CrypTen's product and its truncation for each."""
    import crypten
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    from models import weight_masks

    operands = [(op, x._tensor, y._tensor) for op, x, y in pairs]
    scales = {t.encoder.scale for _, x, y in operands for t in (x, y)}
    if len(scales) != 1 or scales == {1}:
        raise ValueError("multiply_together takes fixed-point operands at one scale")
    if any(op not in ("mul", "matmul") for op, _, _ in operands):
        raise ValueError("multiply_together multiplies with mul or matmul")
    scale = scales.pop()
    triples = [weight_masks.triple(op, x, y) for op, x, y in operands]
    masked = [m for (_, x, y), t in zip(operands, triples, strict=True) for m in t.masked(x, y)]
    opened = iter(ArithmeticSharedTensor.reveal_batch(masked))  # the one round
    products = []
    for t in triples:
        c = t.product(opened)
        product = ArithmeticSharedTensor.from_shares(c.share).div_(scale)  # scale^2 -> scale
        products.append(crypten.mpc.MPCTensor.from_shares(product.share))
    return products


def use_peer_link(communicator: Any, link: PeerLink) -> None:
    """Slowness: on gloo, one CrypTen round costs about 2 RTT between hosts (measured by
    ``scripts/bench_multihost.py --probe``), and a batched reveal is one all-reduce per tensor.

    Route the two parties' collectives through ``link`` (``models.peer_link``): an all-reduce
    is one concurrent exchange of all its tensors, a reduce, broadcast, gather or scatter one
    message one way. CrypTen's own statistics wrapper still counts every call, so rounds and
    bytes read as before. The dealer's (TTP) group and the set-up messages stay on gloo.
    """
    import pickle
    import types

    import torch
    from crypten.common import serial
    from crypten.communicator.communicator import _logging
    from torch.distributed import ReduceOp

    rank = communicator.get_rank()
    if communicator.get_world_size() != 2 or rank not in (0, 1):
        raise ValueError("the peer link joins exactly two parties")
    main_group = communicator.main_group
    peer = 1 - rank
    original = {
        name: getattr(communicator, name) for name in ("broadcast", "broadcast_obj", "barrier")
    }

    def combine(op: Any) -> Any:
        if op == ReduceOp.SUM:
            return torch.add
        if op == ReduceOp.BXOR:
            return torch.bitwise_xor
        raise ValueError(f"the peer link reduces with SUM or BXOR, not {op}")

    def all_reduce(self: Any, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        mine = list(input) if batched else [input]
        theirs = link.exchange(mine)
        result = [combine(op)(a, b) for a, b in zip(mine, theirs, strict=True)]
        return result if batched else result[0]

    def reduce(
        self: Any, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False
    ) -> Any:
        mine = list(input) if batched else [input]
        if rank != dst:
            link.send(mine)
            return None
        result = [combine(op)(a, b) for a, b in zip(mine, link.recv(mine), strict=True)]
        return result if batched else result[0]

    def broadcast(self: Any, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        if group is not None and group is not main_group:  # the dealer's groups
            return original["broadcast"](input, src, group=group, batched=batched)
        tensors = list(input) if batched else [input]
        if rank == src:
            link.send(tensors)
        else:
            for tensor, received in zip(tensors, link.recv(tensors), strict=True):
                tensor.copy_(received)
        return input

    def gather(self: Any, tensor: Any, dst: int) -> Any:
        if rank != dst:
            link.send([tensor])
            return [None]
        result = [tensor.clone(), tensor.clone()]
        result[peer] = link.recv([tensor])[0]
        return result

    def scatter(
        self: Any, scatter_list: Any, src: int, size: Any = None, device: Any = None
    ) -> Any:
        if rank == src:
            link.send([scatter_list[peer]])
            return scatter_list[rank]
        shape = size if size is not None else scatter_list[rank].size()
        return link.recv([torch.empty(shape, dtype=torch.long)])[0]

    def broadcast_obj(self: Any, obj: Any, src: int, group: Any = None) -> Any:
        if group is not None and group is not main_group:
            return original["broadcast_obj"](obj, src, group=group)
        if rank == src:
            link.send_bytes(pickle.dumps(obj))
            return obj
        return serial.restricted_loads(link.recv_bytes())

    def barrier(self: Any) -> None:
        link.exchange([torch.zeros(1, dtype=torch.uint8)])

    for function in (all_reduce, reduce, broadcast, gather, scatter, broadcast_obj, barrier):
        setattr(communicator, function.__name__, types.MethodType(_logging(function), communicator))
    communicator.peer_link = link
    _close_link_at_shutdown()


def _close_link_at_shutdown() -> None:
    """``crypten.uninit()`` also closes the peer link of the communicator it shuts down."""
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    if getattr(DistributedCommunicator, "_crypto_doctor_closes_link", False):
        return
    shutdown = DistributedCommunicator.shutdown.__func__

    def close_then_shutdown(cls: Any) -> None:
        link = getattr(cls.instance, "peer_link", None)
        if link is not None:
            link.close()
        shutdown(cls)

    DistributedCommunicator.shutdown = classmethod(close_then_shutdown)
    DistributedCommunicator._crypto_doctor_closes_link = True
