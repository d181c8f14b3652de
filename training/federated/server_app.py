"""The model owner's Flower ServerApp (federation venv): moves messages, nothing else.

The decisions (checks, aggregation, evaluation, outputs) are :class:`~training.federated.owner.Federation`'s.
Two paths:

* plain (FedAvg or FedMedian): each round, the global model goes to every active hospital
  with Flower's Message API; replies that arrive within ``round-timeout-s`` are the round;
* SecAgg+ (FedAvg only): Flower's legacy ``DefaultWorkflow`` with ``SecAggPlusWorkflow``;
  the model owner learns only the example-weighted mean change of each round.

Before the rounds every hospital describes its data (or says why it cannot take part); after
them each one scores a grid of temperatures on its calibration split and the owner picks the
temperature with the lowest pooled NLL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from training.federated.aggregate import Update
from training.federated.hospital import (
    CalibrationStats,
    pooled_ece,
    pooled_temperature,
    temperature_grid,
)
from training.federated.owner import Federation, FederationError
from training.federated.protocol import CALIBRATE, DESCRIBE, RunConfig

log = logging.getLogger("training.federated")
#: SecAgg+ clips each value of the change to ±this before quantising it; BatchNorm's
#: ``num_batches_tracked`` grows by the local steps per round, far below it.
SECAGG_CLIPPING = 64.0
SECAGG_QUANTIZATION = 1 << 24

app = ServerApp()


class CountingGrid(Grid):
    """A Grid that counts each hospital's payload bytes in both directions."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        #: message id -> the node it went to: an error reply about a node (e.g. "Node
        #: Unavailable") comes from the SuperLink, so its source is not that node
        self.destination: dict[str, int] = {}

    def reset(self) -> None:
        self.sent, self.received = {}, {}

    def set_run(self, run_id: int) -> None:
        self.inner.set_run(run_id)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        for m in messages:
            dst = m.metadata.dst_node_id
            self.sent[dst] = self.sent.get(dst, 0) + _bytes(m.content)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for m in messages:  # pushed: the ids are set now
            self.destination[m.metadata.message_id] = m.metadata.dst_node_id
        for r in replies:
            if not r.has_error():
                src = self.node_of(r)
                self.received[src] = self.received.get(src, 0) + _bytes(r.content)
        return replies

    def node_of(self, reply: Message) -> int:
        """The hospital a reply is about."""
        return self.destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def _bytes(content: RecordDict) -> int:
    """Payload bytes: arrays as stored, other records as serialised."""
    return sum(
        record.count_bytes() if isinstance(record, ArrayRecord) else len(record.deflate())
        for record in content.values()
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunConfig.from_flower(dict(context.run_config))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = _registry(run.registry)
    federation = Federation(run, registry)
    counting = CountingGrid(grid)
    nodes = _wait_for_hospitals(counting, registry, run)
    _describe(counting, federation, nodes, run)
    if len(federation.active()) < run.min_hospitals:
        raise FederationError(
            f"{len(federation.active())} hospital(s) can take part, fewer than the minimum "
            f"{run.min_hospitals}: {[h.record() for h in federation.hospitals.values()]}"
        )
    if run.secagg:
        _secagg_rounds(counting, context, federation, run)
    else:
        _plain_rounds(counting, federation, run)
    _calibrate(counting, federation, run)
    federation.finish(["python", "-m", "training.federated", "run", *_flags(run)])


def _registry(path: str) -> dict[int, str]:
    """node id -> pseudonym, as written by ``python -m training.federated register``."""
    if not path or not Path(path).is_file():
        return {}
    entries = json.loads(Path(path).read_text())
    return {int(e["node_id"]): str(e["pseudonym"]) for e in entries.values()}


def _wait_for_hospitals(grid: Grid, registry: dict[int, str], run: RunConfig) -> list[int]:
    """Every registered hospital online, or at least the minimum once the timeout passes."""
    deadline = time.monotonic() + run.round_timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        everyone = registry and set(registry) <= set(nodes)
        if everyone or (time.monotonic() > deadline and len(nodes) >= run.min_hospitals):
            return nodes
        if time.monotonic() > deadline + run.round_timeout_s:
            raise FederationError(f"only {len(nodes)} hospital(s) online; need {run.min_hospitals}")
        time.sleep(1.0)


def _describe(grid: CountingGrid, federation: Federation, nodes: list[int], run: RunConfig) -> None:
    messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in nodes]
    answered = set()
    for reply in grid.send_and_receive(messages, timeout=run.round_timeout_s):
        node = grid.node_of(reply)
        answered.add(node)
        if reply.has_error():
            federation.described(node, {"error": reply.error.reason})
        else:
            federation.described(node, dict(reply.content["data"]))
    for node in set(nodes) - answered:
        federation.silent(node, "the data description")


