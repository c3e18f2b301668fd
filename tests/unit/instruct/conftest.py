"""A small hand-made workspace for the instruct tests: images + masks on disk and the manifest rows naming them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import Params, params_from_dict
from anomaly_ov.data.manifest import from_rows

SIZE = 64


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator, base: tuple[int, int, int]) -> np.ndarray:
    noise = rng.integers(-6, 7, size=(SIZE, SIZE, 3))
    return np.clip(np.array(base)[None, None, :] + noise, 0, 255).astype(np.uint8)


#: (name, mask painter) for the anomalies: each returns a boolean mask with known facts.
def _spot_upper_left() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[4:12, 4:12] = True
    return m


def _two_spots() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[4:10, 4:10] = True
    m[52:60, 50:58] = True
    return m


def _diagonal_line() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    for i in range(12, 52):
        m[i, i] = True
    return m


def _bottom_blob() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    m[50:60, 26:38] = True
    return m


ANOMALIES = [
    ("tile", "crack", _diagonal_line),
    ("tile", "stain", _spot_upper_left),
    ("pill", "color", _two_spots),
    ("pill", "scratch_head", _bottom_blob),
    ("pill", "mystery_defect", _spot_upper_left),
    ("tile", "hole", _two_spots),
]


def make_workspace(root: Path, normals_per_category: int = 4, with_3d: bool = True) -> list[dict]:
    """Write images/masks under ``root/data/raw/hand`` and return manifest rows (train and eval roles)."""
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    base = root / "data/raw/hand"
    common = {"root": "data/raw/hand", "source": "hand", "width": SIZE, "height": SIZE, "modality": "industrial"}
    for role, categories in (("train", ("tile", "pill")), ("eval", ("pcb",))):
        for category in categories:
            for i in range(normals_per_category):
                rel = f"{category}/{role}/good/{i:03d}.png"
                _save(base / rel, _image(rng, (120, 120, 120)))
                rows.append(common | {"image_path": rel, "category": category, "split": "test", "role": role,
                                      "label": "normal", "defect_type": "good"})
    for i, (category, defect, painter) in enumerate(ANOMALIES):
        for role, cat in (("train", category), ("eval", "pcb")):
            mask = painter()
            image = _image(rng, (120, 120, 120))
            image[mask] = (30, 30, 30)
            rel = f"{cat}/{role}/{defect}/{i:03d}.png"
            mrel = f"{cat}/{role}/ground_truth/{defect}/{i:03d}_mask.png"
            _save(base / rel, image)
            _save(base / mrel, (mask * 255).astype(np.uint8))
            rows.append(common | {"image_path": rel, "mask_path": mrel, "category": cat, "split": "test",
                                  "role": role, "label": "anomaly", "defect_type": defect})
    if with_3d:
        for obj, label in (("obj0", "anomaly"), ("obj1", "normal")):
            for view in range(3):
                rel = f"cylinder/{obj}/view{view}.png"
                image = _image(rng, (90, 140, 90))
                row = common | {"image_path": rel, "category": "cylinder", "split": "test", "role": "train",
                                "label": "normal", "defect_type": "good", "modality": "3d",
                                "view": str(view), "group": obj}
                if label == "anomaly" and view != 1:
                    mask = _bottom_blob()
                    image[mask] = (20, 20, 20)
                    mrel = f"cylinder/{obj}/view{view}_mask.png"
                    _save(base / mrel, (mask * 255).astype(np.uint8))
                    row |= {"label": "anomaly", "defect_type": "dent", "mask_path": mrel}
                _save(base / rel, image)
                rows.append(row)
    return rows


@pytest.fixture
def workspace(tmp_path: Path):
    """(workspace, manifest frame, params) for the hand-made set."""
    frame = from_rows(make_workspace(tmp_path))
    params: Params = params_from_dict({"instruct": {"seed": 3}})
    return tmp_path, frame, params


@pytest.fixture(scope="session")
def tiny_processor():
    """The tiny preset's real processor (trained BPE tokenizer, 128-px image processor)."""
    from anomaly_ov.model.presets import build_processor
    from anomaly_ov.model.tokenizer import train_tokenizer

    tok = train_tokenizer(["Yes, there is a scratch on the left.", "No, the object looks normal."] * 5)
    return build_processor(Params(), tok)
