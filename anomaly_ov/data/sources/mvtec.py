"""MVTec AD layout reader.

Accepted layout (docs/model.md, 'Dataset layouts'), for every category folder ``<cls>`` under the dataset root::

    <cls>/train/good/*.png                      normal training images (train holds only ``good``)
    <cls>/test/good/*.png                       normal test images (no mask)
    <cls>/test/<defect>/*.png                   anomalous test images, one folder per defect type
    <cls>/ground_truth/<defect>/<stem>_mask.png one mask per anomalous image (0/255 or 0/1)

Any image suffix in ``IMAGE_SUFFIXES`` is accepted for images and masks. A folder of the root is a category
when it has ``train`` or ``test`` inside; other folders and files (licence, readme) are ignored. Every
anomalous test image needs its mask and every mask needs its image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import (
    LayoutError,
    file_row,
    issue,
    list_images,
    require_dir,
    select_categories,
    subdirs,
)
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

LAYOUT = (
    "<root>/<cls>/train/good/*.png, <root>/<cls>/test/{good,<defect>}/*.png, "
    "<root>/<cls>/ground_truth/<defect>/<stem>_mask.png"
)


def mvtec_categories(root: Path) -> list[str]:
    """Category folders: those holding ``train`` or ``test``."""
    return [d.name for d in subdirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]


def read_mvtec(source: SourceParams, workspace: Path) -> pd.DataFrame:
    """Read an MVTec-AD-style dataset into a manifest (role, modality and name from ``source``)."""
    root = require_dir(in_workspace(workspace, source.path), f"MVTec dataset root of source {source.name!r}", LAYOUT)
    stored_root = relative_root(root, workspace)
    rows: list[ManifestRow] = []
    for category in select_categories(mvtec_categories(root), source.categories, root, LAYOUT):
        rows.extend(_read_category(root, category, source, stored_root))
    return from_rows(rows)


def _read_category(root: Path, category: str, source: SourceParams, stored_root: str) -> list[ManifestRow]:
    cdir = root / category
    rows: list[ManifestRow] = []

    def add(path: Path, split: str, defect: str, mask: Path | None) -> None:
        row = file_row(source, root, stored_root, path, mask, category, split, defect)
        if row is not None:  # else an issue was recorded
            rows.append(row)

    for folder in subdirs(cdir / "train"):
        if folder.name != NORMAL_DEFECT:
            raise LayoutError(
                f"{folder}: the MVTec train split holds only '{NORMAL_DEFECT}' images; "
                f"move anomalous images under {cdir / 'test'}/<defect>/ (expected layout: {LAYOUT})"
            )
    for path in list_images(cdir / "train" / NORMAL_DEFECT):
        add(path, "train", NORMAL_DEFECT, None)

    gt_dir = cdir / "ground_truth"
    for folder in subdirs(cdir / "test"):
        defect = folder.name
        images = list_images(folder)
        if defect == NORMAL_DEFECT:
            for path in images:
                add(path, "test", defect, None)
            continue
        masks = {_mask_stem(m): m for m in list_images(gt_dir / defect)}
        for path in images:
            mask = masks.pop(path.stem, None)
            if mask is None:
                issue("mask_present", path, f"anomalous test image has no mask; expected "
                      f"{gt_dir / defect / (path.stem + '_mask.png')} (layout: {LAYOUT})")
                continue
            add(path, "test", defect, mask)
        for orphan in sorted(masks.values()):
            issue("mask_has_image", orphan, f"mask has no image; expected {folder}/{_mask_stem(orphan)}.png "
                  f"({len(masks)} orphan mask(s) for defect {defect!r})")
    for folder in subdirs(gt_dir):
        if folder.name != NORMAL_DEFECT and not (cdir / "test" / folder.name).is_dir():
            for orphan in list_images(folder):
                issue("mask_has_image", orphan, f"masks for defect {folder.name!r} but no folder "
                      f"{cdir / 'test' / folder.name}")
    if not rows:
        raise LayoutError(f"{cdir}: category {category!r} has no images; expected layout: {LAYOUT}")
    return rows


def _mask_stem(mask: Path) -> str:
    """``000_mask.png`` -> ``000``; a mask without the suffix keeps its stem."""
    return mask.stem[: -len("_mask")] if mask.stem.endswith("_mask") else mask.stem