def _plain_rounds(grid: CountingGrid, federation: Federation, run: RunConfig) -> None:
    for number in range(1, run.rounds + 1):
        grid.reset()
        started = time.perf_counter()
        active = federation.active()
        parameters = ndarrays_to_parameters(federation.arrays)
        messages = [
            Message(
                compat.fitins_to_recorddict(FitIns(parameters, {"round": number}), keep_input=True),
                dst_node_id=node,
                message_type="train",
                group_id=str(number),
            )
            for node in active
        ]
        replies, missing, node_of = [], {}, {}
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=run.round_timeout_s):
            node = grid.node_of(reply)
            answered.add(node)
            name = federation.hospital(node).pseudonym
            if reply.has_error():
                missing[node] = f"error at the node: {reply.error.reason}"
                continue
            try:
                fitres = compat.recorddict_to_fitres(reply.content, keep_input=False)
                arrays = parameters_to_ndarrays(fitres.parameters)
            except Exception as exc:  # a malformed reply is that node's problem, not the run's
                missing[node] = f"malformed reply: {exc}"
                continue
            node_of[name] = node
            metrics = {k: float(v) for k, v in fitres.metrics.items() if isinstance(v, int | float)}
            replies.append(Update(name, arrays, int(fitres.num_examples), metrics))
        for node in set(active) - answered:
            missing[node] = f"no reply within {run.round_timeout_s:g} s"
        federation.close_round(
            number,
            replies,
            node_of,
            missing,
            time.perf_counter() - started,
            _traffic(grid, federation),
        )


def _traffic(grid: CountingGrid, federation: Federation) -> dict[str, dict[str, int]]:
    return {
        federation.hospital(n).pseudonym: {
            "to_hospital": grid.sent.get(n, 0),
            "from_hospital": grid.received.get(n, 0),
        }
        for n in sorted(set(grid.sent) | set(grid.received))
    }


class _SecAggStrategy(FedAvg):
    """FedAvg over SecAgg+'s masked mean: it receives the mean *change* and applies it."""

    def __init__(self, federation: Federation, grid: CountingGrid, run: RunConfig) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=run.min_hospitals,
            min_available_clients=run.min_hospitals,
            initial_parameters=ndarrays_to_parameters(federation.arrays),
            on_fit_config_fn=lambda number: {"round": number},
        )
        self.federation, self.grid, self.run = federation, grid, run
        self.started = time.perf_counter()
        self.asked: list[int] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.grid.reset()
        self.started = time.perf_counter()
        active = set(self.federation.active())
        chosen = [
            (proxy, ins)
            for proxy, ins in super().configure_fit(server_round, parameters, client_manager)
            if proxy.node_id in active
        ]
        self.asked = [proxy.node_id for proxy, _ in chosen]
        return chosen

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if len(results) < self.run.min_hospitals:
            raise FederationError(
                f"round {server_round}: {len(results)} hospital(s) in the masked sum, "
                f"fewer than the minimum {self.run.min_hospitals}"
            )
        change = parameters_to_ndarrays(results[0][1].parameters)
        weights = {
            self.federation.hospital(proxy.node_id).pseudonym: int(res.num_examples)
            for proxy, res in results
        }
        present = {proxy.node_id for proxy, _ in results}
        missing = {n: "left the SecAgg+ round" for n in self.asked if n not in present}
        self.federation.close_masked_round(
            server_round,
            change,
            weights,
            missing,
            time.perf_counter() - self.started,
            _traffic(self.grid, self.federation),
        )
        return ndarrays_to_parameters(self.federation.arrays), {}


def _secagg_rounds(
    grid: CountingGrid, context: Context, federation: Federation, run: RunConfig
) -> None:
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=run.rounds, round_timeout=run.round_timeout_s),
        strategy=_SecAggStrategy(federation, grid, run),
    )
    active = len(federation.active())
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=active,
            reconstruction_threshold=max(2, run.min_hospitals),
            clipping_range=SECAGG_CLIPPING,
            quantization_range=SECAGG_QUANTIZATION,
            timeout=run.round_timeout_s,
        )
    )
    workflow(grid, legacy)


def _calibrate(grid: CountingGrid, federation: Federation, run: RunConfig) -> None:
    temperatures = temperature_grid()
    first = _calibration_round(grid, federation, run, {"temperatures": temperatures})
    temperature, pooled_nll = pooled_temperature(temperatures, list(first.values()))
    second = _calibration_round(
        grid, federation, run, {"temperatures": [temperature], "chosen": temperature}
    )
    federation.calibrated(
        temperature,
        pooled_nll,
        pooled_ece(list(second.values())),
        {name: stats.count for name, stats in second.items()},
    )


def _calibration_round(
    grid: CountingGrid, federation: Federation, run: RunConfig, config: dict[str, Any]
) -> dict[str, CalibrationStats]:
    messages = [
        Message(
            RecordDict(
                {
                    "model": ArrayRecord([np.asarray(a) for a in federation.arrays]),
                    "config": ConfigRecord(config),
                }
            ),
            dst_node_id=node,
            message_type=CALIBRATE,
        )
        for node in federation.active()
    ]
    out: dict[str, CalibrationStats] = {}
    for reply in grid.send_and_receive(messages, timeout=run.round_timeout_s):
        name = federation.hospital(grid.node_of(reply)).pseudonym
        if reply.has_error():
            log.warning("calibration: no answer from %s: %s", name, reply.error.reason)
            continue
        if "calibration" not in reply.content:
            log.warning(
                "calibration: %s answered without statistics (%s)", name, list(reply.content)
            )
            continue
        record = reply.content["calibration"]
        flat = [float(v) for v in record["bins"]]
        bins = [(int(flat[i]), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]
        out[name] = CalibrationStats(
            int(record["count"]), [float(v) for v in record["nll-sums"]], bins
        )
    return out


def _flags(run: RunConfig) -> list[str]:
    return [f"--{k}={v}" for k, v in run.to_flower().items()]
