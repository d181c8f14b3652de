"""A real two-process encrypted forward: argmax agrees with plaintext, and only party 0 learns it."""

import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from models.mpc import run_parties
from models.nets import default_architecture
from tests.models.test_nets import trained_like


def _party(rank, checkpoint_path, images):
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier

    crypten = load_crypten()
    if rank == 1:
        classifier = EncryptedClassifier(
            crypten, 1, load_checkpoint(checkpoint_path), file_sha256(checkpoint_path)
        )
        return classifier.logit_differences(None, len(images)), classifier.card
    classifier = EncryptedClassifier(crypten, 0)
    return classifier.logit_differences(images, len(images)), classifier.card


@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_encrypted_lenet_agrees_with_plaintext(tmp_path, provider):
    arch = default_architecture("lenet")
    model = trained_like(arch)
    path = tmp_path / "lenet.pth"
    sha = save_checkpoint(path, model, arch, temperature=1.5)
    torch.manual_seed(1)
    images = torch.randn(6, 1, 64, 64)
    (revealed, card0), (nothing, card1) = run_parties(_party, str(path), images, provider=provider)
    with torch.no_grad():
        logits = model(images)
    plain = (logits[:, 1] - logits[:, 0]) / 1.5
    assert nothing is None  # party 1 learns no output
    assert card0 == card1 and card0.model_sha256 == sha  # party 0 knows the model only by its card
    assert torch.equal(revealed > 0, plain > 0)
    assert (revealed - plain).abs().max() < 1e-2
