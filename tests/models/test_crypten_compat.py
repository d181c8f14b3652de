"""Each CrypTen compatibility patch: the failure it fixes, and that the fix works.

Run in fresh interpreters: an import failure cannot be undone inside one process.
"""

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def assert_prints_ok(code: str) -> None:
    """``code`` (ending in ``print('ok')``) runs to its end in a fresh interpreter."""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_plain_import_of_crypten_fails_on_this_torch():
    result = run_python("import crypten")
    assert result.returncode != 0
    assert "torch.onnx._internal.registration" in result.stderr


def test_load_crypten_applies_the_registration_alias():
    result = run_python(
        "from models.crypten_compat import load_crypten\n"
        "crypten = load_crypten()\n"
        "import crypten.nn.onnx_converter\n"
        "print(crypten.__version__ if hasattr(crypten, '__version__') else 'ok')"
    )
    assert result.returncode == 0, result.stderr


def test_fast_config_reads_keep_crypten_config_semantics():
    assert_prints_ok(
        "from models.crypten_compat import load_crypten\n"
        "from omegaconf import OmegaConf\n"
        "cfg = load_crypten().cfg\n"
        "plain = OmegaConf.to_container(cfg.config)\n"
        "assert cfg.encoder.precision_bits == plain['encoder']['precision_bits']\n"
        "assert cfg['mpc.provider'] == plain['mpc']['provider'] == 'TFP'\n"
        "cfg.mpc.provider = 'TTP'\n"
        "assert cfg.mpc.provider == 'TTP' and cfg.config.mpc.provider == 'TTP'\n"
        "with cfg.temp_override({'mpc.provider': 'TFP'}):\n"
        "    assert cfg.mpc.provider == 'TFP'\n"
        "assert cfg.mpc.provider == 'TTP'\n"
        "cfg.load_config(None)\n"
        "assert cfg.mpc.provider == 'TFP'\n"
        "print('ok')"
    )


def test_negative_values_open_exactly():
    code = (
        "import torch\n"
        "{load}\n"
        "from crypten.encoder import FixedPointEncoder\n"
        "encoded = torch.tensor([-14 * 65536 + 3, -65536, -5 * 65536 + 1, 14 * 65536 + 3])\n"
        "decoded = FixedPointEncoder().decode(encoded)\n"
        "assert torch.equal(decoded, (encoded.double() / 65536).float()), decoded.tolist()\n"
        "print('ok')"
    )
    unpatched = run_python(
        code.format(
            load="import models.crypten_compat as c; c._alias_onnx_registration(); import crypten"
        )
    )
    assert unpatched.returncode != 0 and "-14.99995" in unpatched.stderr  # CrypTen's bug
    assert_prints_ok(
        code.format(load="from models.crypten_compat import load_crypten; load_crypten()")
    )


def test_a_comparison_joins_fixed_point_values_only_once_re_encoded():
    assert_prints_ok(
        "import torch\n"
        "from models.crypten_compat import encoded_like, load_crypten\n"
        "crypten = load_crypten()\n"
        "crypten.init()\n"
        "x = crypten.cryptensor(torch.tensor([1.5, -2.0]))\n"
        "bits = x > 0\n"
        "raw = torch.cat([x, bits], 0).get_plain_text()\n"
        "assert raw[2] < 1e-3  # the bit at scale 1 reads as 2**-16: the failure\n"
        "joined = torch.cat([x, encoded_like(bits, x)], 0).get_plain_text()\n"
        "assert joined.tolist() == [1.5, -2.0, 1.0, 0.0], joined\n"
        "assert bits.get_plain_text().tolist() == [1.0, 0.0]  # the original is untouched\n"
        "print('ok')"
    )


def _rounds_of_multiplications(rank: int) -> dict[str, object]:
    """In a party: two products CrypTen's way and together; rounds and opened values."""
    import torch

    from models.crypten_compat import load_crypten, multiply_together

    crypten = load_crypten()
    crypten.cfg.communicator.verbose = True
    comm = crypten.communicator.get()
    torch.manual_seed(0)  # both parties: the same public test values
    x, w, u, v = torch.randn(3, 5), torch.randn(5, 4), torch.randn(6), torch.randn(6)
    ex, ew = crypten.cryptensor(x, src=0), crypten.cryptensor(w, src=1)
    eu, ev = crypten.cryptensor(u, src=0), crypten.cryptensor(v, src=1)
    comm.reset_communication_stats()
    separately = [ex.matmul(ew), eu * ev]
    rounds_separately = comm.get_communication_stats()["rounds"]
    comm.reset_communication_stats()
    together = multiply_together([("matmul", ex, ew), ("mul", eu, ev)])
    rounds_together = comm.get_communication_stats()["rounds"]
    errors = []
    for got, alone, want in zip(together, separately, (x @ w, u * v), strict=True):
        plain, plain_alone = got.get_plain_text(), alone.get_plain_text()
        errors.append(
            max(float((plain - want).abs().max()), float((plain - plain_alone).abs().max()))
        )
    refused = ""
    try:
        multiply_together([("mul", eu > 0, eu)])  # a comparison's 0/1 shares are at scale 1
    except ValueError as error:
        refused = str(error)
    return {"separately": rounds_separately, "together": rounds_together, "errors": errors,
            "refused": refused}  # fmt: skip


def test_independent_multiplications_share_one_round():
    from models.mpc import run_parties

    for result in run_parties(_rounds_of_multiplications):
        assert result["separately"] == 2 and result["together"] == 1, result
        assert max(result["errors"]) < 1e-3, result
        assert "one scale" in result["refused"]
