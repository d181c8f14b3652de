"""Plaintext behaviour of the networks, the folding into the MPC program, checkpoints."""

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.encrypted import Prediction, fold, forward, parameter_shapes
from models.nets import Architecture, build_model, default_architecture


def trained_like(arch: Architecture) -> torch.nn.Module:
    """A network with non-trivial batch-norm statistics, as after training."""
    torch.manual_seed(0)
    model = build_model(arch)
    batch_norms = [
        m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    for module in batch_norms:
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.data.uniform_(0.5, 1.5)
        module.bias.data.uniform_(-0.2, 0.2)
    if arch.backbone == "resnet18-mpc":
        # Nine layers of squares stay in range only with the statistics of the data they see,
        # as after training: measure them on a batch (random statistics overflow float32).
        for module in batch_norms:
            module.momentum = None  # cumulative average over the passes below
            module.reset_running_stats()
        model.train()
        with torch.no_grad():
            model(torch.randn(32, 1, arch.image_size, arch.image_size))
    return model.eval()


@pytest.mark.parametrize("backbone", ["lenet", "resnet18", "resnet18-mpc"])
def test_plaintext_forward_gives_two_logits_per_image(backbone):
    model = trained_like(default_architecture(backbone))
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 2)


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("lenet", 64), ("resnet18", 64), ("resnet18-mpc", 64), ("resnet18-mpc", 128)],
)
def test_folded_program_computes_the_scaled_logit_difference(backbone, size):
    arch = Architecture(backbone, size, default_architecture(backbone).activation)
    model = trained_like(arch)
    images = torch.randn(4, 1, size, size)
    with torch.no_grad():
        logits = model(images)
        program = forward(arch, fold(model, arch, temperature=1.7), images).view(-1)
    expected = (logits[:, 1] - logits[:, 0]) / 1.7
    torch.testing.assert_close(program, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("relu_stages", [1, 2])
def test_folded_hybrid_resnet_computes_the_scaled_logit_difference(relu_stages):
    arch = Architecture("resnet18-mpc", 64, "quad", relu_stages)
    model = trained_like(arch)
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [b.activation for layer in stages for b in layer] == (
        ["quad"] * (8 - 2 * relu_stages) + ["relu"] * (2 * relu_stages)
    )
    images = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        logits = model(images)
        program = forward(arch, fold(model, arch), images).view(-1)
    torch.testing.assert_close(program, logits[:, 1] - logits[:, 0], atol=1e-4, rtol=1e-4)


def test_fold_refuses_a_network_whose_activations_are_not_the_announced_ones():
    # same tensors, another program: the activations must be the card's
    hybrid = build_model(Architecture("resnet18-mpc", 64, "quad", 2)).eval()
    with pytest.raises(ValueError, match="does not match"):
        fold(hybrid, default_architecture("resnet18-mpc"))
    lenet = build_model(Architecture("lenet", 64, "relu")).eval()
    with pytest.raises(ValueError, match="does not match"):
        fold(lenet, default_architecture("lenet"))


def test_unfold_gives_the_lenet_whose_fold_is_the_parameters():
    from models.encrypted import unfold_lenet

    arch = default_architecture("lenet")
    params = fold(trained_like(arch), arch, temperature=1.7)
    model = unfold_lenet(params, arch)
    for name, tensor in fold(model, arch).items():
        torch.testing.assert_close(tensor, params[name], rtol=1e-5, atol=1e-6, msg=name)
    images = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits[:, 0], torch.zeros(3))
    torch.testing.assert_close(
        logits[:, 1], forward(arch, params, images).view(-1), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError):
        unfold_lenet(params, default_architecture("resnet18"))


def test_parameter_shapes_need_only_the_public_architecture():
    arch = default_architecture("lenet")
    assert dict(parameter_shapes(arch)) == {
        k: v.shape for k, v in fold(trained_like(arch), arch).items()
    }


def test_fold_refuses_a_model_that_is_not_the_announced_architecture():
    lenet = trained_like(default_architecture("lenet"))
    with pytest.raises(ValueError, match="LeNet does not match the announced Architecture"):
        fold(lenet, default_architecture("resnet18"))


def test_fold_refuses_a_relu_resnet_announced_as_the_mpc_resnet():
    # same parameter names and shapes, different program: the card must say which one runs
    resnet = build_model(default_architecture("resnet18")).eval()
    with pytest.raises(ValueError, match="ResNet18 does not match"):
        fold(resnet, default_architecture("resnet18-mpc"))


def test_prediction_from_logit_difference_is_label_and_calibrated_confidence():
    assert Prediction.from_logit_difference(0.0).confidence == pytest.approx(0.5)
    tumour = Prediction.from_logit_difference(2.0)
    healthy = Prediction.from_logit_difference(-2.0)
    assert (tumour.label, healthy.label) == (1, 0)
    assert tumour.confidence == pytest.approx(healthy.confidence) == pytest.approx(0.8808, abs=1e-4)


def test_checkpoint_round_trip_and_refusal_of_foreign_files(tmp_path):
    arch = Architecture("lenet", 48, "relu")
    model = trained_like(arch)
    save_checkpoint(tmp_path / "m.pth", model, arch, temperature=1.3)
    loaded = load_checkpoint(tmp_path / "m.pth")
    assert (loaded.architecture, loaded.temperature) == (arch, pytest.approx(1.3))
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(loaded.model()(x), model(x))
    torch.save({"something": "else"}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "foreign.pth")


def test_architecture_validation():
    with pytest.raises(ValueError):
        Architecture("vgg")
    with pytest.raises(ValueError):
        Architecture("resnet18", 64, "quad")
    assert default_architecture("resnet18-mpc").activation == "quad"
    with pytest.raises(ValueError):
        Architecture("lenet", 50)
    with pytest.raises(ValueError, match="relu_stages"):
        Architecture("resnet18-mpc", 64, "quad", 5)
    with pytest.raises(ValueError, match="relu_stages"):
        Architecture("lenet", 64, "quad", 1)
    with pytest.raises(ValueError, match="relu_stages"):
        Architecture("resnet18-mpc", 64, "relu", 1)


def test_benchmark_checkpoint_builds_the_hybrid_resnet_it_is_named_after(tmp_path):
    from models.checkpoint import benchmark_checkpoint

    path, weights = benchmark_checkpoint(tmp_path, "resnet18-mpc+relu1", tmp_path, 32)
    assert weights == "random init"
    assert load_checkpoint(path).architecture == Architecture("resnet18-mpc", 32, "quad", 1)
    # a trained file of another program under that name is not used
    save_checkpoint(
        tmp_path / "resnet18-mpc+relu1.pth",
        trained_like(default_architecture("resnet18-mpc")),
        default_architecture("resnet18-mpc"),
        1.0,
    )
    _, weights = benchmark_checkpoint(tmp_path, "resnet18-mpc+relu1", tmp_path, 64)
    assert weights == "random init"
