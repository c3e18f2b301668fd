"""The shared image-opening helper: limits checked on the header before decoding, every failure an ImageError."""

from __future__ import annotations

import io

import pytest
from hostile import (
    png_declaring,
    write_declared,
    write_empty,
    write_png,
    write_random,
    write_real_large,
    write_truncated,
)
from PIL import Image

from anomaly_ov.data import images
from anomaly_ov.data.images import ImageError, ImageTooLarge, open_image, read_header


@pytest.mark.parametrize("side", [100_000, 9_000])
def test_a_header_declaring_a_huge_image_is_too_large_and_never_decoded(tmp_path, side):
    path = write_declared(tmp_path / "bomb.png", side, side)
    for call in (read_header, open_image):
        with pytest.raises(ImageTooLarge) as caught:
            call(path, max_side=8192)
        assert str(path) in str(caught.value) and caught.value.kind == "too_large"
        assert isinstance(caught.value, ValueError)  # a bad-input error, not a crash


def test_a_real_large_png_is_refused_from_its_header(tmp_path, monkeypatch):
    path = write_real_large(tmp_path / "large.png", 15000)
    with pytest.raises(ImageTooLarge, match="225000000 pixels"):  # PIL's DecompressionBombError, caught
        open_image(path, max_side=8192)
    monkeypatch.setitem(images._limits, "pil_pixels", 0)  # PIL's guard off (also any limit a CLI test installed):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the helper's own header check still refuses it
    with pytest.raises(ImageTooLarge, match="15000 x 15000"):
        open_image(path, max_side=14999, max_pixels=10**12)


def test_limits_and_pixels(tmp_path):
    path = write_png(tmp_path / "ok.png", (60, 20))
    assert read_header(path).size == (60, 20)
    assert open_image(path, max_side=60).size == (60, 20)
    with pytest.raises(ImageTooLarge, match="60 x 20"):
        open_image(path, max_side=59)
    with pytest.raises(ImageTooLarge, match="1200 px"):
        open_image(path, max_side=100, max_pixels=1199)


@pytest.mark.parametrize(
    ("writer", "kind", "reason"),
    [
        (write_random, "unreadable", "not an image"),
        (write_empty, "unreadable", "not an image"),
        (write_truncated, "unreadable", "cannot decode"),
    ],
)
def test_broken_files_raise_an_error_naming_the_file(tmp_path, writer, kind, reason):
    path = writer(tmp_path / "bad.png")
    with pytest.raises(ImageError, match=reason) as caught:
        open_image(path)
    assert caught.value.path == str(path) and caught.value.kind == kind


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="file not found") as caught:
        open_image(tmp_path / "nope.png")
    assert caught.value.kind == "missing"
    with pytest.raises(ImageError, match="not a regular file"):
        open_image(tmp_path)


def test_bytes_and_file_objects_and_modes(tmp_path):
    buffer = io.BytesIO()
    Image.new("I;16", (8, 6), 65535).save(buffer, "PNG")
    rgb = open_image(buffer.getvalue(), name="upload")
    assert rgb.mode == "RGB" and rgb.size == (8, 6) and rgb.getpixel((0, 0)) == (255, 255, 255)
    raw = open_image(io.BytesIO(buffer.getvalue()), mode=None)
    assert raw.mode.startswith("I") and raw.load() is not None
    with pytest.raises(ImageTooLarge, match="upload"):
        open_image(png_declaring(20000, 10), name="upload")


def test_verify_catches_a_bad_crc(tmp_path):
    path = write_png(tmp_path / "crc.png", (16, 16))
    data = bytearray(path.read_bytes())
    data[29] ^= 0xFF  # inside the IHDR CRC
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="crc|corrupt|broken"):
        open_image(path, verify=True)


def test_configure_sets_the_default_and_pils_global_limit(tmp_path):
    before = dict(images._limits), Image.MAX_IMAGE_PIXELS
    try:
        images.configure(100)
        assert Image.MAX_IMAGE_PIXELS == 100 * 100
        with pytest.raises(ImageTooLarge, match="limit of 100 px"):
            read_header(write_png(tmp_path / "a.png", (101, 10)))
    finally:
        images._limits.update(before[0])
        Image.MAX_IMAGE_PIXELS = before[1]
