"""VisA reader: split_csv rows, defect labels from image_anno.csv and errors with CSV line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_ov.data.manifest import check_schema
from anomaly_ov.data.sources import LayoutError, read_source

HEADER = "object,split,label,image,mask\n"


def make_visa(root: Path, image, rows: list[str] | None = None, anno: bool = True) -> Path:
    image(root / "candle/Data/Images/Normal/0000.JPG", size=(20, 14))
    image(root / "candle/Data/Images/Normal/0001.JPG")
    image(root / "candle/Data/Images/Anomaly/000.JPG")
    image(root / "candle/Data/Masks/Anomaly/000.png", mask=True)
    image(root / "pcb1/Data/Images/Normal/0000.JPG")
    rows = rows if rows is not None else [
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "pcb1,test,normal,pcb1/Data/Images/Normal/0000.JPG,",
    ]
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text(HEADER + "\n".join(rows) + "\n")
    if anno:
        (root / "candle" / "image_anno.csv").write_text(
            "image,label,mask\ncandle/Data/Images/Anomaly/000.JPG,wax melted,candle/Data/Masks/Anomaly/000.png\n"
        )
    return root


def test_reads_rows(tmp_path, image, source):
    make_visa(tmp_path / "visa", image)
    frame = read_source(source("visa", "visa", role="eval"), tmp_path)
    assert check_schema(frame) == []
    assert len(frame) == 4 and set(frame["role"]) == {"eval"}
    first = frame.iloc[0]
    assert (first["category"], first["split"], first["label"], first["width"], first["height"]) == (
        "candle", "train", "normal", 20, 14,
    )
    anomaly = frame[frame["label"] == "anomaly"].iloc[0]
    assert anomaly["mask_path"] == "candle/Data/Masks/Anomaly/000.png"
    assert anomaly["defect_type"] == "wax melted"
    assert set(frame.loc[frame["label"] == "normal", "defect_type"]) == {"good"}


def test_defect_is_generic_without_image_anno(tmp_path, image, source):
    make_visa(tmp_path / "visa", image, anno=False)
    frame = read_source(source("visa", "visa"), tmp_path)
    assert frame.loc[frame["label"] == "anomaly", "defect_type"].tolist() == ["anomaly"]


def test_categories_filter(tmp_path, image, source):
    make_visa(tmp_path / "visa", image)
    frame = read_source(source("visa", "visa", categories=["pcb1"]), tmp_path)
    assert set(frame["category"]) == {"pcb1"} and len(frame) == 1
    with pytest.raises(LayoutError, match=r"unknown category \['capsules'\]; available: \['candle', 'pcb1'\]"):
        read_source(source("visa", "visa", categories=["capsules"]), tmp_path)


def test_missing_split_csv(tmp_path, source):
    (tmp_path / "visa").mkdir()
    with pytest.raises(LayoutError, match=r"split_csv/1cls.csv: split file not found"):
        read_source(source("visa", "visa"), tmp_path)


def test_bad_columns(tmp_path, image, source):
    root = make_visa(tmp_path / "visa", image)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(LayoutError, match=r"missing column\(s\) \['label', 'mask'\]"):
        read_source(source("visa", "visa"), tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("candle,val,normal,candle/Data/Images/Normal/0000.JPG,", r"line 3: split 'val' must be 'train' or 'test'"),
        ("candle,test,bad,candle/Data/Images/Normal/0000.JPG,", r"line 3: label 'bad' must be 'normal' or 'anomaly'"),
        ("candle,test,normal,candle/Data/Images/Normal/9.JPG,", r"line 3: image .*9.JPG' not found"),
        ("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,", r"line 3: anomalous image .* empty 'mask'"),
        ("candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,m.png", r"line 3: mask 'm.png' not found"),
        (
            "candle,test,normal,candle/Data/Images/Normal/0001.JPG,candle/Data/Masks/Anomaly/000.png",
            r"line 3: normal image .* must have an empty 'mask' column",
        ),
        ("candle,test,normal,candle/Data/Images/Normal/0000.JPG,", None),
        (",test,normal,candle/Data/Images/Normal/0000.JPG,", r"line 3: empty 'object' column"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, image, source, row, message):
    good = "candle,train,normal,candle/Data/Images/Normal/0000.JPG,"
    make_visa(tmp_path / "visa", image, rows=[good, row])
    if message is None:  # the same image twice
        message = r"line 3: image .* already listed on line 2"
    with pytest.raises(LayoutError, match=message):
        read_source(source("visa", "visa"), tmp_path)


def test_empty_csv(tmp_path, image, source):
    make_visa(tmp_path / "visa", image, rows=[])
    (tmp_path / "visa" / "split_csv" / "1cls.csv").write_text(HEADER)
    with pytest.raises(LayoutError, match=r"no rows"):
        read_source(source("visa", "visa"), tmp_path)
