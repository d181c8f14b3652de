"""``python -m infra.keys new FILE``: an organisation's Ed25519 key pair for signed messages.

Writes the private key (hex) to FILE with mode 0600, refusing to overwrite one, and prints
only the public key, which the peer organisations are configured with. Load the private key
into the service's environment (``export CRYPTO_DOCTOR_CLINIC_KEY=$(cat FILE)``); it never
goes on a command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infra.messaging import generate_key, public_key


def write_new_key(path: Path) -> str:
    """Create ``path`` (0600) holding a new private key; return the public key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private + "\n")
    return public_key(private)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.keys", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="write a new private key to FILE, print its public key")
    new.add_argument("file", type=Path)
    show = sub.add_parser("public", help="print the public key of the private key in FILE")
    show.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "new":
            print(write_new_key(args.file))
        else:
            print(public_key(args.file.read_text().strip()))
    except FileExistsError:
        parser.exit(1, f"{args.file} exists: refusing to overwrite a key\n")
    except (OSError, ValueError) as exc:
        parser.exit(1, f"{args.file}: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
