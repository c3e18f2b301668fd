"""Region facts on hand-made masks: merging, locations, sizes, shapes, appearance."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.instruct import regions as R


def _disc(mask: np.ndarray, cx: int, cy: int, r: int) -> None:
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = True


def test_empty_mask_has_no_regions():
    facts = R.region_facts(np.zeros((64, 64), bool))
    assert facts.count == 0 and facts.is_empty and facts.image_fraction == 0


def test_two_far_blobs_stay_two_regions_with_their_locations():
    mask = np.zeros((120, 120), bool)
    _disc(mask, 15, 15, 6)
    _disc(mask, 100, 100, 8)
    facts = R.region_facts(mask, dilate_px=3, merge_distance_px=6)
    assert facts.count == 2
    assert facts.regions[0].location == "lower right"  # the larger one first
    assert facts.regions[1].location == "upper left"
    assert all(r.shape == "round spot" for r in facts.regions)


def test_touching_and_nearby_blobs_merge():
    mask = np.zeros((100, 100), bool)
    _disc(mask, 40, 50, 6)
    _disc(mask, 52, 50, 6)  # touching
    assert R.region_facts(mask).count == 1
    near = np.zeros((100, 100), bool)
    near[40:50, 20:30] = True
    near[40:50, 40:50] = True  # 10 px gap < 2*dilate + merge distance
    assert R.region_facts(near, dilate_px=3, merge_distance_px=6).count == 1
    assert R.region_facts(near, dilate_px=0, merge_distance_px=0).count == 2


def test_thin_diagonal_line_reads_as_thin_line():
    mask = np.zeros((128, 128), bool)
    for i in range(20, 100):
        mask[i, i : i + 2] = True
    facts = R.region_facts(mask)
    assert facts.count == 1
    region = facts.regions[0]
    assert region.shape == "thin line"
    assert region.orientation == "diagonal"
    assert region.location == "center"


def test_horizontal_line_and_irregular_patch():
    mask = np.zeros((90, 90), bool)
    mask[10, 5:60] = True
    region = R.region_facts(mask).regions[0]
    assert (region.shape, region.orientation, region.location) == ("thin line", "horizontal", "top")
    ring = np.zeros((90, 90), bool)
    _disc(ring, 45, 70, 14)
    inner = np.zeros((90, 90), bool)
    _disc(inner, 45, 70, 9)
    ring &= ~inner
    ring[60:80, 45:60] = False  # an open C shape
    assert R.region_facts(ring, dilate_px=0, merge_distance_px=0).regions[0].shape == "irregular patch"


@pytest.mark.parametrize(
    ("cx", "cy", "phrase"),
    [(5, 5, "upper left"), (50, 5, "top"), (95, 5, "upper right"), (5, 50, "left"), (50, 50, "center"),
     (95, 50, "right"), (5, 95, "lower left"), (50, 95, "bottom"), (95, 95, "lower right")],
)
def test_location_grid(cx, cy, phrase):
    assert R.location_phrase(cx, cy, 100, 100) == phrase


def test_sizes_fractions_and_object_fraction():
    mask = np.zeros((100, 100), bool)
    mask[0:10, 0:10] = True  # 1 % of the image
    obj = np.zeros((100, 100), bool)
    obj[:, :50] = True
    facts = R.region_facts(mask, object_mask=obj)
    assert facts.image_fraction == pytest.approx(0.01)
    assert facts.object_fraction == pytest.approx(0.02)
    assert facts.regions[0].size == "small"
    assert R.size_word(0.001) == "tiny" and R.size_word(0.5) == "very large"


def test_appearance_darker_brighter_colour():
    image = np.full((64, 64, 3), 0.5, np.float32)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 20:30] = True
    dark = image.copy()
    dark[mask] = 0.1
    assert R.region_facts(mask, dark).regions[0].appearance == "darker"
    bright = image.copy()
    bright[mask] = 0.9
    assert R.region_facts(mask, bright).regions[0].appearance == "brighter"
    red = image.copy()
    red[mask] = (0.8, 0.45, 0.45)
    assert R.region_facts(mask, red).regions[0].appearance == "reddish"
    assert R.region_facts(mask, image).regions[0].appearance == "subtle"


def test_deterministic_and_files(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) > 0.97
    assert R.region_facts(mask) == R.region_facts(mask.copy())
    path = tmp_path / "m.png"
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)
    img = tmp_path / "i.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    expected = R.region_facts(mask, np.full((64, 64, 3), 128 / 255, np.float32))
    assert R.facts_from_files(path, img, texture=True) == expected
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        R.load_mask(tmp_path / "missing.png")


def test_foreground_estimate_object_on_background():
    image = np.full((80, 80, 3), 0.1, np.float32)
    yy, xx = np.mgrid[:80, :80]
    image[(xx - 40) ** 2 + (yy - 40) ** 2 <= 25**2] = 0.8
    fg = R.foreground_mask(image)
    assert 0.25 < fg.mean() < 0.35
    assert R.foreground_mask(image, texture=True).all()
