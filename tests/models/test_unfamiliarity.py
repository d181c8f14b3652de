"""The unfamiliarity bit: plaintext and encrypted programs agree, and only the bit is opened."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.encrypted import Prediction, fold, forward
from models.encrypted_unfamiliarity import (
    block_sizes,
    classify,
    fold_detector,
    plain_features,
    unfamiliarity_margins,
)
from models.mpc import run_parties
from models.nets import default_architecture
from models.unfamiliarity import fit, threshold_for_rate
from tests.models.test_nets import trained_like

ARCH = default_architecture("lenet")


def familiar_images(n: int, seed: int) -> torch.Tensor:
    """Smooth blobs, standardised: the 'training distribution' of these tests."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bicubic")
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) / images.std(dim=(1, 2, 3), keepdim=True)


def unfamiliar_images(n: int, seed: int) -> torch.Tensor:
    """White noise, standardised: nothing like the blobs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 64, 64, generator=generator).clamp(-6, 6)


def fitted(features: str = "conv", method: str = "mahalanobis"):
    model = trained_like(ARCH)
    params = fold(model, ARCH, 1.3)
    train = familiar_images(200, 0)
    labels = (train[:, 0, 32, 32] > 0).long()
    detector = fit(method, features, plain_features(ARCH, params, train, features), labels)
    calibration = plain_features(ARCH, params, familiar_images(100, 1), features)
    threshold = threshold_for_rate(detector.scores(calibration), 0.05)
    return model, params, detector.with_threshold(threshold, 0.05)


@pytest.mark.parametrize("features", ["conv", "conv_laplacian", "penultimate"])
@pytest.mark.parametrize("method", ["mahalanobis", "pooled_mahalanobis", "feature_norm"])
def test_plaintext_program_flags_what_the_detector_flags(features, method):
    _, params, detector = fitted(features, method)
    images = torch.cat([familiar_images(20, 7), unfamiliar_images(20, 8)])
    sizes = block_sizes(ARCH, features)
    difference, flags = classify(ARCH, params, fold_detector(detector, sizes), features, images)
    assert torch.allclose(difference, forward(ARCH, params, images))
    expected = detector.flags(plain_features(ARCH, params, images, features))
    assert torch.equal(flags.bool(), expected)


def test_the_detector_separates_noise_from_blobs():
    _, params, detector = fitted()
    familiar = detector.flags(plain_features(ARCH, params, familiar_images(100, 3), "conv"))
    unfamiliar = detector.flags(plain_features(ARCH, params, unfamiliar_images(100, 4), "conv"))
    assert familiar.float().mean() <= 0.15
    assert unfamiliar.float().mean() >= 0.95


def test_checkpoint_carries_detector_and_operating_point(tmp_path):
    model, _, detector = fitted()
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, ARCH, 1.3, detector=detector, decision_threshold=0.3)
    loaded = load_checkpoint(path)
    assert loaded.decision_threshold == 0.3
    assert loaded.detector is not None and loaded.detector.threshold == detector.threshold
    assert torch.equal(loaded.detector.whitening, detector.whitening)
    with pytest.raises(ValueError):
        save_checkpoint(path, model, ARCH, 1.3, decision_threshold=1.0)
    payload = torch.load(path, weights_only=True)
    payload["detector"]["method"] = "astrology"
    torch.save(payload, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_screening_threshold_moves_the_label_and_keeps_the_probability():
    # P(tumor) = sigmoid(-0.5) = 0.378: healthy at 0.5, tumour at a 0.3 screening threshold
    at_half = Prediction.from_logit_difference(-0.5)
    screening = Prediction.from_logit_difference(-0.5, threshold=0.3)
    assert at_half.label == 0 and at_half.confidence == pytest.approx(0.622, abs=1e-3)
    assert screening.label == 1 and screening.confidence == pytest.approx(0.378, abs=1e-3)
    assert Prediction.from_logit_difference(3.0, 0.3, unfamiliar=True).unfamiliar


def _party(rank, checkpoint_path, images):
    """Run predict, recording every MPCTensor opening; also open the margins (test only)."""
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier

    crypten = load_crypten()
    classifier = EncryptedClassifier.for_party(crypten, rank, checkpoint_path)
    own_images = images if rank == 0 else None
    opened = []
    original = crypten.mpc.MPCTensor.get_plain_text

    def recording(self, dst=None):
        plain = original(self, dst=dst)
        opened.append((tuple(self.shape), dst, None if plain is None else plain.tolist()))
        return plain

    from models import sign_gate

    masked = []
    open_masked = sign_gate.open_masked

    def recording_masked(comm, share):
        y = open_masked(comm, share)
        masked.append(y.tolist())
        return y

    crypten.mpc.MPCTensor.get_plain_text = recording
    sign_gate.open_masked = recording_masked
    try:
        predictions = classifier.predict(own_images, len(images))
    finally:
        crypten.mpc.MPCTensor.get_plain_text = original
        sign_gate.open_masked = open_masked
    # The score itself, opened here only to compare it with plaintext; production never does.
    from models.encrypted import share_images
    from models.encrypted_unfamiliarity import feature_blocks

    share = share_images(crypten, own_images, tuple(images.shape), rank)
    assert classifier.card.detector is not None
    blocks, _ = feature_blocks(
        classifier.card.architecture,
        classifier.encrypted_model,
        share,
        classifier.card.detector.features,
    )
    assert classifier.encrypted_detector is not None
    margins = unfamiliarity_margins(classifier.encrypted_detector, blocks).get_plain_text(dst=0)
    # rounds: the bit adds only its comparison's (every multiplication shares LeNet's rounds)
    from models.inference import measure_forward

    rounds = {
        "classifier": measure_forward(classifier, len(images), 1).rounds,
        "with_bit": measure_forward(classifier, len(images), 1, unfamiliarity=True).rounds,
    }
    from models.sign_gate import positive

    comm = crypten.communicator.get()
    comm.reset_communication_stats()
    _ = positive(crypten.cryptensor(torch.zeros(len(images), 1)))  # keys already dealt
    rounds["comparison"] = comm.get_communication_stats()["rounds"]
    # plain lists: tensors in the result queue would need this process alive to unpickle
    return (
        predictions,
        opened + [("masked", masked)],
        None if margins is None else margins.tolist(),
        classifier.card,
        rounds,
    )


@pytest.mark.parametrize(
    "features", [pytest.param("conv", marks=pytest.mark.slow), "conv_laplacian"]
)
def test_encrypted_unfamiliarity_agrees_and_opens_only_the_documented_bits(tmp_path, features):
    model, params, detector = fitted(features)
    path = tmp_path / "lenet.pth"
    save_checkpoint(path, model, ARCH, 1.3, detector=detector, decision_threshold=0.4)
    images = torch.cat([familiar_images(3, 11), unfamiliar_images(3, 12)])
    results = run_parties(_party, str(path), images)
    (predictions, opened, margin_list, card, rounds), (nothing, opened1, none_margins, card1, _) = (
        results
    )
    margins = torch.tensor(margin_list)
    sizes = block_sizes(ARCH, features)
    plain_margins = unfamiliarity_margins(
        fold_detector(detector, sizes),
        list(torch.split(plain_features(ARCH, params, images, features), sizes, dim=1)),
    )
    # the encrypted score agrees with the plaintext score
    assert margins.shape == plain_margins.shape
    assert (margins - plain_margins).abs().max() < 1e-2 * max(1.0, plain_margins.abs().max())
    plain_flags = detector.flags(plain_features(ARCH, params, images, features))
    assert [p.unfamiliar for p in predictions] == plain_flags.tolist()
    assert plain_flags[3:].all() and not plain_flags[:3].any()
    # the comparison's one opening, to both: the negated margin plus the dealer's secret
    # mask (uniform), one 64-bit word per image and class centre; the margins' encodings
    # are not among them
    (_, masked), (_, masked1) = opened.pop(), opened1.pop()
    assert len(masked) == 1 and masked == masked1 and len(masked[0]) == margins.numel() == 12
    encodings = [round(-m * 2**16) for m in margins.flatten().tolist()]
    assert not set(masked[0]) & set(encodings)
    # one opening, to party 0: per image the logit difference and the flag, nothing else
    assert [(shape, dst) for shape, dst, _ in opened] == [((6, 2), 0)]
    both = torch.tensor(opened[0][2])
    with torch.no_grad():
        plain_logits = model(images)
    expected_d = (plain_logits[:, 1] - plain_logits[:, 0]) / 1.3
    assert (both[:, 0] - expected_d).abs().max() < 1e-2 * max(1.0, expected_d.abs().max())
    bits = both[:, 1]
    assert set(bits.round().tolist()) <= {0.0, 1.0}
    assert (bits - bits.round()).abs().max() < 1e-3
    # party 1 takes part in the same opening and learns nothing from it
    assert [(shape, dst) for shape, dst, _ in opened1] == [((6, 2), 0)]
    assert all(plain is None for _, _, plain in opened1)
    assert nothing is None and none_margins is None
    assert card == card1 and card.detector is not None and card.decision_threshold == 0.4
    assert rounds["with_bit"] == rounds["classifier"] + rounds["comparison"], rounds
    # the revealed difference gives the screening label and its calibrated probability
    with torch.no_grad():
        logits = model(images)
    for prediction, d in zip(predictions, (logits[:, 1] - logits[:, 0]) / 1.3, strict=True):
        expected = Prediction.from_logit_difference(float(d), 0.4)
        assert prediction.label == expected.label
        assert prediction.confidence == pytest.approx(expected.confidence, abs=1e-3)
