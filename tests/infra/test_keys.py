"""``python -m infra.keys``: a key file only its owner can read, and never overwritten."""

import stat
import subprocess
import sys

from infra.messaging import public_key


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.keys", *args], capture_output=True, text=True, timeout=60
    )


def test_new_key_is_private_to_its_owner_and_prints_only_the_public_key(tmp_path):
    path = tmp_path / "keys" / "clinic.key"
    made = run("new", str(path))
    assert made.returncode == 0, made.stderr
    private = path.read_text().strip()
    assert made.stdout.strip() == public_key(private)
    assert private not in made.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run("public", str(path)).stdout.strip() == public_key(private)
    again = run("new", str(path))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert path.read_text().strip() == private
