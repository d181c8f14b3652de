"""Differential privacy (issue 17): the accountant's ε, the budget, the attack, encrypted serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import rdp_privacy_accountant

from models.checkpoint import load_checkpoint
from models.nets import Architecture, build_model
from training.bootstrap import ensure_dataset
from training.loop import LoopConfig, train
from training.privacy import (
    DPConfig,
    PrivacyBudgetError,
    batchnorm_layers,
    dp_train,
    epsilon_spent,
    plan,
    public_images,
    public_pretrain,
    set_public_batchnorm,
)
from training.privacy_audit import advantage, attack_auc, loss_attack
from training.settings import TrainSettings

REPO = Path(__file__).resolve().parents[2]
ARCH = Architecture("lenet", 32, "quad")
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def independent_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    """dp-accounting's RDP accountant (Google's implementation), same orders as opacus."""
    accountant = rdp_privacy_accountant.RdpAccountant(OPACUS_ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("noise", "rate", "steps", "delta"),
    [(1.1, 0.01, 1000, 1e-5), (4.0, 1 / 7, 14, 1e-6), (1.7, 0.05, 300, 1e-3),
     (1.2, 0.1, 100, 1e-5), (2.0, 1 / 8, 16, 1e-5)],
)  # fmt: skip
def test_opacus_epsilon_equals_dp_accounting(
    noise: float, rate: float, steps: int, delta: float
) -> None:
    ours = epsilon_spent([(noise, rate, steps)], delta)
    assert ours == pytest.approx(independent_epsilon(noise, rate, steps, delta), rel=1e-4)


def test_below_noise_one_dp_accounting_drops_orders_and_is_only_more_conservative() -> None:
    """For noise < 1 dp-accounting's fractional-order series does not converge at small
    orders and it leaves those orders out: its ε is then slightly larger, never smaller."""
    ours = epsilon_spent([(0.8, 0.1, 50)], 1e-5)
    theirs = independent_epsilon(0.8, 0.1, 50, 1e-5)
    assert ours <= theirs <= ours * 1.01


def _first_bn_mean(model: torch.nn.Module) -> torch.Tensor:
    mean = batchnorm_layers(model)[0].running_mean
    assert mean is not None
    return mean


def _data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return public_images(ARCH, count, seed)


@pytest.mark.slow
def test_dp_training_reports_the_accountant_epsilon_and_keeps_it_across_rounds() -> None:
    """Two "rounds" of DP training on the same data: the accountant's history carries over,
    and ε after both equals the independent ε for all steps; the planned noise keeps the
    whole run within the target and the budget stops a third round."""
    images, labels = _data(40, 11)
    dp = DPConfig(epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    config = LoopConfig(max_epochs=1, batch_size=8, augment=False, progress=False)
    run_plan = plan(dp, dataset_size=40, batch_size=8, epochs=2)  # 2 rounds x 1 epoch
    torch.manual_seed(0)
    model = build_model(ARCH)
    set_public_batchnorm(model, _data(16, 99)[0])
    running_mean = _first_bn_mean(model).clone()
    empty = (images[:0], labels[:0])
    spent: list[tuple[float, float, int]] = []
    for _ in range(2):
        result = dp_train(model, (images, labels), empty, empty, config, dp,
                          spent=spent, dp_plan=run_plan)  # fmt: skip
        spent = result.accountant_history
    steps = sum(n for _, _, n in spent)
    assert steps == 2 * run_plan.steps_per_epoch == run_plan.steps
    all_at_once = [(run_plan.noise_multiplier, run_plan.sample_rate, steps)]
    assert result.epsilon == pytest.approx(epsilon_spent(all_at_once, 1e-5), rel=1e-12)
    assert result.epsilon == pytest.approx(
        independent_epsilon(*all_at_once[0], 1e-5), rel=1e-2
    )  # noise < 1 here: dp-accounting drops a few orders (see above)
    assert 0.9 * dp.epsilon < result.epsilon <= dp.epsilon
    assert torch.equal(_first_bn_mean(model), running_mean)  # frozen: no private statistics
    third = dp_train(model, (images, labels), empty, empty, config, dp,
                     spent=spent, dp_plan=run_plan)  # fmt: skip
    assert third.stopped_early and third.epsilon <= dp.epsilon
    with pytest.raises(PrivacyBudgetError, match="privacy budget too small"):
        plan(dp, dataset_size=40, batch_size=8, epochs=1, spent=third.accountant_history)


def test_an_impossible_budget_is_a_clear_error() -> None:
    with pytest.raises(PrivacyBudgetError, match="does not allow even one step"):
        plan(DPConfig(epsilon=1e-4), dataset_size=200, batch_size=32, epochs=1)
    with pytest.raises(PrivacyBudgetError, match="allows at most"):
        plan(DPConfig(epsilon=0.3), dataset_size=200, batch_size=32, epochs=60)
    with pytest.raises(ValueError, match="dp-delta"):
        DPConfig(epsilon=1.0, delta=1.5)


def test_cli_refuses_an_impossible_budget_and_writes_nothing(tmp_path: Path) -> None:
    root = ensure_dataset(tmp_path / "mri", seed=3, train=12, eval=4)
    out = tmp_path / "out" / "lenet.pth"
    result = subprocess.run(
        [sys.executable, "-m", "training",
         "--source-dir-train", str(root / "train"), "--source-dir-eval", str(root / "eval"),
         "--training-run-out", str(out), "--max-epochs", "1", "--batch-size", "4",
         "--num-threads", "1", "--progress", "False", "--dp-epsilon", "0.0001"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not allow even one step" in result.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_public_pretraining_trains_on_public_images_and_needs_a_dp_run() -> None:
    """--dp-public-pretrain-epochs: the network learns from the public images (weights and
    BatchNorm statistics move, the same way for the same seed) and is left in eval mode; the
    flag only prepares DP fine-tuning, so it needs --dp-epsilon."""
    public = _data(32, 5)
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model(ARCH)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        history = public_pretrain(model, public, 2, seed=0)
        assert len(history.epochs) == 2 and not model.training
        assert not torch.equal(model.state_dict()["fc1.weight"], start["fc1.weight"])
        assert not torch.equal(_first_bn_mean(model), start["bn1.running_mean"])
        models.append(model.state_dict())
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    with pytest.raises(ValueError, match="needs --dp-epsilon"):
        TrainSettings(source_dir_train="a", source_dir_eval="b", dp_public_pretrain_epochs=2)
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainSettings(
            source_dir_train="a", source_dir_eval="b", dp_epsilon=3, dp_public_pretrain_epochs=-1
        )


def test_attack_figures_on_known_scores() -> None:
    members = np.array([3.0, 2.0, 1.0])
    non_members = np.array([0.0, 1.5, -1.0])
    assert attack_auc(members, non_members) == pytest.approx(8 / 9)
    assert advantage(members, non_members) == pytest.approx(2 / 3)  # threshold 2: 2/3 - 0
    same = np.zeros(4)
    assert attack_auc(same, same) == 0.5 and advantage(same, same) == 0.0


@pytest.mark.slow
def test_the_attack_gains_less_against_the_dp_model() -> None:
    """Seeded, small: 48 members trained to overfit; the loss attack's advantage on the
    non-DP model is clearly larger than on the DP model (ε = 1) trained the same way."""
    members, non_members = _data(48, 21), _data(48, 22)
    public = _data(32, 99)[0]
    empty = (members[0][:0], members[1][:0])
    config = LoopConfig(max_epochs=30, batch_size=8, lr=3e-3, augment=False, progress=False)
    torch.manual_seed(1)
    plain = build_model(ARCH)
    set_public_batchnorm(plain, public)
    train(plain, members, empty, empty, config)
    torch.manual_seed(1)
    private = build_model(ARCH)
    set_public_batchnorm(private, public)
    dp_config = LoopConfig(max_epochs=20, batch_size=16, lr=3e-3, augment=False, progress=False)
    result = dp_train(private, members, empty, empty, dp_config, DPConfig(1.0, 1e-5, 1.0))
    assert result.epsilon <= 1.0
    plain_attack = loss_attack(plain, members, non_members, resamples=200)
    private_attack = loss_attack(private, members, non_members, resamples=200)
    assert plain_attack.auc > 0.6
    assert private_attack.advantage < plain_attack.advantage - 0.15


@pytest.mark.slow
def test_cli_dp_run_records_provenance_and_serves_encrypted(tmp_path: Path) -> None:
    """A DP checkpoint from ``python -m training --dp-epsilon 3``: its provenance carries the
    accountant's ε (equal to dp-accounting's), and the encrypted model agrees with it."""
    from training.encrypted_validation import validate_encrypted

    root = ensure_dataset(tmp_path / "mri", seed=4, train=24, eval=16)
    out = tmp_path / "out" / "lenet.pth"
    result = subprocess.run(
        [sys.executable, "-m", "training",
         "--source-dir-train", str(root / "train"), "--source-dir-eval", str(root / "eval"),
         "--training-run-out", str(out), "--max-epochs", "2", "--batch-size", "4",
         "--num-threads", "1", "--progress", "False", "--image-size", "32",
         "--dp-epsilon", "3", "--dp-delta", "1e-4", "--max-grad-norm", "1.5",
         "--dp-public-images", "32", "--dp-public-pretrain-epochs", "1",
         "--bootstrap-resamples", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    provenance = json.loads((out.parent / "lenet.provenance.json").read_text())
    dp = provenance["differential_privacy"]
    assert dp["accountant"] == "rdp" and dp["sampling"] == "poisson"
    assert dp["delta"] == 1e-4 and dp["max_grad_norm"] == 1.5 and dp["target_epsilon"] == 3
    ((noise, rate, steps),) = dp["accountant_history"]
    assert noise == dp["noise_multiplier"] and steps == dp["steps"] > 0
    assert dp["epsilon"] == pytest.approx(epsilon_spent([(noise, rate, steps)], 1e-4), rel=1e-12)
    # noise < 1 here: dp-accounting leaves out a few non-converging orders (see above)
    assert dp["epsilon"] == pytest.approx(independent_epsilon(noise, rate, steps, 1e-4), rel=1e-3)
    assert dp["epsilon"] <= 3
    assert "public" in dp["batchnorm"]
    assert (
        "pre-trained without DP for 1 epochs on 32 public generated images" in dp["initialisation"]
    )
    checkpoint = load_checkpoint(out)
    net = checkpoint.model()
    assert not torch.equal(_first_bn_mean(net), torch.zeros(6))  # public statistics, not reset
    validation = validate_encrypted(out, root / "eval", limit=16)
    assert validation.argmax_agreement_pct >= 99.0
    # the audit CLI: members from the provenance's fit split, LiRA with the attacker's images
    attacker = ensure_dataset(tmp_path / "attacker", seed=9, train=16, eval=2)
    audit = subprocess.run(
        [sys.executable, "-m", "training.privacy_audit", "--checkpoint", str(out),
         "--non-members", str(root / "eval"), "--shadow-dir", str(attacker / "train"),
         "--shadow-models", "2", "--bootstrap-resamples", "50", "--num-threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr[-3000:]
    report = json.loads((out.parent / "lenet.privacy.json").read_text())
    for name in ("loss_threshold", "lira_offline"):
        attack = report["attacks"][name]
        assert attack["members"] == 20 and attack["non_members"] == 16  # 24 - 15 % calibration
        assert 0.0 <= attack["auc"] <= 1.0 and 0.0 <= attack["advantage"] <= 1.0
