"""meta.json reader: items, image-level anomalies, and errors that name split, class and item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anomaly_ov.data.manifest import check_schema
from anomaly_ov.data.sources import LayoutError, read_source

MASK = "bottle/ground_truth/broken/000_mask.png"


def item(img: str, mask: str = "", cls: str = "bottle", specie: str = "good", anomaly: int = 0) -> dict:
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie, "anomaly": anomaly}


def make_meta(root: Path, image, meta: dict | None = None) -> Path:
    image(root / "bottle/train/good/000.png", size=(9, 7))
    image(root / "bottle/test/good/000.png")
    image(root / "bottle/test/broken/000.png")
    image(root / "bottle/test/broken/001.png")
    image(root / "bottle/ground_truth/broken/000_mask.png", mask=True)
    if meta is None:
        meta = {
            "train": {"bottle": [item("bottle/train/good/000.png")]},
            "test": {
                "bottle": [
                    item("bottle/test/good/000.png"),
                    item("bottle/test/broken/000.png", MASK, specie="broken", anomaly=1),
                    item("bottle/test/broken/001.png", "", "bottle", "", 1),
                ]
            },
        }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_reads_items(tmp_path, image, source):
    make_meta(tmp_path / "ds", image)
    frame = read_source(source("meta_json", "ds"), tmp_path)
    assert check_schema(frame) == []
    assert len(frame) == 4
    assert frame.iloc[0][["split", "label", "defect_type", "width", "height"]].tolist() == [
        "train", "normal", "good", 9, 7,
    ]
    anomalies = frame[frame["label"] == "anomaly"]
    assert anomalies["defect_type"].tolist() == ["broken", "anomaly"]
    assert anomalies["mask_path"].tolist() == ["bottle/ground_truth/broken/000_mask.png", ""]


def test_path_may_name_the_json_file(tmp_path, image, source):
    make_meta(tmp_path / "ds", image)
    frame = read_source(source("meta_json", "ds/meta.json"), tmp_path)
    assert set(frame["root"]) == {"ds"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"anomaly": 2}, r"\['test'\]\['bottle'\]\[0\]: 'anomaly' must be 0 or 1"),
        ({"img_path": "nope.png"}, r"\[0\]: image 'nope.png' not found"),
        ({"mask_path": "bottle/ground_truth/broken/000_mask.png"}, r"\[0\]: normal item .* empty mask_path"),
        ({"cls_name": "cable"}, r"cls_name 'cable' differs from its class key 'bottle'"),
        ({"anomaly": 1, "mask_path": "missing.png"}, r"mask 'missing.png' not found"),
    ],
)
def test_bad_items(tmp_path, image, source, bad, message):
    entry = item("bottle/test/good/000.png")
    entry.update(bad)
    make_meta(tmp_path / "ds", image, {"test": {"bottle": [entry]}})
    with pytest.raises(LayoutError, match=message):
        read_source(source("meta_json", "ds"), tmp_path)


def test_bad_structure(tmp_path, image, source):
    make_meta(tmp_path / "a", image, {"val": {}})
    with pytest.raises(LayoutError, match=r"unknown split key\(s\) \['val'\]"):
        read_source(source("meta_json", "a"), tmp_path)
    make_meta(tmp_path / "b", image, {"test": {"bottle": {"img_path": "x"}}})
    with pytest.raises(LayoutError, match=r"\['test'\]\['bottle'\] must be a list of items"):
        read_source(source("meta_json", "b"), tmp_path)
    make_meta(tmp_path / "c", image, {"test": {"bottle": [{"mask_path": ""}]}})
    with pytest.raises(LayoutError, match=r"missing key\(s\) \['img_path', 'anomaly'\]"):
        read_source(source("meta_json", "c"), tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta.json").write_text("{oops")
    with pytest.raises(LayoutError, match=r"meta.json: invalid JSON at line 1"):
        read_source(source("meta_json", "d"), tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(LayoutError, match=r"meta.json not found"):
        read_source(source("meta_json", "e"), tmp_path)


def test_categories_filter(tmp_path, image, source):
    make_meta(tmp_path / "ds", image)
    with pytest.raises(LayoutError, match=r"unknown category \['cable'\]; available: \['bottle'\]"):
        read_source(source("meta_json", "ds", categories=["cable"]), tmp_path)
    assert len(read_source(source("meta_json", "ds", categories=["bottle"]), tmp_path)) == 4
