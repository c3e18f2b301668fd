"""Shared pieces of the dataset readers: the layout error, per-file findings, image listing, header sizes.

Readers turn one on-disk layout into manifest rows. They never decode pixels: width and height come from the
image header (:func:`anomaly_ov.data.images.read_header` reads a few bytes and applies the size limits), so
reading a large dataset stays fast.

Two kinds of problems:

- the layout itself is unusable (no categories, no index file, a header the reader cannot parse): a
  :class:`LayoutError`, raised at once;
- one file or index row is unusable (not an image, too large, a missing or orphan mask, a path that leaves the
  dataset, a file name that is not UTF-8): an :class:`Issue`. Inside :func:`collecting` (what
  ``read_source`` uses) the reader records it, drops that row and goes on, so one bad file never hides the
  others; ``validate`` turns the issues into findings, ``prepare`` and ``evaluate`` stop with the full list.
  Called outside :func:`collecting`, a reader raises :class:`LayoutError` at the first one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import InputError

if TYPE_CHECKING:
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.manifest import ManifestRow

#: file name endings accepted as images (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class LayoutError(InputError):
    """A dataset on disk does not follow the layout its reader expects; the message names the path and layout."""

    issues: list[Any]  # per-file issues, set by the caller that collected them (absent otherwise)


#: check name -> (what failing means, what to do, what passing means); all critical (see ``anomaly_ov.validate``).
ISSUE_CHECKS: dict[str, tuple[str, str, str]] = {
    "image_opens": ("image(s) cannot be opened as images within the size limits (missing, not an image, "
                    "corrupt header, or too large)", "replace or remove them, or raise validate.max_image_side",
                    "every listed image opens and declares a size within the limits"),
    "mask_present": ("anomalous image(s) have no mask file", "add the mask or remove the image",
                     "every anomalous image has its mask"),
    "mask_has_image": ("mask(s) have no image", "remove the mask or add its image", "every mask has its image"),
    "path_inside_dataset": ("path(s) leave the dataset folder (absolute, '..' or a symlink to outside)",
                            "copy the files into the dataset, or set allow_external_paths: true on the source",
                            "every image and mask path stays inside its dataset folder"),
    "file_name_utf8": ("file name(s) are not valid UTF-8 (the manifest stores UTF-8 text)", "rename them",
                       "every file name is UTF-8"),
    "index_rows_valid": ("row(s) of the dataset's index file are invalid", "fix the rows",
                         "every row of the index file is valid"),
}


@dataclass(frozen=True)
class Issue:
    """One unusable file or index row found while reading a source (see the module docstring)."""

    check: str  #: a key of :data:`ISSUE_CHECKS`
    file: str  #: the file (printable even when its name is not UTF-8)
    reason: str  #: why, in words (includes the index line/item when there is one)


@dataclass
class Findings:
    """Issues of one source being read; ``root`` bounds its files unless external paths are allowed."""

    root: Path | None = None
    allow_external: bool = False
    issues: list[Issue] = field(default_factory=list)


_ACTIVE: ContextVar[Findings | None] = ContextVar("anomaly_ov_source_findings", default=None)


@contextmanager
def collecting(root: Path | None = None, allow_external: bool = False) -> Iterator[Findings]:
    """Record per-file issues instead of raising at the first one (readers drop the row and go on)."""
    findings = Findings(root, allow_external)
    token = _ACTIVE.set(findings)
    try:
        yield findings
    finally:
        _ACTIVE.reset(token)


def issue(check: str, file: str | Path, reason: str) -> None:
    """Record a per-file problem (inside :func:`collecting`) or raise it as a :class:`LayoutError` (outside)."""
    shown = printable(file)
    active = _ACTIVE.get()
    if active is None:
        raise LayoutError(f"{shown}: {printable(reason)}")
    active.issues.append(Issue(check, shown, printable(reason)))


def printable(path: str | Path) -> str:
    """``path`` as text that survives UTF-8 (a name with undecodable bytes shows them as ``\\xNN``)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def utf8_name(path: Path) -> bool:
    """True when the path is valid UTF-8; otherwise an issue is recorded (or raised)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        issue("file_name_utf8", path, "file name is not valid UTF-8; rename it")
        return False
    return True


def contained(root: Path, relative: str, where: str = "") -> Path | None:
    """``root / relative`` when it stays inside the dataset (or the source allows external paths); else an issue.

    ``where`` (an index line or item) prefixes the reason. Uses :func:`anomaly_ov.paths.inside_root`.
    """
    from anomaly_ov.paths import OutsideRootError, inside_root

    active = _ACTIVE.get()
    allow = active is not None and active.allow_external
    if "\x00" in relative:
        issue("index_rows_valid", root, f"{where + ': ' if where else ''}path {relative!r} holds a NUL character")
        return None
    try:
        return inside_root(root, relative, allow_external=allow)
    except OutsideRootError as exc:
        issue("path_inside_dataset", exc.path, f"{where + ': ' if where else ''}{exc.reason}")
        return None


def _walk_ok(path: Path) -> bool:
    """A listed file is usable: UTF-8 name, and inside the source's root (a symlink may point out of it)."""
    from anomaly_ov.paths import OutsideRootError, inside_root

    if not utf8_name(path):
        return False
    active = _ACTIVE.get()
    if active is None or active.root is None or active.allow_external or not path.is_relative_to(active.root):
        return True
    try:
        inside_root(active.root, path.relative_to(active.root))
    except OutsideRootError as exc:
        issue("path_inside_dataset", path, exc.reason)
        return False
    return True


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path, exclude_mask_files: bool = False) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name); ``*_mask.*`` files skipped when asked.

    Files whose name is not UTF-8, or that are symlinks leading out of the dataset, are issues and left out.
    """
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if is_image(p)]
    if exclude_mask_files:
        files = [p for p in files if not p.stem.endswith("_mask")]
    return sorted((p for p in files if _walk_ok(p)), key=lambda p: p.name)


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder`` sorted by name."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_size(path: Path, where: str = "") -> tuple[int, int] | None:
    """(width, height) read from the image header without decoding the pixels, within the size limits.

    An unusable file is an ``image_opens`` issue: None inside :func:`collecting`, else a :class:`LayoutError`.
    """
    from anomaly_ov.data.images import ImageError, read_header

    try:
        return read_header(path, name=printable(path)).size
    except ImageError as exc:
        hint = "" if exc.kind == "too_large" else "; replace or remove the file"
        issue("image_opens", path, f"{where + ': ' if where else ''}{exc.reason}{hint}")
        return None


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise LayoutError(f"{path}: {what} not found; expected layout: {layout}")
    if not path.is_dir():
        raise LayoutError(f"{path}: {what} must be a folder; expected layout: {layout}")
    return path


def select_categories(available: Iterable[str], wanted: Iterable[str] | None, root: Path, layout: str) -> list[str]:
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
             split: str, defect: str) -> ManifestRow | None:
    """The manifest row of one image file found under ``root`` (its size read from the header only); None when
    the image is unusable (an issue was recorded)."""
    from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow

    size = image_size(image)
    if size is None:
        return None
    width, height = size
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
