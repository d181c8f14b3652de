"""A real two-process encrypted forward: argmax agrees with plaintext, and only party 0 learns it."""

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.mpc import run_parties
from models.nets import default_architecture
from tests.models.test_nets import trained_like


def _party(rank, checkpoint_path, images):
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier

    classifier = EncryptedClassifier.for_party(load_crypten(), rank, checkpoint_path)
    own_images = images if rank == 0 else None  # party 1 never uses the images
    return classifier.logit_differences(own_images, len(images)), classifier.card


@pytest.mark.parametrize("provider", ["TFP", pytest.param("TTP", marks=pytest.mark.slow)])
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


def _cost(rank, checkpoint_path):
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier, measure_forward

    return measure_forward(
        EncryptedClassifier.for_party(load_crypten(), rank, checkpoint_path), 2, 2
    )


@pytest.mark.slow
def test_measure_forward_reports_each_party_its_rounds_and_bytes(tmp_path):
    arch = default_architecture("lenet")
    path = tmp_path / "lenet.pth"
    save_checkpoint(path, trained_like(arch), arch, temperature=1.0)
    image_side, model_side = run_parties(_cost, str(path))
    for cost in (image_side, model_side):
        assert len(cost.all_seconds) == 2  # the warm-up pass is not counted
        assert cost.rounds > 0 and cost.bytes > 0
    # one joint protocol: both parties take part in every round
    assert image_side.rounds == model_side.rounds


def _protocol_steps(rank):
    from models.crypten_compat import load_crypten

    crypten = load_crypten()
    comm = crypten.communicator.get()
    crypten.cfg.communicator.verbose = True
    comm.reset_communication_stats()
    torch.manual_seed(3)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    x = crypten.cryptensor(a if rank == 0 else torch.empty(4, 5), src=0)
    y = crypten.cryptensor(b if rank == 1 else torch.empty(4, 5), src=1)
    revealed = {
        "mul": (x * y).get_plain_text(),  # Beaver: one all-reduce of two tensors
        "relu": x.relu().get_plain_text(dst=0),  # comparisons: XOR all-reduces, to party 0
        "max": x.max(dim=1)[0].get_plain_text(dst=1),  # many rounds, to party 1
        "matmul": x.matmul(y.t()).get_plain_text(),
    }
    # plain lists: a tensor would go back through a file descriptor of an exiting process
    plain = {k: None if v is None else v.tolist() for k, v in revealed.items()}
    return plain, comm.get_communication_stats()["rounds"], hasattr(comm, "peer_link")


@pytest.mark.slow
def test_the_peer_link_computes_what_gloo_computes_in_the_same_rounds():
    torch.manual_seed(3)
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    expected = {"mul": a * b, "relu": a.relu(), "max": a.max(dim=1)[0], "matmul": a @ b.t()}
    runs = {link: run_parties(_protocol_steps, peer_link=link) for link in (True, False)}
    for link, ((plain0, rounds0, link0), (plain1, rounds1, link1)) in runs.items():
        assert link0 == link1 == link
        assert rounds0 == rounds1 > 0
        assert plain0["relu"] is not None and plain1["relu"] is None  # revealed to party 0 only
        assert plain0["max"] is None and plain1["max"] is not None  # ... and to party 1 only
        for name, want in expected.items():
            got = plain0[name] if plain0[name] is not None else plain1[name]
            torch.testing.assert_close(torch.tensor(got), want, atol=2e-2, rtol=0)
    # CrypTen's statistics count every step as before: the benchmarks' rounds stay comparable
    assert runs[True][0][1] == runs[False][0][1]


def _two_forwards(rank, checkpoint_path, images, comparison):
    from models.crypten_compat import load_crypten
    from models.encrypted import relu_comparison
    from models.inference import EncryptedClassifier

    crypten = load_crypten()
    comm = crypten.communicator.get()
    classifier = EncryptedClassifier.for_party(crypten, rank, checkpoint_path)
    own_images = images if rank == 0 else None
    crypten.cfg.communicator.verbose = True
    with relu_comparison(comparison):
        first = classifier.logit_differences(own_images, len(images))  # deals as it goes
        classifier.prepare(len(images))  # the offline phase of the next forward
        comm.reset_communication_stats()
        second = classifier.logit_differences(own_images, len(images))
    stats = comm.get_communication_stats()
    left = sum(len(dealt) for dealt in comm.constant_operands.ready.values())
    return first, second, stats["rounds"], stats["bytes"], left


def test_encrypted_resnet18_with_the_sign_gate_agrees_with_plaintext_and_deals_ahead(tmp_path):
    from models.nets import Architecture

    arch = Architecture("resnet18", 32, "relu")
    model = trained_like(arch)
    path = tmp_path / "resnet18.pth"
    save_checkpoint(path, model, arch, temperature=1.0)
    torch.manual_seed(2)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits = model(images)
    plain = logits[:, 1] - logits[:, 0]
    runs = {
        comparison: run_parties(_two_forwards, str(path), images, comparison)
        for comparison in ("gate", "crypten")
    }
    for comparison, ((first, second, _, _, left), _) in runs.items():
        for revealed in (first, second):
            assert torch.equal(revealed > 0, plain > 0), comparison
            assert (revealed - plain).abs().max() < 0.05, comparison
        assert left == 0  # every triple dealt ahead was taken
    gate_rounds, crypten_rounds = runs["gate"][0][2], runs["crypten"][0][2]
    # 17 ReLU layers: 2 rounds each by the gate instead of CrypTen's circuit
    assert gate_rounds + 17 * 5 <= crypten_rounds
    assert runs["gate"][0][3] < runs["crypten"][0][3]  # fewer online bytes too
