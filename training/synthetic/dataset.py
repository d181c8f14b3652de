"""Write generated slices in the Kaggle "Brain MRI Images for Brain Tumor Detection" layout.

``<root>/<split>/yes/*.jpg`` (tumour) and ``<root>/<split>/no/*.jpg`` (healthy), mostly
JPEG with some PNG, some RGB, varied sizes and file-name extensions, plus a
``<root>/dataset.json`` manifest (generator version, seeds, counts, difficulty) that
training copies into the model's provenance record.

Determinism: image ``i`` of class ``c`` in split ``s`` is drawn from
``numpy.random.default_rng([seed, SPLIT_STREAMS[s], c, i])``, so train and eval use
different random streams for one ``--seed``, and the same seed gives the same bytes
(for the same numpy/scipy/Pillow versions).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.synthetic.anatomy import TEMPLATE_NAME
from training.synthetic.difficulty import Difficulty
from training.synthetic.render import render_slice

GENERATOR_VERSION = "mri-synth-1.1"
MANIFEST_NAME = "dataset.json"
SPLIT_STREAMS = {"train": 1, "eval": 2}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int
    yes_fraction: float = 0.5

    @property
    def yes_count(self) -> int:
        return int(round(self.count * self.yes_fraction))


def encode_image(pixels: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """Encode like a scraped data set: ~10 % PNG, ~30 % RGB, JPEG quality 70-95."""
    image = Image.fromarray(pixels, mode="L")
    if rng.random() < 0.3:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if rng.random() < 0.1:
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return buffer.getvalue(), str(rng.choice([".jpg", ".jpg", ".jpeg", ".JPG"]))


def write_split(
    out_dir: Path, spec: SplitSpec, seed: int, difficulty: Difficulty, progress: bool = False
) -> dict[str, Any]:
    """Generate one split into ``out_dir/{yes,no}``; returns its manifest entry (JSON)."""
    stream = SPLIT_STREAMS[spec.name]
    counts = {"yes": spec.yes_count, "no": spec.count - spec.yes_count}
    for folder in counts:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(label, i) for label in ("yes", "no") for i in range(counts[label])]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"generate {spec.name}", unit="img")
    for label, i in jobs:
        rng = np.random.default_rng([seed, stream, int(label == "yes"), i])
        rendered = render_slice(label == "yes", difficulty, rng)
        data, suffix = encode_image(rendered.pixels, rng)
        prefix = "Y" if label == "yes" else "N"
        (out_dir / label / f"{prefix}{i + 1}{suffix}").write_bytes(data)
    return {"seed": [seed, stream], "count": spec.count, "yes": counts["yes"], "no": counts["no"]}


def generate_dataset(
    root: Path,
    *,
    seed: int = 0,
    train: int = 600,
    eval: int = 200,
    difficulty: Difficulty | None = None,
    difficulty_name: str = "standard",
    progress: bool = False,
) -> Path:
    """Write ``root/train`` and ``root/eval`` plus ``root/dataset.json``; returns ``root``."""
    difficulty = difficulty or Difficulty()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clear_generated(root)
    splits: dict[str, dict[str, Any]] = {}
    manifest: dict[str, Any] = {
        "generator": "training.synthetic",
        "generator_version": GENERATOR_VERSION,
        "anatomy": TEMPLATE_NAME,
        "seed": seed,
        "complete": False,  # written first, so an interrupted run is recognisable as ours
        "splits": splits,
        "difficulty_name": difficulty_name,
        "difficulty": difficulty.to_dict(),
        "layout": "Kaggle brain-tumor-detection: <split>/yes, <split>/no",
    }
    manifest_path = root / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    for spec in (SplitSpec("train", train), SplitSpec("eval", eval)):
        log.info("generating %s: %d images", spec.name, spec.count)
        splits[spec.name] = write_split(root / spec.name, spec, seed, difficulty, progress)
    manifest["complete"] = True
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def clear_generated(root: Path) -> None:
    """Remove a previous generation's images; never touch a folder the generator did not write."""
    manifest_path = root / MANIFEST_NAME
    images = [
        path
        for split in ("train", "eval")
        for label in ("yes", "no")
        if (root / split / label).is_dir()
        for path in (root / split / label).iterdir()
        if path.is_file()
    ]
    if images and not manifest_path.is_file():
        raise FileExistsError(
            f"{root} holds images but no {MANIFEST_NAME}: not a generated data set, not overwriting"
        )
    for path in images:
        path.unlink()
    manifest_path.unlink(missing_ok=True)


def find_manifest(data_dir: Path) -> dict[str, Any] | None:
    """The generator manifest for a split folder (looked up in it and its parent), if any."""
    for folder in (Path(data_dir), Path(data_dir).parent):
        path = folder / MANIFEST_NAME
        if path.is_file():
            try:
                manifest: dict[str, Any] = json.loads(path.read_text())
                return manifest
            except (OSError, json.JSONDecodeError):
                return None
    return None
