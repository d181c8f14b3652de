"""ResNet18's encrypted fine-tuning: features computed once and kept shared, then DP steps of
the last layer whose choice of cases stays party 0's. It is the plaintext step, it learns,
and party 1 sees only the noisy sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.encrypted import fold, penultimate
from models.encrypted_training import (
    DPStep,
    head_names,
    head_per_image_scaled_gradients,
    plaintext_head_step,
)
from models.mpc import run_parties
from models.nets import Architecture, build_model

#: a small ResNet18-MPC (32 px: the same program, a few seconds under MPC)
ARCH = Architecture("resnet18-mpc", image_size=32, activation="quad")


def images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 8, 8, generator=generator)
    x = F.interpolate(coarse, size=(32, 32), mode="bicubic")
    return (x - x.mean()) / x.std()


def fresh_resnet() -> dict[str, torch.Tensor]:
    """A fresh ResNet18-MPC's folded parameters, batch-norm statistics measured on blobs."""
    torch.manual_seed(0)
    model = build_model(ARCH)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(images(64, 9))
    return fold(model.eval(), ARCH)


def learnable_labels(params, x: torch.Tensor) -> torch.Tensor:
    """Labels a linear layer on the features can learn: one side of their first direction."""
    with torch.no_grad():
        features = penultimate(ARCH, params, x)
    centred = features - features.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    score = centred @ direction
    return (score > score.median()).float()


def head_loss(params, features: torch.Tensor, labels: torch.Tensor) -> float:
    w, b = (params[name] for name in head_names(ARCH))
    difference = (features @ w.t() + b).view(-1)
    return float(F.binary_cross_entropy_with_logits(difference, labels))


def test_the_closed_form_per_image_gradients_are_autograds_for_the_chosen_cases_only():
    params = fresh_resnet()
    x = images(6, 1)
    labels = learnable_labels(params, x)
    chosen = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        features = penultimate(ARCH, params, x)
    got = head_per_image_scaled_gradients(
        ARCH, params, features, chosen.view(-1, 1), (chosen * labels).view(-1, 1), 4.0
    )
    assert got.shape == (6, features.shape[1] + 1)
    for i in range(6):
        tracked = {k: params[k].clone().requires_grad_(True) for k in head_names(ARCH)}
        w, b = tracked.values()
        loss = F.binary_cross_entropy_with_logits(
            (features[i] @ w.t() + b).view(-1), labels[i : i + 1]
        )
        want = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [w, b])]) * 4.0 * chosen[i]
        torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)


def _party(rank: int, params, x, chosen_steps, labels, lr: float, dp: DPStep):
    """Features once, then one head step per ``chosen_steps`` entry, recording every opening
    and every object party 1 (or 0) receives on the control channel."""
    from models.crypten_compat import load_crypten
    from models.encrypted_training import encrypted_head_step, features_once

    crypten = load_crypten()
    comm = crypten.communicator.get()
    opened, received = [], []
    open_value, broadcast = crypten.mpc.MPCTensor.get_plain_text, comm.broadcast_obj

    def recording(self, dst=None):
        plain = open_value(self, dst=dst)
        if plain is not None:
            opened.append(tuple(plain.shape))
        return plain

    def spying_broadcast(obj, src, group=None):
        out = broadcast(obj, src, group)
        if src != rank:
            received.append(out)
        return out

    crypten.mpc.MPCTensor.get_plain_text, comm.broadcast_obj = recording, spying_broadcast
    mine = params if rank == 1 else None
    history = []
    try:
        features = features_once(crypten, rank, ARCH, mine, x if rank == 0 else None, len(x), 4)
        for chosen in chosen_steps:
            mine = encrypted_head_step(
                crypten, rank, ARCH, mine, features, chosen if rank == 0 else None,
                labels if rank == 0 else None, lr, dp, mean_over=float(chosen.sum()),
            )  # fmt: skip
            history.append(
                None if mine is None else {k: mine[k].tolist() for k in head_names(ARCH)}
            )
    finally:
        crypten.mpc.MPCTensor.get_plain_text, comm.broadcast_obj = open_value, broadcast
    # for the check only, after the recording: the features against plaintext
    plain_features = features.get_plain_text()
    return history, opened, received, plain_features.tolist()


def test_one_encrypted_head_step_is_the_plaintext_step_and_party_1_sees_only_the_sum():
    params = fresh_resnet()
    x = images(8, 2)
    labels = learnable_labels(params, x)
    chosen = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    quiet = DPStep(clip=3.0, noise_multiplier=0.0)  # feature norms 34-51: clipped, kept
    (_, opened0, to0, features), (history, opened1, to1, _) = run_parties(
        _party, params, x, [chosen], labels, 0.5, quiet
    )  # fmt: skip
    with torch.no_grad():
        plain = penultimate(ARCH, params, x)
    torch.testing.assert_close(torch.tensor(features), plain, atol=0.02, rtol=0.02)
    expected = plaintext_head_step(ARCH, params, plain, chosen, labels, 0.5, 3.0, 5.0)
    for name in head_names(ARCH):
        step = torch.tensor(history[0][name]) - params[name]
        want = expected[name] - params[name]
        error = float((step - want).abs().max() / want.abs().max())
        assert error < 0.02, (name, error)
    # one opening, to party 1: the noisy clipped sum of the last layer's 513 parameters;
    # nothing on the control channel (the choice of cases and their labels stay shared)
    assert opened1 == [(plain.shape[1] + 1,)] and opened0 == []
    assert to1 == [] and to0 == []


@pytest.mark.slow
def test_the_last_layer_learns_over_20_encrypted_steps():
    params = fresh_resnet()
    x = images(12, 3)
    labels = learnable_labels(params, x)
    everyone = [torch.ones(12, dtype=torch.bool)] * 20
    quiet = DPStep(clip=10.0, noise_multiplier=0.0)
    _, (history, _, _, _) = run_parties(_party, params, x, everyone, labels, 2.0, quiet)
    with torch.no_grad():
        features = penultimate(ARCH, params, x)
    losses = [head_loss(params, features, labels)]
    losses += [head_loss({k: torch.tensor(v) for k, v in h.items()}, features, labels)
               for h in history]  # fmt: skip
    assert losses[-1] < 0.7 * losses[0], losses
    plain = params
    for _ in range(20):
        plain = plaintext_head_step(ARCH, plain, features, everyone[0], labels, 2.0, 10.0, 12.0)
    assert abs(losses[-1] - head_loss(plain, features, labels)) < 0.05 * losses[0], losses
