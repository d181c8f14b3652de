"""The hospital's Flower ClientApp (federation venv): runs inside its SuperNode, on its host.

It answers three kinds of message from the model owner's ServerApp:

* ``query.describe``: the data set's content hash and size (or why it cannot be used);
* ``train``: a few local epochs from the global model; the reply is the *change* to the
  model (local − global) and the number of training examples. Flower's legacy FitIns/FitRes
  records carry it, so that the same handler also runs under SecAgg+ (``secaggplus_mod``
  masks the change before it leaves the host; the model owner then only sees the sum);
* ``evaluate.calibrate``: summed NLL over a temperature grid and ECE bin sums on the
  hospital's calibration split.

The hospital's folder is given by its own node config (``data-dir``), never by the model
owner. This module names the components; the code that runs is the hospital's own install
of this project (the Flower app bundle carries only ``pyproject.toml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from training.data import DatasetError
from training.federated.hospital import (
    PrivateTraining,
    SiteData,
    calibration_stats,
    load_site,
    local_train,
)
from training.federated.protocol import NODE_DATA_DIR, NODE_SIMULATE, RunConfig
from training.loop import LoopConfig
from training.privacy import AccountantHistory, history_from_json, history_to_json

log = logging.getLogger("training.federated.hospital")


def _secagg_when_the_run_asks(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    if _run(context).secagg:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp()
#: context.state key of this hospital's DP accountant history (JSON) in the current run
ACCOUNTANT_STATE = "dp-accountant"


def _run(context: Context) -> RunConfig:
    return RunConfig.from_flower(dict(context.run_config))


def _site(context: Context) -> tuple[RunConfig, SiteData]:
    run = _run(context)
    data_dir = Path(str(context.node_config[NODE_DATA_DIR]))
    return run, load_site(
        data_dir, run.architecture(), calibration_fraction=run.calibration_fraction, seed=run.seed
    )


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    try:
        _, site = _site(context)
    except DatasetError as exc:
        log.error("this hospital's data cannot be used: %s", exc)
        return Message(RecordDict({"data": ConfigRecord({"error": str(exc)})}), reply_to=msg)
    record = ConfigRecord(
        {
            "fingerprint_sha256": site.fingerprint,
            "size": site.size,
            "yes": site.counts["yes"],
            "no": site.counts["no"],
            "train": len(site.train_labels),
            "calibration": len(site.calib_labels),
        }
    )
    return Message(RecordDict({"data": record}), reply_to=msg)


@app.train(mods=[_secagg_when_the_run_asks])
def train(msg: Message, context: Context) -> Message:
    run, site = _site(context)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    global_arrays = parameters_to_ndarrays(fitins.parameters)
    round_number = int(fitins.config.get("round", 0))
    config = LoopConfig(
        max_epochs=run.local_epochs,
        batch_size=run.batch_size,
        lr=run.round_lr(round_number),
        weight_decay=run.weight_decay,
        augment=run.augmentation != "none",
        augmentation=run.augmentation if run.augmentation != "none" else "robust",
        seed=run.seed * 1000 + round_number,
        progress=False,
        keep=run.keep_epoch,
    )
    simulate = str(context.node_config.get(NODE_SIMULATE, "none"))
    dp = run.dp_config()
    private = None
    if dp is not None:
        # Flower starts a fresh ClientApp process for every message: the accountant's history
        # lives in this run's context.state on the node, which the SuperNode keeps.
        private = PrivateTraining(dp, run.rounds * run.local_epochs, _spent(context))
    result = local_train(run.architecture(), global_arrays, site, config, simulate, private)
    if result.privacy is not None:
        context.state[ACCOUNTANT_STATE] = ConfigRecord(
            {"history": history_to_json(result.privacy.accountant_history)}
        )
        log.info(
            "differential privacy: epsilon %.3f of %g spent after %d steps",
            result.privacy.epsilon, dp.epsilon if dp else 0.0,
            sum(n for _, _, n in result.privacy.accountant_history),
        )  # fmt: skip
    change = [
        (a.astype(np.float64) - g.astype(np.float64)).astype(g.dtype)
        if np.issubdtype(g.dtype, np.floating)
        else a - g
        for a, g in zip(result.arrays, global_arrays, strict=True)
    ]
    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=ndarrays_to_parameters(change),
        num_examples=result.examples,
        metrics={
            "train_loss": float(result.train_loss),
            "seconds": float(result.seconds),
            **result.privacy_metrics(),
        },
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def _spent(context: Context) -> AccountantHistory:
    if ACCOUNTANT_STATE not in context.state:
        return []
    return history_from_json(str(context.state[ACCOUNTANT_STATE]["history"]))


@app.evaluate("calibrate")
def calibrate(msg: Message, context: Context) -> Message:
    run, site = _site(context)
    arrays = msg.content["model"].to_numpy_ndarrays()
    config = msg.content["config"]
    temperatures = [float(t) for t in config["temperatures"]]
    chosen = float(config["chosen"]) if "chosen" in config else None
    stats = calibration_stats(run.architecture(), arrays, site, temperatures, chosen)
    flat_bins = [float(v) for b in stats.bins for v in b]
    record = MetricRecord({"count": stats.count, "nll-sums": stats.nll_sums, "bins": flat_bins})
    return Message(RecordDict({"calibration": record}), reply_to=msg)
