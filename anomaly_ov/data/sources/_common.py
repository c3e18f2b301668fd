"""Shared pieces of the dataset readers: the layout error, image listing, lazy image sizes, category filters.

Readers turn one on-disk layout into manifest rows. They never decode pixels: width and height come from the
image header (``PIL.Image.open(path).size`` reads a few bytes), so reading a large dataset stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.manifest import ManifestRow

#: file name endings accepted as images (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class LayoutError(ValueError):
    """A dataset on disk does not follow the layout its reader expects; the message names the path and layout."""


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path, exclude_mask_files: bool = False) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name); ``*_mask.*`` files skipped when asked."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if is_image(p)]
    if exclude_mask_files:
        files = [p for p in files if not p.stem.endswith("_mask")]
    return sorted(files, key=lambda p: p.name)


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder`` sorted by name."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the image header without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return int(image.size[0]), int(image.size[1])
    except (UnidentifiedImageError, OSError) as exc:
        raise LayoutError(f"{path}: not a readable image ({exc}); replace or remove the file") from None


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise LayoutError(f"{path}: {what} not found; expected layout: {layout}")
    if not path.is_dir():
        raise LayoutError(f"{path}: {what} must be a folder; expected layout: {layout}")
    return path


def select_categories(available: Sequence[str], wanted: Iterable[str] | None, root: Path, layout: str) -> list[str]:
    """Honour a source's ``categories`` filter; an unknown name is an error that lists the available ones."""
    available = sorted(available)
    if not available:
        raise LayoutError(f"{root}: no categories found; expected layout: {layout}")
    if wanted is None:
        return available
    wanted = list(wanted)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        noun = "category" if len(unknown) == 1 else "categories"
        raise LayoutError(f"{root}: unknown {noun} {unknown}; available: {available}")
    return [c for c in available if c in wanted]


def rel(path: Path, root: Path) -> str:
    """``path`` relative to the dataset root, with forward slashes (the manifest's path convention)."""
    return path.relative_to(root).as_posix()


def file_row(source: SourceParams, root: Path, stored_root: str, image: Path, mask: Path | None, category: str,
             split: str, defect: str) -> ManifestRow:
    """The manifest row of one image file found under ``root`` (its size read from the header only)."""
    from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow

    width, height = image_size(image)
    return ManifestRow(
        image_path=rel(image, root),
        root=stored_root,
        mask_path=rel(mask, root) if mask is not None else "",
        source=source.name,
        category=category,
        split=split,
        role=source.role,
        label="normal" if defect == NORMAL_DEFECT else "anomaly",
        defect_type=defect,
        modality=source.modality,
        width=width,
        height=height,
    )
