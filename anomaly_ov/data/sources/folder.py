"""Reader for a plain folder of images sorted by category and defect (masks optional).

Accepted layout, for every category folder ``<category>`` under the dataset root::

    <category>/good/*.png                    normal images
    <category>/<defect>/*.png                anomalous images, one folder per defect type (any name but
                                             ``good`` and ``masks``)
    masks, optional, either of:
    <category>/masks/<defect>/<stem>.png     (or <stem>_mask.png) in a masks tree
    <category>/<defect>/<stem>_mask.png      beside the image (``*_mask.*`` files are never read as images)

The same with a split level is accepted too: ``<category>/{train,test,valid}/{good,<defect>,masks}/...``.
Without one, every image gets split ``test``. Anomalous images without a mask are allowed (image-level data);
a mask without its image, a mask for a ``good`` image, loose files in a category folder and an empty category
are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import (
    LayoutError,
    file_row,
    is_image,
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

SPLITS = ("train", "test", "valid")
MASKS = "masks"
LAYOUT = (
    "<root>/<category>/[<split>/]{good,<defect>}/*.png with optional masks in "
    "<root>/<category>/[<split>/]masks/<defect>/<stem>[_mask].png or beside the image as <stem>_mask.png"
)


def folder_categories(root: Path) -> list[str]:
    return [d.name for d in subdirs(root)]


def read_folder(source: SourceParams, workspace: Path) -> pd.DataFrame:
    """Read a category/defect folder tree into a manifest (role, modality and name from ``source``)."""
    root = require_dir(in_workspace(workspace, source.path), f"image folder of source {source.name!r}", LAYOUT)
    stored_root = relative_root(root, workspace)
    rows: list[ManifestRow] = []
    for category in select_categories(folder_categories(root), source.categories, root, LAYOUT):
        cdir = root / category
        loose = [p for p in cdir.iterdir() if is_image(p)]
        if loose:
            raise LayoutError(
                f"{loose[0]}: image directly in the category folder; move it into {cdir}/good/ (normal) or "
                f"{cdir}/<defect>/ (anomalous). Expected layout: {LAYOUT}"
            )
        split_dirs = [d for d in subdirs(cdir) if d.name in SPLITS]
        before = len(rows)
        if split_dirs:
            others = [d.name for d in subdirs(cdir) if d.name not in SPLITS]
            if others:
                raise LayoutError(
                    f"{cdir}: mixes split folders {[d.name for d in split_dirs]} with other folders {others}; "
                    f"use either <category>/<split>/<defect>/ or <category>/<defect>/ (layout: {LAYOUT})"
                )
            for split_dir in split_dirs:
                rows.extend(_read_split(root, split_dir, split_dir.name, category, source, stored_root))
        else:
            rows.extend(_read_split(root, cdir, "test", category, source, stored_root))
        if len(rows) == before:
            raise LayoutError(f"{cdir}: category {category!r} has no images; expected layout: {LAYOUT}")
    return from_rows(rows)


def _read_split(
    root: Path, folder: Path, split: str, category: str, source: SourceParams, stored_root: str
) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    mask_tree = folder / MASKS
    for defect_dir in subdirs(folder):
        defect = defect_dir.name
        if defect == MASKS:
            continue
        images = list_images(defect_dir, exclude_mask_files=True)
        masks = _masks_for(mask_tree / defect, defect_dir)
        for image in images:
            mask = masks.pop(image.stem, None)
            if defect == NORMAL_DEFECT and mask is not None:
                raise LayoutError(f"{mask}: mask for a normal ('{NORMAL_DEFECT}') image; remove it or move the image")
            row = file_row(source, root, stored_root, image, mask, category, split, defect)
            if row is not None:  # else an issue was recorded
                rows.append(row)
        for orphan in sorted(masks.values()):
            issue("mask_has_image", orphan, f"mask has no image in {defect_dir} ({len(masks)} orphan mask(s))")
    if mask_tree.is_dir():
        for defect_masks in subdirs(mask_tree):
            if not (folder / defect_masks.name).is_dir() and list_images(defect_masks):
                raise LayoutError(f"{defect_masks}: masks for defect {defect_masks.name!r} but no folder {folder}/"
                                  f"{defect_masks.name}")
    return rows


def _masks_for(mask_dir: Path, image_dir: Path) -> dict[str, Path]:
    """image stem -> mask, from the masks tree and from ``*_mask.*`` files beside the images."""
    masks: dict[str, Path] = {}
    beside = [p for p in list_images(image_dir) if p.stem.endswith("_mask")]
    for path in list_images(mask_dir) + beside:
        stem = path.stem[: -len("_mask")] if path.stem.endswith("_mask") else path.stem
        if stem in masks:
            raise LayoutError(f"{path}: second mask for image {stem!r} (first: {masks[stem]})")
        masks[stem] = path
    return masks
