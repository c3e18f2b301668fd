"""The manifest: one row per image, the table every stage reads and writes (docs/model.md, 'The manifest').

Paths: ``root`` is the dataset root (workspace-relative when it lies inside the workspace, else absolute) and
``image_path`` / ``mask_path`` are relative to it. ``mask_path`` is "" for images without a mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: column -> dtype kind ("str" or "int"), in the order the file stores them.
COLUMNS: dict[str, str] = {
    "image_path": "str",
    "root": "str",
    "mask_path": "str",
    "source": "str",
    "category": "str",
    "split": "str",
    "role": "str",
    "label": "str",
    "defect_type": "str",
    "modality": "str",
    "view": "str",
    "group": "str",
    "width": "int",
    "height": "int",
}
REQUIRED_NON_EMPTY = ("image_path", "root", "source", "category", "split", "role", "label", "defect_type", "modality")
ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "split": ("train", "test", "valid"),
    "role": ("train", "eval"),
    "label": ("normal", "anomaly"),
    "modality": ("industrial", "medical", "3d"),
}
NORMAL_DEFECT = "good"


class ManifestError(InputError):
    """The table does not follow the manifest schema; the message names the column and rows."""


@dataclass(frozen=True)
class ManifestRow:
    """Typed row, handy for readers that build the table one image at a time."""

    image_path: str
    root: str
    source: str
    category: str
    split: str
    role: str
    label: str
    defect_type: str
    mask_path: str = ""
    modality: str = "industrial"
    view: str = ""
    group: str = ""
    width: int = 0
    height: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {column: getattr(self, column) for column in COLUMNS}


def empty_manifest() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype="int64" if k == "int" else "object") for c, k in COLUMNS.items()})


def from_rows(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pd.DataFrame:
    """Build a manifest DataFrame (columns in schema order, missing optional columns filled)."""
    import pandas as pd

    records = [r.as_dict() if isinstance(r, ManifestRow) else dict(r) for r in rows]
    if not records:
        return empty_manifest()
    frame = pd.DataFrame.from_records(records)
    return normalise(frame)


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill optional columns with their defaults, cast dtypes and order the columns."""
    frame = frame.copy()
    defaults = {"mask_path": "", "view": "", "group": "", "modality": "industrial", "width": 0, "height": 0}
    for column, default in defaults.items():
        if column not in frame.columns:
            frame[column] = default
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest is missing required column(s) {missing}; expected columns: {list(COLUMNS)}")
    for column, kind in COLUMNS.items():
        if kind == "int":
            frame[column] = frame[column].fillna(0).astype("int64")
        else:
            frame[column] = frame[column].fillna("").astype(str).astype(object)
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]].reset_index(drop=True)


def check_schema(frame: pd.DataFrame, name: str = "manifest") -> list[str]:
    """Return human-readable schema problems (empty list = valid). Content checks live in ``validate``."""
    problems: list[str] = []
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        return [f"{name}: missing column(s) {missing}; expected {list(COLUMNS)}"]
    for column, kind in COLUMNS.items():
        series = frame[column]
        if kind == "int":
            if not str(series.dtype).startswith(("int", "uint")):
                problems.append(f"{name}: column {column!r} must be integer, found dtype {series.dtype}")
        else:
            bad = series[~series.map(lambda v: isinstance(v, str))]
            if len(bad):
                problems.append(f"{name}: column {column!r} must hold strings; rows {_rows(bad.index)} do not")
    for column in REQUIRED_NON_EMPTY:
        empty = frame.index[frame[column].astype(str).str.len() == 0]
        if len(empty):
            problems.append(f"{name}: column {column!r} is empty in rows {_rows(empty)}")
    for column, allowed in ALLOWED_VALUES.items():
        bad = frame.index[~frame[column].isin(allowed)]
        if len(bad):
            values = sorted(set(frame.loc[bad, column].astype(str)))[:5]
            problems.append(f"{name}: column {column!r} has values {values} in rows {_rows(bad)}; allowed {allowed}")
    return problems


def validate_schema(frame: pd.DataFrame, name: str = "manifest") -> pd.DataFrame:
    """Raise :class:`ManifestError` listing every schema problem; return the frame unchanged when valid."""
    problems = check_schema(frame, name)
    if problems:
        raise ManifestError("\n".join(problems))
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write the manifest as Parquet, atomically."""
    from anomaly_ov.io import atomic_path

    frame = validate_schema(normalise(frame), str(path))
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and schema-check a manifest written by :func:`write_manifest`."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found; run `anomaly-ov stage prepare` first")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc}); "
                            "re-run `anomaly-ov stage prepare`") from None
    return validate_schema(normalise(frame), str(path))


def resolve(frame_or_row: Any, column: str = "image_path", workspace: str | Path = ".") -> Path:
    """Absolute-or-workspace path of a row's image (or mask) file."""
    value = frame_or_row[column]
    if not value:
        raise ValueError(f"row has no {column}")
    root = Path(frame_or_row["root"])
    if not root.is_absolute():
        root = Path(workspace) / root
    return root / value


def relative_root(root: str | Path, workspace: str | Path = ".") -> str:
    """Store ``root`` relative to the workspace when it lies inside it (portable DVC outputs), else absolute."""
    root = Path(root).resolve()
    try:
        return root.relative_to(Path(workspace).resolve()).as_posix() or "."
    except ValueError:
        return root.as_posix()


def _rows(index: Iterable[Any], limit: int = 10) -> str:
    items = list(index)
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
