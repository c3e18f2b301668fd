"""benchmarks/zoomed_views.py: the magnified quadrants and the four ways each image is scored."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("zoomed_views", REPO / "benchmarks/zoomed_views.py")
zv = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(zv)


def quadrant_image(values: tuple[float, float, float, float], size: int = 16) -> torch.Tensor:
    """[1,3,size,size] whose four quadrants (row by row) are constant ``values``."""
    image = torch.empty(1, 3, size, size)
    half = size // 2
    for i, v in enumerate(values):
        y, x = divmod(i, 2)
        image[..., y * half:(y + 1) * half, x * half:(x + 1) * half] = v
    return image


def test_each_tile_is_its_quadrant_magnified_to_the_tower_size() -> None:
    image = quadrant_image((0.0, 1.0, 2.0, 3.0))
    tiles = zv.zoomed_quadrants(image, 2)
    assert tiles.shape == (1, 4, 3, 16, 16)
    for k, value in enumerate((0.0, 1.0, 2.0, 3.0)):
        inner = tiles[0, k, :, 4:12, 4:12]  # away from the seams, where bicubic mixes the neighbours
        assert torch.allclose(inner, torch.full_like(inner, value), atol=1e-5)


def test_three_times_cuts_nine_tiles_and_zoom_one_is_the_image() -> None:
    image = torch.randn(2, 3, 12, 12)
    assert zv.zoomed_quadrants(image, 3).shape == (2, 9, 3, 12, 12)
    assert torch.equal(zv.zoomed_quadrants(image, 1)[:, 0], image)
    with pytest.raises(ValueError, match="zoom must be >= 1"):
        zv.zoomed_quadrants(image, 0)


class MeanExpert:
    """Stands in for the model: a crop's feature is its mean pixel, an image's score the mean of its crops'."""

    def tower_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return pixels.mean(dim=(1, 2, 3)), []

    def _run_expert(self, features: torch.Tensor, levels: list[torch.Tensor], counts: list[int]) -> SimpleNamespace:
        return SimpleNamespace(scores=torch.stack([part.mean() for part in torch.split(features, counts)]))


def test_the_four_ways_group_the_crops_of_each_image() -> None:
    images = torch.cat([quadrant_image((0.0, 1.0, 2.0, 3.0)), quadrant_image((4.0, 4.0, 4.0, 8.0))])
    out = zv.score_ways(MeanExpert(), images, 2)
    assert list(out) == list(zv.WAYS)
    tiles = zv.zoomed_quadrants(images, 2).mean(dim=(2, 3, 4))  # [2, 4]: each tile's mean
    assert out["base"] == pytest.approx([1.5, 5.0])
    assert out["zoom_max"] == pytest.approx(tiles.max(1).values.tolist())
    assert out["zoom_mean"] == pytest.approx(tiles.mean(1).tolist())
    # the base view and its four tiles as one image's five crops
    assert out["anyres"] == pytest.approx(((tiles.sum(1) + torch.tensor([1.5, 5.0])) / 5).tolist())
    assert out["zoom_max"][1] > out["zoom_mean"][1]  # the bright quadrant decides the max
