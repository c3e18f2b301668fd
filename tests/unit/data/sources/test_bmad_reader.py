"""BMAD reader: both layouts (pixel-level with img/label folders, image-level without), errors that name paths."""

from __future__ import annotations

import pytest

from anomaly_ov.data.sources import LayoutError, read_source
from anomaly_ov.data.sources.bmad import read_bmad


def _pixel_level(root, image):
    cat = root / "BraTS2021"
    image(cat / "train/good/img/a.png")
    image(cat / "train/good/img/b.png")
    image(cat / "valid/good/img/c.png")
    image(cat / "valid/Ungood/img/d.png")
    image(cat / "valid/Ungood/label/d.png", mask=True)
    image(cat / "test/good/img/e.png")
    image(cat / "test/Ungood/img/f.png")
    image(cat / "test/Ungood/label/f.png", mask=True)


def _image_level(root, image):
    cat = root / "chest"
    image(cat / "train/good/x1.png")
    image(cat / "valid/good/x2.png")
    image(cat / "valid/Ungood/x3.png")
    image(cat / "test/good/x4.png")
    image(cat / "test/Ungood/x5.png")
    image(cat / "test/Ungood/x6.png")


def test_pixel_level_layout(tmp_path, image, source):
    _pixel_level(tmp_path / "bmad", image)
    frame = read_bmad(source("bmad", "bmad", role="eval"), tmp_path)
    assert len(frame) == 6
    assert set(frame["modality"]) == {"medical"} and set(frame["role"]) == {"eval"}
    assert sorted(frame["split"].unique()) == ["test", "train", "valid"]
    anomalies = frame[frame["label"] == "anomaly"].sort_values("image_path")
    assert list(anomalies["mask_path"]) == ["BraTS2021/test/Ungood/label/f.png", "BraTS2021/valid/Ungood/label/d.png"]
    assert set(anomalies["defect_type"]) == {"lesion"}
    assert (frame.loc[frame["label"] == "normal", "mask_path"] == "").all()
    assert set(frame["root"]) == {"bmad"} and set(frame["width"]) == {12}


def test_image_level_layout_and_registry_dispatch(tmp_path, image, source):
    _image_level(tmp_path / "bmad", image)
    frame = read_source(source("bmad", "bmad"), tmp_path)
    assert len(frame) == 6
    assert (frame["label"] == "anomaly").sum() == 3
    assert (frame["mask_path"] == "").all()


def test_mixed_layouts_and_category_filter(tmp_path, image, source):
    _pixel_level(tmp_path / "bmad", image)
    _image_level(tmp_path / "bmad", image)
    assert len(read_bmad(source("bmad", "bmad"), tmp_path)) == 12
    assert set(read_bmad(source("bmad", "bmad", categories=["chest"]), tmp_path)["category"]) == {"chest"}
    with pytest.raises(LayoutError, match="unknown category"):
        read_bmad(source("bmad", "bmad", categories=["knee"]), tmp_path)


def test_missing_mask_names_the_image(tmp_path, image, source):
    _pixel_level(tmp_path / "bmad", image)
    (tmp_path / "bmad/BraTS2021/test/Ungood/label/f.png").unlink()
    with pytest.raises(LayoutError, match="f.png: abnormal image without a mask"):
        read_bmad(source("bmad", "bmad"), tmp_path)


def test_abnormal_training_images_are_refused(tmp_path, image, source):
    _image_level(tmp_path / "bmad", image)
    image(tmp_path / "bmad/chest/train/Ungood/bad.png")
    with pytest.raises(LayoutError, match="training splits hold only 'good'"):
        read_bmad(source("bmad", "bmad"), tmp_path)


def test_missing_root(tmp_path, source):
    with pytest.raises(LayoutError, match="not found"):
        read_bmad(source("bmad", "nowhere"), tmp_path)
