"""Kept weight masks: products stay exact, later forwards open only the input's mask."""

from __future__ import annotations

import pytest
import torch

from models.mpc import run_parties


def _party(rank, x_plain, w_plain):
    from models.crypten_compat import load_crypten, multiply_together
    from models.weight_masks import mark_constant

    crypten = load_crypten()
    comm = crypten.communicator.get()
    crypten.cfg.communicator.verbose = True
    x = crypten.cryptensor(x_plain if rank == 0 else torch.empty(x_plain.shape), src=0)
    w = crypten.cryptensor(w_plain if rank == 1 else torch.empty(w_plain.shape), src=1)
    kernel = crypten.cryptensor(torch.ones(2, 1, 3, 3) if rank == 1 else torch.empty(2, 1, 3, 3), src=1)  # fmt: skip
    mark_constant(crypten, [w, kernel])
    image = crypten.cryptensor(torch.ones(1, 1, 5, 5) if rank == 0 else torch.empty(1, 1, 5, 5), src=0)  # fmt: skip
    results, sent = [], []
    for _ in range(3):
        comm.reset_communication_stats()
        product = x.matmul(w.t())
        together, _ = multiply_together([("matmul", x, w.t()), ("mul", x, x)])
        conv = image.conv2d(kernel, padding=1)
        sent.append(comm.get_communication_stats()["bytes"])
        results.append([t.get_plain_text().tolist() for t in (product, together, conv)])
    # a weight changed in place (on both parties, as every MPC step is) gets a new mask
    ones = w._tensor.encoder.encode(torch.ones(w_plain.shape))
    w._tensor.share.add_(ones if rank == 1 else torch.zeros_like(ones))
    changed = x.matmul(w.t()).get_plain_text().tolist()
    return results, sent, changed


@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_products_with_kept_weight_masks_are_exact_and_open_less(provider):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 40, generator=generator)
    w = torch.randn(30, 40, generator=generator)
    (results, sent, changed), _ = run_parties(_party, x, w, provider=provider)[:2]
    expected = x @ w.t()
    conv = torch.nn.functional.conv2d(torch.ones(1, 1, 5, 5), torch.ones(2, 1, 3, 3), padding=1)
    for product, together, conv_out in results:
        assert torch.allclose(torch.tensor(product), expected, atol=2e-3)
        assert torch.allclose(torch.tensor(together), expected, atol=2e-3)
        assert torch.allclose(torch.tensor(conv_out), conv, atol=2e-3)
    assert torch.allclose(torch.tensor(changed), x @ (w + 1).t(), atol=2e-3)
    if provider == "TFP":
        # W - b (30 x 40 numbers, for two views) and the kernel's mask are opened once
        assert sent[1] == sent[2] < sent[0]
        assert sent[0] - sent[1] >= 2 * 30 * 40 * 8
    else:  # the dealer keeps no state: every product opens its weight's mask
        assert sent[0] == sent[1] == sent[2]
