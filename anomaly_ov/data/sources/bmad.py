"""BMAD (medical anomaly detection benchmark) layout reader.

Two layouts exist (docs/model.md, 'Dataset layouts'); each category folder may use either one::

    pixel-level (BraTS, liver CT, retinal OCT, ...):
        <cat>/train/good/img/*.png
        <cat>/{valid,test}/{good,Ungood}/img/*.png
        <cat>/{valid,test}/Ungood/label/*.png          mask with the same file name as its image
    image-level (chest X-ray, OCT2017, histopathology):
        <cat>/train/good/*.png
        <cat>/{valid,test}/{good,Ungood}/*.png          no masks

A category is pixel-level when its images sit in ``img`` folders. ``Ungood`` is matched case-insensitively.
Rows get ``modality = "medical"`` and ``defect_type = "lesion"`` for abnormal images. In the pixel-level layout
every abnormal image needs its mask; an abnormal image without one is reported with its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import (
    LayoutError,
    image_size,
    list_images,
    rel,
    require_dir,
    select_categories,
    subdirs,
)
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

LAYOUT = (
    "<root>/<cat>/train/good/img/*.png, <root>/<cat>/{valid,test}/{good,Ungood}/img/*.png with masks in "
    ".../Ungood/label/*.png (pixel-level), or <root>/<cat>/{train/good,valid/{good,Ungood},test/{good,Ungood}}/*.png "
    "(image-level)"
)
SPLITS = ("train", "valid", "test")
ABNORMAL_DEFECT = "lesion"


def bmad_categories(root: Path) -> list[str]:
    return [d.name for d in subdirs(root) if any((d / s).is_dir() for s in SPLITS)]


def is_pixel_level(category_dir: Path) -> bool:
    """Pixel-level categories keep their images in ``img`` sub-folders."""
    return any(p.name == "img" and p.is_dir() for p in category_dir.glob("*/*/img"))


def read_bmad(source: SourceParams, workspace: Path) -> pd.DataFrame:
    """Read a BMAD-style dataset (either layout, per category) into a manifest of medical images."""
    root = require_dir(in_workspace(workspace, source.path), f"BMAD dataset root of source {source.name!r}", LAYOUT)
    stored_root = relative_root(root, workspace)
    rows: list[ManifestRow] = []
    for category in select_categories(bmad_categories(root), source.categories, root, LAYOUT):
        rows.extend(_read_category(root, category, source, stored_root))
    if not rows:
        raise LayoutError(f"{root}: no images found; expected layout: {LAYOUT}")
    return from_rows(rows)


def _label_dirs(split_dir: Path) -> list[tuple[Path, bool]]:
    """(folder, is_abnormal) for the ``good`` and ``Ungood`` folders of one split."""
    found = []
    for folder in subdirs(split_dir):
        name = folder.name.lower()
        if name == "good":
            found.append((folder, False))
        elif name == "ungood":
            found.append((folder, True))
    return found


def _read_category(root: Path, category: str, source: SourceParams, stored_root: str) -> list[ManifestRow]:
    cdir = root / category
    pixel_level = is_pixel_level(cdir)
    rows: list[ManifestRow] = []
    for split in SPLITS:
        split_dir = cdir / split
        if not split_dir.is_dir():
            continue
        label_dirs = _label_dirs(split_dir)
        if not label_dirs:
            raise LayoutError(f"{split_dir}: expected 'good' and/or 'Ungood' folders; expected layout: {LAYOUT}")
        for folder, abnormal in label_dirs:
            if split == "train" and abnormal:
                raise LayoutError(f"{folder}: BMAD training splits hold only 'good' images; move it to valid/test")
            image_dir = folder / "img" if pixel_level else folder
            if pixel_level and not image_dir.is_dir():
                raise LayoutError(f"{folder}: missing 'img' folder (category {category!r} is pixel-level: other "
                                  f"splits keep images in img/); expected layout: {LAYOUT}")
            masks = {p.name: p for p in list_images(folder / "label")} if (pixel_level and abnormal) else {}
            for path in list_images(image_dir):
                mask = None
                if pixel_level and abnormal:
                    mask = masks.get(path.name) or _same_stem(masks, path)
                    if mask is None:
                        expected = folder / "label" / path.name
                        raise LayoutError(f"{path}: abnormal image without a mask; expected {expected}")
                size = image_size(path)
                if size is None:  # an issue was recorded
                    continue
                width, height = size
                rows.append(ManifestRow(
                    image_path=rel(path, root), root=stored_root, mask_path=rel(mask, root) if mask else "",
                    source=source.name, category=category, split=split, role=source.role,
                    label="anomaly" if abnormal else "normal",
                    defect_type=ABNORMAL_DEFECT if abnormal else NORMAL_DEFECT, modality="medical",
                    width=width, height=height,
                ))
    return rows


def _same_stem(masks: dict[str, Path], image: Path) -> Path | None:
    """Masks sometimes differ only in suffix (``.jpg`` image, ``.png`` mask)."""
    for mask in masks.values():
        if mask.stem == image.stem:
            return mask
    return None
