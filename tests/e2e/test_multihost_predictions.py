"""Two hosts with a real delay between them give the same predictions as loopback.

Two network namespaces joined by a veth pair (``scripts/twohosts.py``) stand for the patient
side's and the model owner's data centres, 20 ms apart at 500 Mbit/s (the delay line of
``scripts/bench_multihost.py``). Both parties join as the predictor's do
(``models.mpc.init_party``, over the peer link) and classify the same images with the
MPC-designed ResNet and with the ReLU ResNet18 (whose ReLUs the sign gate compares); the
answers must match those of two parties on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.mpc import run_parties
from models.nets import Architecture
from scripts.twohosts import ADDR, TwoHosts
from tests.models.test_nets import trained_like

ROOT = Path(__file__).resolve().parents[2]
PORT = 29700
IMAGES = 4


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"]).returncode != 0:
        return "needs ip netns (Debian: iproute2)"
    if not shutil.which("nft") and not shutil.which("tc"):
        return "needs tc netem or nft for the delay line"
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]


def _images(size: int) -> torch.Tensor:
    return torch.randn(IMAGES, 1, size, size, generator=torch.Generator().manual_seed(5))


def _classify(rank: int, checkpoint: str) -> list[float] | None:
    """One party's side: party 0 gets the revealed logit differences, party 1 None."""
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier

    classifier = EncryptedClassifier.for_party(load_crypten(), rank, checkpoint)
    images = _images(classifier.image_shape[-1]) if rank == 0 else None
    revealed = classifier.logit_differences(images, IMAGES)
    return None if revealed is None else revealed.tolist()


def _party_main() -> None:
    """Inside a namespace: ``RANK MASTER_ADDR MASTER_PORT CHECKPOINT``; prints party 0's answer."""
    from models.mpc import PartyConfig, init_party

    rank, master_addr, port, checkpoint = sys.argv[1:5]
    init_party(PartyConfig(rank=int(rank), master_port=int(port), master_addr=master_addr))
    import crypten

    try:
        print(json.dumps(_classify(int(rank), checkpoint)))
    finally:
        crypten.uninit()


def _two_hosts(hosts: TwoHosts, checkpoint: Path) -> list[float]:
    code = "from tests.e2e.test_multihost_predictions import _party_main; _party_main()"
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                hosts.ns[rank],
                sys.executable,
                "-c",
                code,
                str(rank),
                ADDR[0],
                str(PORT),
                str(checkpoint),
            ],
            cwd=ROOT,
            env={**os.environ, "GLOO_SOCKET_IFNAME": hosts.dev[rank]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert outs[1] is None  # the model owner learns no answer
    return outs[0]


@pytest.mark.parametrize(
    "arch",
    [
        Architecture("resnet18-mpc", 64, "quad"),
        Architecture("resnet18", 64, "relu"),  # its ReLUs by the sign gate
    ],
    ids=["resnet18-mpc", "resnet18"],
)
def test_two_hosts_20ms_apart_predict_what_loopback_predicts(tmp_path, arch):
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, trained_like(arch), arch, temperature=1.0)
    loopback, _ = run_parties(_classify, str(checkpoint))
    hosts = TwoHosts()
    try:
        hosts.open()
        hosts.set_rtt(20.0, bandwidth_mbit=500)
        assert hosts.ping_ms() >= 19.0  # the delay is really there
        remote = _two_hosts(hosts, checkpoint)
    finally:
        hosts.close()
    with torch.no_grad():
        logits = trained_like(arch)(_images(64))
    plain = (logits[:, 1] - logits[:, 0]).tolist()
    assert [d > 0 for d in remote] == [d > 0 for d in loopback] == [d > 0 for d in plain]
    torch.testing.assert_close(torch.tensor(remote), torch.tensor(loopback), atol=5e-2, rtol=0)
