"""Image loading helpers of the file checks: conversion to RGB, mask statistics, readable errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.validate.files import ImageReadError, load_rgb, mask_stats, open_image, to_rgb


def test_16_bit_grey_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image, note = load_rgb(tmp_path / "deep.png")
    assert image.mode == "RGB" and "16-bit" in note
    assert np.asarray(image)[0, :, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "P", "1", "LA"])
def test_other_modes_convert_to_rgb_with_a_note(mode):
    image = Image.new("RGB", (4, 4), (200, 10, 10)).convert(mode)
    converted, note = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (4, 4)
    assert note and "RGB" in note


def test_rgb_is_left_alone():
    image = Image.new("RGB", (2, 2))
    assert to_rgb(image) == (image, None)


def test_float_image_in_unit_range():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    converted, _ = to_rgb(image)
    assert np.asarray(converted)[0, :, 1].tolist() == [0, 128, 255]


def test_mask_stats_counts_levels_and_channels():
    grey = np.zeros((4, 4), np.uint8)
    grey[0, :2] = 1
    stats = mask_stats(Image.fromarray(grey))
    assert (stats.levels, stats.nonzero_levels, stats.positive, stats.channels) == (2, 1, 2, 1)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 1, 2] = 255
    colour[2, 2, 0] = 90
    stats = mask_stats(Image.fromarray(colour))
    assert (stats.nonzero_levels, stats.positive, stats.channels) == (2, 2, 3)
    assert mask_stats(Image.new("1", (3, 3))).positive == 0


def test_unreadable_files_raise_an_error_naming_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        open_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.png: not an image"):
        open_image(tmp_path / "text.png")


def _task(row: int, path, size: tuple[int, int], mask: str = "") -> dict:
    return {"row": row, "file": str(path), "mask": mask, "label": "anomaly" if mask else "normal", "role": "train",
            "manifest_size": size}


def test_the_thread_pool_gives_one_threads_results_in_row_order(tmp_path):
    """Forced either way (the default picks one thread for these small images): the same results, row for row,
    broken files and masks included."""
    from anomaly_ov.validate.files import inspect_tasks

    rng = np.random.default_rng(0)
    tasks = []
    for i in range(24):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        mask = ""
        if i % 3 == 0:
            mask = str(tmp_path / f"{i}_mask.png")
            Image.fromarray(np.full((20 + i, 30), 255 * (i % 2), np.uint8)).save(mask)
        if i % 5 == 0:
            path.write_bytes(path.read_bytes()[:60])  # truncated
        tasks.append(_task(i, path, (30, 20 + i), mask))
    one = inspect_tasks(tasks, workers=1)
    pooled = inspect_tasks(tasks, workers=4)
    assert [r.row for r in pooled] == list(range(24))
    assert pooled == one
    assert sum(r.error is not None for r in one) == 5 and sum(r.mask is not None for r in one) == 8


def test_small_images_are_inspected_in_one_thread_large_or_unsized_ones_in_a_pool():
    from anomaly_ov.validate.files import THREADS_FROM_PIXELS, default_workers

    side = int(THREADS_FROM_PIXELS ** 0.5)
    small = [_task(i, f"{i}.png", (64, 64)) for i in range(10)]
    large = [_task(i, f"{i}.png", (1500, 1000)) for i in range(10)]
    unsized = [_task(i, f"{i}.png", (0, 0)) for i in range(10)]
    assert default_workers(small) == 1
    assert default_workers(large) > 1 and default_workers(unsized) > 1
    assert default_workers([_task(0, "a.png", (side, side))]) > 1  # the threshold itself takes the pool
    assert default_workers(small[:4] + large[:7]) > 1  # the median decides
