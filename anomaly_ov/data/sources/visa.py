"""VisA layout reader (driven by ``split_csv/1cls.csv``).

Accepted layout (REFERENCE.md section 7)::

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
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import LayoutError, image_size, require_dir, select_categories
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
    with path.open(newline="", encoding="utf-8-sig") as handle:
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
            raise LayoutError(f"{where}: empty 'object' column")
        if row["object"] not in wanted:
            continue
        if row["split"] not in ("train", "test"):
            raise LayoutError(f"{where}: split {row['split']!r} must be 'train' or 'test'")
        if row["label"] not in ("normal", "anomaly"):
            raise LayoutError(f"{where}: label {row['label']!r} must be 'normal' or 'anomaly'")
        if not row["image"]:
            raise LayoutError(f"{where}: empty 'image' column")
        if row["image"] in seen:
            raise LayoutError(f"{where}: image {row['image']!r} already listed on line {seen[row['image']]}")
        seen[row["image"]] = line
        image = root / row["image"]
        if not image.is_file():
            raise LayoutError(f"{where}: image {row['image']!r} not found at {image}")
        mask_path = ""
        if row["label"] == "anomaly":
            if not row["mask"]:
                raise LayoutError(f"{where}: anomalous image {row['image']!r} has an empty 'mask' column")
            if not (root / row["mask"]).is_file():
                raise LayoutError(f"{where}: mask {row['mask']!r} not found at {root / row['mask']}")
            mask_path = Path(row["mask"]).as_posix()
            defect = annotations[row["object"]].get(Path(row["image"]).as_posix(), GENERIC_DEFECT)
        else:
            if row["mask"]:
                raise LayoutError(f"{where}: normal image {row['image']!r} must have an empty 'mask' column")
            defect = NORMAL_DEFECT
        width, height = image_size(image)
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
        raise LayoutError(f"{csv_path}: categor{'y' if len(empty) == 1 else 'ies'} {empty} have no rows")
    return from_rows(rows)


def _defect_labels(root: Path, category: str) -> dict[str, str]:
    """image path -> defect description from ``<cls>/image_anno.csv`` (empty when the file is absent)."""
    path = root / category / "image_anno.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
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
