"""Helpers for the reader tests: tiny images and masks written where a layout wants them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import SourceParams


def write_image(path: Path, size: tuple[int, int] = (12, 10), mask: bool = False) -> Path:
    """Write a small PNG/JPEG (``size`` = width, height); masks are single-channel 0/255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if mask:
        array = np.zeros((height, width), np.uint8)
        array[: height // 2, : width // 2] = 255
    else:
        array = np.full((height, width, 3), 120, np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def image() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def source() -> Callable[..., SourceParams]:
    def make(fmt: str, path: str | Path, role: str = "train", **kwargs) -> SourceParams:
        return SourceParams(name=f"test_{fmt}", format=fmt, path=str(path), role=role, **kwargs)

    return make
