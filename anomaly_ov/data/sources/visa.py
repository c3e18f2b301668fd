"""VisA layout reader (driven by ``split_csv/1cls.csv``).

Accepted layout (docs/model.md, 'Dataset layouts')::

    <root>/split_csv/1cls.csv                      columns object,split,label,image,mask
    <root>/<cls>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<cls>/Data/Masks/Anomaly/*.png          masks 0/1 or 0/255
    <root>/<cls>/image_anno.csv                    optional: image,label,mask (defect description per image)

CSV paths are relative to the VisA root. ``split`` is train or test, ``label`` normal or anomaly; anomalous rows
need an existing mask, normal rows an empty one. The defect type of an anomalous image comes from the class's
``image_anno.csv`` when it exists (its ``label`` column), else it is ``"anomaly"`` (1cls.csv carries none).
Errors name the CSV line (the header is line 1).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import (
    LayoutError,
    contained,
    image_size,
    issue,
    require_dir,
    select_categories,
)
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

SPLIT_CSV = "split_csv/1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
LAYOUT = (
    f"<root>/{SPLIT_CSV} with columns {','.join(CSV_COLUMNS)};"
    " images <root>/<cls>/Data/Images/{Normal,Anomaly}/*.JPG;"
    " masks <root>/<cls>/Data/Masks/Anomaly/*.png"
)
GENERIC_DEFECT = "anomaly"


def read_split_csv(root: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of ``split_csv/1cls.csv`` after checking its header."""
    path = root / SPLIT_CSV
    if not path.is_file():
        raise LayoutError(f"{path}: split file not found; expected layout: {LAYOUT}")
    with _text_errors(path), path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise LayoutError(f"{path}: missing column(s) {missing}; found {header}, expected {list(CSV_COLUMNS)}")
        reader.fieldnames = header
        rows = [
            (i + 2, {k: (v or "").strip() for k, v in row.items() if k is not None}) for i, row in enumerate(reader)
        ]
    if not rows:
        raise LayoutError(f"{path}: no rows; expected one row per image ({LAYOUT})")
    return rows


@contextmanager
def _text_errors(path: Path) -> Iterator[None]:
    """A CSV that is not UTF-8 text, or that the csv module cannot parse, is a :class:`LayoutError` naming it."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start}); save the file as UTF-8") from None
    except csv.Error as exc:
        raise LayoutError(f"{path}: not a readable CSV file ({exc})") from None


def read_visa(source: SourceParams, workspace: Path) -> pd.DataFrame:
    """Read a VisA-style dataset into a manifest (role, modality and name from ``source``)."""
    root = require_dir(in_workspace(workspace, source.path), f"VisA dataset root of source {source.name!r}", LAYOUT)
    stored_root = relative_root(root, workspace)
    csv_path = root / SPLIT_CSV
    lines = read_split_csv(root)
    categories = select_categories({r["object"] for _, r in lines if r["object"]}, source.categories, root, LAYOUT)
    wanted = set(categories)
    annotations = {c: _defect_labels(root, c) for c in categories}
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for line, row in lines:
        where = f"{csv_path}, line {line}"
        if not row["object"]:
            issue("index_rows_valid", csv_path, f"line {line}: empty 'object' column")
            continue
        if row["object"] not in wanted:
            continue
        problem = _row_problem(row, seen)
        if problem:
            issue("index_rows_valid", csv_path, f"line {line}: {problem}")
            continue
        seen[row["image"]] = line
        image = contained(root, row["image"], f"line {line}")
        if image is None:
            continue
        if not image.is_file():
            issue("image_opens", image, f"{where}: image {row['image']!r} not found at {image}")
            continue
        mask_path = ""
        if row["label"] == "anomaly":
            mask = contained(root, row["mask"], f"line {line}")
            if mask is None:
                continue
            if not mask.is_file():
                issue("mask_present", mask, f"{where}: mask {row['mask']!r} not found at {mask}")
                continue
            mask_path = Path(row["mask"]).as_posix()
            defect = annotations[row["object"]].get(Path(row["image"]).as_posix(), GENERIC_DEFECT)
        else:
            defect = NORMAL_DEFECT
        size = image_size(image, where)
        if size is None:
            continue
        width, height = size
        rows.append(
            ManifestRow(
                image_path=Path(row["image"]).as_posix(),
                root=stored_root,
                mask_path=mask_path,
                source=source.name,
                category=row["object"],
                split=row["split"],
                role=source.role,
                label=row["label"],
                defect_type=defect,
                modality=source.modality,
                width=width,
                height=height,
            )
        )
    counts = {c: 0 for c in categories}
    for r in rows:
        counts[r.category] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise LayoutError(f"{csv_path}: categor{'y' if len(empty) == 1 else 'ies'} {empty} have no usable rows")
    return from_rows(rows)


def _row_problem(row: dict[str, str], seen: dict[str, int]) -> str:
    """What is wrong with one split-csv row's values ("" when nothing)."""
    if row["split"] not in ("train", "test"):
        return f"split {row['split']!r} must be 'train' or 'test'"
    if row["label"] not in ("normal", "anomaly"):
        return f"label {row['label']!r} must be 'normal' or 'anomaly'"
    if not row["image"]:
        return "empty 'image' column"
    if row["image"] in seen:
        return f"image {row['image']!r} already listed on line {seen[row['image']]}"
    if row["label"] == "anomaly" and not row["mask"]:
        return f"anomalous image {row['image']!r} has an empty 'mask' column"
    if row["label"] == "normal" and row["mask"]:
        return f"normal image {row['image']!r} must have an empty 'mask' column"
    return ""


def _defect_labels(root: Path, category: str) -> dict[str, str]:
    """image path -> defect description from ``<cls>/image_anno.csv`` (empty when the file is absent)."""
    path = root / category / "image_anno.csv"
    if not path.is_file():
        return {}
    with _text_errors(path), path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "label"} <= {h.strip() for h in reader.fieldnames}:
            raise LayoutError(f"{path}: expected columns image,label[,mask]; found {reader.fieldnames}")
        labels = {}
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            label = row.get("label", "")
            if row.get("image") and label and label != "normal":
                labels[Path(row["image"]).as_posix()] = label
    return labels
