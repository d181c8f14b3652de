"""DP-SGD at each hospital of a real federation (issue 17): the accountant survives rounds.

Flower starts a fresh ClientApp process for every message, so a hospital's accountant must be
kept elsewhere (its node's ``context.state``); otherwise each round would report one round's
epsilon. Here: 2 hospitals, 2 rounds, and ε after round 2 must equal the RDP accountant's ε
for 2 x the local steps at the hospital's noise and sample rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.nets import build_model
from training.federated.hospital import (
    PrivateTraining,
    from_arrays,
    load_site,
    local_train,
    to_arrays,
)
from training.federated.local import LocalFederation, LocalHospital
from training.federated.outputs import FederatedPaths, load_arrays
from training.federated.processes import FEDERATION_VENV
from training.federated.protocol import RunConfig
from training.federated.sites import generate_eval, generate_site, site_profile
from training.loop import LoopConfig
from training.privacy import DPConfig, PrivacyBudgetError, batchnorm_layers, epsilon_spent


@pytest.mark.slow
@pytest.mark.skipif(
    not (FEDERATION_VENV / "bin" / "flower-superlink").exists(),
    reason="the federation venv (.venv-fed) is not built: run scripts/setup",
)
def test_each_hospitals_epsilon_covers_every_round(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for index, name in enumerate(("h1", "h2")):
        generate_site(data / name, site_profile(index), count=40, seed=40 + index)
    eval_dir = generate_eval(data / "eval", count=40, seed=49)
    public_dir = generate_eval(data / "public", count=32, seed=48)
    run = RunConfig(
        rounds=2, local_epochs=1, min_hospitals=2, round_timeout_s=300.0, batch_size=8,
        out=str(tmp_path / "out" / "federated.pth"), eval_dir=str(eval_dir),
        dp_epsilon=3.0, dp_delta=1e-5, max_grad_norm=1.0, dp_public_dir=str(public_dir),
        dp_public_pretrain_epochs=1,
    )  # fmt: skip
    hospitals = [LocalHospital("h1", data / "h1"), LocalHospital("h2", data / "h2")]
    with LocalFederation(tmp_path / "processes", hospitals) as federation:
        metrics = federation.run(run, timeout=1800)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    provenance = json.loads(
        FederatedPaths.for_checkpoint(Path(run.out)).outputs.provenance.read_text()
    )
    dp = provenance["differential_privacy"]
    assert dp["target_epsilon"] == 3.0 and dp["accountant"] == "rdp"
    assert "pre-trained without DP for 1 epochs on 32 public images" in dp["initialisation"]
    assert provenance["training"]["initialisation"] == dp["initialisation"]
    for name in ("h1", "h2"):
        first = metrics["rounds"][0]["hospitals"][name]
        last = dp["per_hospital"][name]
        assert last["round"] == 2
        per_round = first["dp_steps_this_round"]
        assert last["steps_total"] == 2 * per_round > 0  # the accountant kept round 1
        whole_run = epsilon_spent(
            [(last["noise_multiplier"], last["sample_rate"], 2 * per_round)], 1e-5
        )
        assert last["epsilon"] == pytest.approx(whole_run, rel=1e-9)
        assert first["dp_epsilon"] < last["epsilon"] <= 3.0
    # BatchNorm kept the owner's public statistics (after its pre-training) through both rounds
    model = load_checkpoint(run.out).model()
    public_model = from_arrays(run.architecture(), _public_initial(run))
    for got, want in zip(batchnorm_layers(model), batchnorm_layers(public_model), strict=True):
        assert got.running_mean is not None and want.running_mean is not None
        assert torch.equal(got.running_mean, want.running_mean)


def _public_initial(run: RunConfig) -> list[np.ndarray]:
    arrays, _ = load_arrays(
        FederatedPaths.for_checkpoint(Path(run.out)).updates / "round-000" / "global.npz"
    )
    return arrays


def test_a_hospital_refuses_to_train_once_its_budget_is_spent(tmp_path: Path) -> None:
    """Without Flower: the hospital's own function, rounds chained through its history."""
    site_dir = generate_site(tmp_path / "h", site_profile(0), count=24, seed=3)
    run = RunConfig(image_size=32, dp_epsilon=2.0, dp_public_dir=str(tmp_path))
    site = load_site(site_dir, run.architecture(), calibration_fraction=0.2, seed=0)
    torch.manual_seed(0)
    arrays = to_arrays(build_model(run.architecture()))
    config = LoopConfig(max_epochs=1, batch_size=4, augment=False, progress=False)
    dp = DPConfig(2.0)
    spent: list[tuple[float, float, int]] = []
    for _ in range(2):  # the run has 2 rounds of 1 epoch
        result = local_train(run.architecture(), arrays, site, config,
                             private=PrivateTraining(dp, 2, spent))  # fmt: skip
        assert result.privacy is not None
        spent = result.privacy.accountant_history
    assert result.privacy is not None and result.privacy.epsilon <= 2.0
    with pytest.raises(PrivacyBudgetError, match="budget is spent"):
        local_train(run.architecture(), arrays, site, config, private=PrivateTraining(dp, 2, spent))
