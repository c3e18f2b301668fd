"""MVTec AD reader: rows, masks, categories filter and layout errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_ov.data.manifest import check_schema
from anomaly_ov.data.sources import LayoutError, read_source


def make_mvtec(root: Path, image, category: str = "bottle") -> Path:
    cdir = root / category
    image(cdir / "train" / "good" / "000.png", size=(16, 12))
    image(cdir / "train" / "good" / "001.png", size=(16, 12))
    image(cdir / "test" / "good" / "000.png")
    image(cdir / "test" / "scratch" / "000.png")
    image(cdir / "ground_truth" / "scratch" / "000_mask.png", mask=True)
    return cdir


def test_reads_rows_with_masks_sizes_and_role(tmp_path, image, source):
    root = tmp_path / "data" / "mvtec"
    make_mvtec(root, image)
    (root / "license.txt").write_text("not a category")
    frame = read_source(source("mvtec", "data/mvtec", role="eval"), tmp_path)
    assert check_schema(frame) == []
    assert len(frame) == 4
    assert set(frame["root"]) == {"data/mvtec"}
    assert set(frame["role"]) == {"eval"}
    anomaly = frame[frame["label"] == "anomaly"].iloc[0]
    assert anomaly["image_path"] == "bottle/test/scratch/000.png"
    assert anomaly["mask_path"] == "bottle/ground_truth/scratch/000_mask.png"
    assert anomaly["defect_type"] == "scratch" and anomaly["split"] == "test"
    train = frame[frame["split"] == "train"]
    assert list(train["width"]) == [16, 16] and list(train["height"]) == [12, 12]
    assert set(train["defect_type"]) == {"good"} and set(train["mask_path"]) == {""}


def test_absolute_root_outside_workspace(tmp_path, image, source):
    root = tmp_path / "elsewhere"
    make_mvtec(root, image)
    frame = read_source(source("mvtec", root), tmp_path / "workspace")
    assert set(frame["root"]) == {root.resolve().as_posix()}


def test_categories_filter_and_unknown_category(tmp_path, image, source):
    make_mvtec(tmp_path / "m", image, "bottle")
    make_mvtec(tmp_path / "m", image, "cable")
    frame = read_source(source("mvtec", "m", categories=["cable"]), tmp_path)
    assert set(frame["category"]) == {"cable"}
    with pytest.raises(LayoutError, match=r"unknown category \['tyre'\]; available: \['bottle', 'cable'\]"):
        read_source(source("mvtec", "m", categories=["tyre"]), tmp_path)


def test_anomaly_without_mask_names_expected_mask(tmp_path, image, source):
    cdir = make_mvtec(tmp_path / "m", image)
    image(cdir / "test" / "scratch" / "001.png")
    with pytest.raises(LayoutError, match=r"001.png: anomalous test image has no mask; expected .*001_mask.png"):
        read_source(source("mvtec", "m"), tmp_path)


def test_mask_without_image(tmp_path, image, source):
    cdir = make_mvtec(tmp_path / "m", image)
    image(cdir / "ground_truth" / "scratch" / "007_mask.png", mask=True)
    with pytest.raises(LayoutError, match=r"007_mask.png: mask has no image"):
        read_source(source("mvtec", "m"), tmp_path)


def test_masks_for_a_missing_defect_folder(tmp_path, image, source):
    cdir = make_mvtec(tmp_path / "m", image)
    image(cdir / "ground_truth" / "hole" / "000_mask.png", mask=True)
    with pytest.raises(LayoutError, match=r"masks for defect 'hole' but no folder"):
        read_source(source("mvtec", "m"), tmp_path)


def test_empty_category_missing_root_and_bad_train_folder(tmp_path, image, source):
    (tmp_path / "m" / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"category 'empty' has no images"):
        read_source(source("mvtec", "m"), tmp_path)
    with pytest.raises(LayoutError, match=r"MVTec dataset root .* not found; expected layout"):
        read_source(source("mvtec", "nowhere"), tmp_path)
    cdir = make_mvtec(tmp_path / "n", image)
    image(cdir / "train" / "broken" / "000.png")
    with pytest.raises(LayoutError, match=r"train split holds only 'good' images"):
        read_source(source("mvtec", "n"), tmp_path)
    with pytest.raises(LayoutError, match=r"no categories found"):
        (tmp_path / "blank").mkdir()
        read_source(source("mvtec", "blank"), tmp_path)


def test_unreadable_image_is_reported(tmp_path, image, source):
    cdir = make_mvtec(tmp_path / "m", image)
    (cdir / "train" / "good" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(LayoutError, match=r"bad.png: not an image"):
        read_source(source("mvtec", "m"), tmp_path)
