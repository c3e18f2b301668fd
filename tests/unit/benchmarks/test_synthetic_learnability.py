"""benchmarks/synthetic_learnability.py: both detectors give a map of the image, and the scores are computed per
consecutive block of images (one category each), the map's maximum ranking the images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("synthetic_learnability", REPO / "benchmarks/synthetic_learnability.py")
sl = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sl)


def test_the_tower_detector_is_the_tiny_tower_with_a_map_on_its_token_grid() -> None:
    from anomaly_ov.model.presets import TINY_VISION

    net = sl.tower_detector(32)
    assert net.tower.config.num_hidden_layers == TINY_VISION["num_hidden_layers"]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 1, 4, 4)  # patch 8
    assert sl.cnn()(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)


class _Oracle(torch.nn.Module):
    """A 'detector' whose map is the mask itself, read off the image's first channel, at half resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x[:, :1], 2)


def test_scores_are_per_category_block_and_rank_images_by_the_map_maximum() -> None:
    y = torch.zeros(8, 1, 8, 8)
    y[0, 0, 2:4, 2:4] = 1  # category 1: one anomaly, three normals
    y[4, 0, 4:6, 4:6] = 1  # category 2: the same (both on the half-resolution grid, so upsampling keeps them exact)
    x = y.repeat(1, 3, 1, 1)
    perfect = sl.scores(_Oracle(), x, y, per_category=4)
    assert perfect == [(pytest.approx(1.0), pytest.approx(1.0))] * 2
    # the anomaly's map is flat in category 2: its image ranks with the normals (AUROC 0.5), its pixels below none
    x[4] = 0
    flat = sl.scores(_Oracle(), x, y, per_category=4)
    assert flat[0] == (pytest.approx(1.0), pytest.approx(1.0)) and flat[1] == (pytest.approx(0.5), pytest.approx(0.5))
