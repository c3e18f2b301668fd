"""Reader for the ``meta.json`` interchange format of the CLIP-based zero-shot repositories (AnomalyCLIP, AdaCLIP).

Accepted layout (docs/model.md, 'Dataset layouts')::

    <root>/meta.json = {"train"|"test"|"valid": {<cls>: [{"img_path": ..., "mask_path": "" | ..., "cls_name": <cls>,
                                                          "specie_name": <defect or "good">, "anomaly": 0 | 1}]}}

``source.path`` is the dataset root holding ``meta.json`` (or the JSON file itself; its folder is then the root).
Paths are relative to the root. Normal items (``anomaly`` 0) have an empty ``mask_path``; anomalous items may
have one (pixel-level sets) or not (image-level sets); a given mask must exist. The defect type is
``specie_name`` ("anomaly" when it is empty or "good" on an anomalous item). Errors name the split, class and
item index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.data.manifest import NORMAL_DEFECT, ManifestRow, from_rows, relative_root
from anomaly_ov.data.sources._common import LayoutError, contained, image_size, issue, select_categories
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

META_FILE = "meta.json"
SPLITS = ("train", "test", "valid")
ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
LAYOUT = (
    '<root>/meta.json = {"train"|"test": {<cls>: [{"img_path", "mask_path" ("" if normal), "cls_name", '
    '"specie_name", "anomaly": 0|1}]}} with paths relative to <root>'
)


def load_meta(path: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Parse and shape-check ``meta.json``: a mapping of split -> class -> list of item mappings."""
    if not path.is_file():
        raise LayoutError(f"{path}: meta.json not found; expected layout: {LAYOUT}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start}); save meta.json as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(meta, dict) or not meta:
        raise LayoutError(f"{path}: the top level must be a non-empty mapping of splits; expected layout: {LAYOUT}")
    unknown = [k for k in meta if k not in SPLITS]
    if unknown:
        raise LayoutError(f"{path}: unknown split key(s) {unknown}; allowed {list(SPLITS)}")
    for split, classes in meta.items():
        if not isinstance(classes, dict):
            kind = type(classes).__name__
            raise LayoutError(f"{path}: [{split!r}] must map class names to lists of items, got {kind}")
        for cls, items in classes.items():
            if not isinstance(items, list):
                raise LayoutError(f"{path}: [{split!r}][{cls!r}] must be a list of items, got {type(items).__name__}")
    return meta


def read_meta_json(source: SourceParams, workspace: Path) -> pd.DataFrame:
    """Read a dataset described by ``meta.json`` into a manifest (role, modality and name from ``source``)."""
    path = in_workspace(workspace, source.path)
    meta_path = path if path.suffix.lower() == ".json" else path / META_FILE
    root = meta_path.parent
    if not root.is_dir():
        raise LayoutError(f"{root}: dataset root of source {source.name!r} not found; expected layout: {LAYOUT}")
    meta = load_meta(meta_path)
    stored_root = relative_root(root, workspace)
    available = {cls for classes in meta.values() for cls in classes}
    wanted = set(select_categories(available, source.categories, root, LAYOUT))
    rows: list[ManifestRow] = []
    seen: dict[str, str] = {}
    for split, classes in meta.items():
        for cls, items in classes.items():
            if cls not in wanted:
                continue
            for index, item in enumerate(items):
                where = f"[{split!r}][{cls!r}][{index}]"
                row = _row(item, f"{meta_path}: {where}", root, stored_root, split, cls, source)
                if row is None:  # an issue was recorded
                    continue
                previous = seen.setdefault(row.image_path, where)
                if previous != where:
                    issue("index_rows_valid", meta_path, f"{where}: image {row.image_path!r} already listed at "
                          f"{previous}")
                    continue
                rows.append(row)
    counts = {c: 0 for c in wanted}
    for row in rows:
        counts[row.category] += 1
    empty = sorted(c for c, n in counts.items() if n == 0)
    if empty:
        raise LayoutError(f"{meta_path}: class(es) {empty} have no usable items")
    return from_rows(rows)


def _item_problem(item: Any, cls: str) -> str:
    """What is wrong with one item's keys and values ("" when nothing)."""
    if not isinstance(item, dict):
        return f"each item must be an object with keys {list(ITEM_KEYS)}"
    missing = [k for k in ("img_path", "anomaly") if k not in item]
    if missing:
        return f"missing key(s) {missing}; items need {list(ITEM_KEYS)}"
    anomaly = item["anomaly"]
    if isinstance(anomaly, str) or anomaly not in (0, 1):
        return f"'anomaly' must be 0 or 1, got {anomaly!r}"
    if item.get("cls_name") not in (None, "", cls):
        return f"cls_name {item['cls_name']!r} differs from its class key {cls!r}"
    if not isinstance(item["img_path"], str) or not item["img_path"]:
        return f"'img_path' must be a non-empty string, got {item['img_path']!r}"
    if not isinstance(item.get("mask_path") or "", str):
        return f"'mask_path' must be a string, got {item['mask_path']!r}"
    if not anomaly and item.get("mask_path"):
        return f"normal item (anomaly 0) must have an empty mask_path, got {item['mask_path']!r}"
    return ""


def _row(
    item: Any, where: str, root: Path, stored_root: str, split: str, cls: str, source: SourceParams
) -> ManifestRow | None:
    """The item's manifest row, or None after recording why it is unusable."""
    problem = _item_problem(item, cls)
    if problem:
        issue("index_rows_valid", where.split(": ")[0], f"{where.split(': ', 1)[1]}: {problem}")
        return None
    anomaly = item["anomaly"]
    image_rel = item["img_path"]
    image = contained(root, image_rel, where)
    if image is None:
        return None
    if not image.is_file():
        issue("image_opens", image, f"{where}: image {image_rel!r} not found at {image}")
        return None
    mask_rel = str(item.get("mask_path") or "")
    specie = str(item.get("specie_name") or "")
    defect = NORMAL_DEFECT
    if anomaly:
        defect = specie if specie and specie != NORMAL_DEFECT else "anomaly"
        if mask_rel:
            mask = contained(root, mask_rel, where)
            if mask is None:
                return None
            if not mask.is_file():
                issue("mask_present", mask, f"{where}: mask {mask_rel!r} not found at {mask}")
                return None
    size = image_size(image, where)
    if size is None:
        return None
    width, height = size
    return ManifestRow(
        image_path=Path(image_rel).as_posix(),
        root=stored_root,
        mask_path=Path(mask_rel).as_posix() if mask_rel else "",
        source=source.name,
        category=cls,
        split=split,
        role=source.role,
        label="anomaly" if anomaly else "normal",
        defect_type=defect,
        modality=source.modality,
        width=width,
        height=height,
    )
