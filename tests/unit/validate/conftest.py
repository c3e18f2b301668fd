"""Fixtures for the validation tests: tiny images written with PIL, an MVTec-layout dataset, a manifest builder.

Great Expectations' import and context (about 4 s) are paid once per test session by ``_gx_context``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import Params, params_from_dict

SIDE = 32


@pytest.fixture(scope="session", autouse=True)
def _gx_context():
    from anomaly_ov.validate.gx import gx_context

    return gx_context()


def noise_image(path: Path, seed: int, size: tuple[int, int] = (SIDE, SIDE), mode: str = "RGB") -> Path:
    """A random RGB image (distinct per seed, so no accidental duplicates), saved in ``mode``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def mask_image(path: Path, size: tuple[int, int] = (SIDE, SIDE), value: int = 255, empty: bool = False) -> Path:
    """A binary mask with a square defect (0/``value``), or all zeros when ``empty``."""
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    if not empty:
        pixels[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path)
    return path


def make_mvtec(root: Path, categories: tuple[str, ...] = ("widget",), seed: int = 0) -> Path:
    """A clean MVTec-AD layout: per category 3 train normals, 2 test normals, 2 cracks with 0/255 masks."""
    for c_index, category in enumerate(categories):
        base = seed + 100 * c_index
        for i in range(3):
            noise_image(root / category / "train" / "good" / f"{i:03d}.png", base + i)
        for i in range(2):
            noise_image(root / category / "test" / "good" / f"{i:03d}.png", base + 10 + i)
            noise_image(root / category / "test" / "crack" / f"{i:03d}.png", base + 20 + i)
            mask_image(root / category / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def row(image_path: str, root: str, category: str = "widget", label: str = "normal", mask_path: str = "",
        role: str = "eval", source: str = "toy", split: str = "test", **extra: Any) -> dict[str, Any]:
    """One manifest row (defect_type follows the label unless given)."""
    return {
        "image_path": image_path, "root": root, "mask_path": mask_path, "source": source, "category": category,
        "split": split, "role": role, "label": label,
        "defect_type": extra.pop("defect_type", "good" if label == "normal" else "crack"),
        "modality": extra.pop("modality", "industrial"), "view": "", "group": "",
        "width": extra.pop("width", SIDE), "height": extra.pop("height", SIDE), **extra,
    }


def toy_params(*sources: dict[str, Any], **validate: Any) -> Params:
    """Params whose data.sources are ``sources`` (default: one eval source ``toy``) and validate overrides."""
    sources = sources or ({"name": "toy", "format": "mvtec", "path": "ds", "role": "eval"},)
    return params_from_dict({"data": {"sources": list(sources)}, "validate": validate})


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (``--import-mode=importlib`` forbids importing conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(SIDE=SIDE, noise_image=noise_image, mask_image=mask_image, make_mvtec=make_mvtec,
                           row=row, toy_params=toy_params)
