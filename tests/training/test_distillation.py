"""Knowledge distillation in the training loop: the student learns the teacher's outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.nets import build_model, default_architecture
from training.loop import LoopConfig, predict_logits, train


def _kl(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor) -> float:
    target = F.softmax(predict_logits(teacher, images), dim=1)
    return float(
        F.kl_div(F.log_softmax(predict_logits(student, images), 1), target, reduction="batchmean")
    )


def test_a_student_taught_by_a_teacher_alone_learns_its_outputs_not_the_labels() -> None:
    arch = default_architecture("lenet")
    torch.manual_seed(1)
    images = torch.randn(64, 1, 64, 64)
    labels = torch.randint(0, 2, (64,))
    teacher = build_model(arch).eval()
    with torch.no_grad():  # a teacher with an opinion: large logits of its own
        teacher.fc3.weight.mul_(20.0)
    config = LoopConfig(max_epochs=8, batch_size=16, lr=3e-3, augment=False, progress=False,
                        keep="last", distill_weight=1.0, distill_temperature=1.0)  # fmt: skip
    torch.manual_seed(2)
    student, control = build_model(arch), build_model(arch)
    control.load_state_dict(student.state_dict())
    before = _kl(student, teacher, images)
    empty = (torch.empty(0, 1, 64, 64), torch.empty(0, dtype=torch.long))
    train(student, (images, labels), empty, empty, config, teacher=teacher)
    train(control, (images, labels), empty, empty, config)  # the labels alone
    assert _kl(student, teacher, images) < 0.5 * before
    assert _kl(student, teacher, images) < 0.5 * _kl(control, teacher, images)
