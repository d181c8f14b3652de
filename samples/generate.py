"""Regenerate the sample scans: ``.venv/bin/python samples/generate.py`` (same bytes every time).

Each sample is one slice of the project's offline generator (``training.synthetic``) drawn from
the generator's own random stream for that file name (``default_rng([seed, split, class, i])``
with seed 0, the eval split), saved as a grayscale JPEG so the files stay small.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from training.synthetic.dataset import SPLIT_STREAMS  # noqa: E402  (needs the path above)
from training.synthetic.difficulty import Difficulty  # noqa: E402
from training.synthetic.render import render_slice  # noqa: E402

SEED = 0
#: file name -> (tumour, index i of the generator's eval split: Y22 is the 22nd "yes" image)
SAMPLES = {"Y22.jpg": (True, 21), "N3.jpg": (False, 2)}


def sample_bytes(tumour: bool, index: int) -> bytes:
    """The slice the generator draws as image ``index`` of its eval split, as a JPEG."""
    rng = np.random.default_rng([SEED, SPLIT_STREAMS["eval"], int(tumour), index])
    pixels = render_slice(tumour, Difficulty(), rng).pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    for name, (tumour, index) in SAMPLES.items():
        data = sample_bytes(tumour, index)
        (HERE / name).write_bytes(data)
        print(f"{name}: {'tumour' if tumour else 'healthy'}, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
