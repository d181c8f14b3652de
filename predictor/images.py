"""Party 0's private image store: patients' files never leave this folder except to a
doctor the clinic serves, and never reach party 1.

An upload is written under ``incoming/`` with a random name, then renamed to its case's id
once the case row is committed; the patient's 202 goes out only after the rename.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}
_CONTENT_TYPES = {ext: ctype for ctype, ext in _EXTENSIONS.items()}
_CASE_ID = re.compile(r"[0-9a-f]{32}")


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "images"
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def stage(self, data: bytes, content_type: str) -> Path:
        """Write an upload durably under a temporary name (before its case exists)."""
        path = self.incoming / (secrets.token_hex(16) + _EXTENSIONS[content_type])
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def commit(self, staged: Path, case_id: str) -> Path:
        """Give a staged upload its case's name (atomic rename)."""
        final = self.root / (case_id + staged.suffix)
        staged.replace(final)
        return final

    def discard_staged(self) -> int:
        """Remove uploads that never got their case's name (party 0 died mid-upload); only
        safe before the patient API starts. Returns how many were removed."""
        removed = 0
        for path in self.incoming.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def find(self, case_id: str) -> tuple[Path, str] | None:
        """The stored file and its content type, or None."""
        if not _CASE_ID.fullmatch(case_id):
            return None
        for ext, content_type in _CONTENT_TYPES.items():
            path = self.root / (case_id + ext)
            if path.exists():
                return path, content_type
        return None

    def delete(self, case_id: str) -> bool:
        """Remove a case's stored file; True if there was one."""
        found = self.find(case_id)
        if found is None:
            return False
        found[0].unlink(missing_ok=True)
        return True
