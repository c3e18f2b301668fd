"""Real3D-AD layout reader: labelled point clouds rendered into multi-view images + masks.

Accepted layout (docs/model.md, 'Dataset layouts')::

    <cls>/train/*template*.pcd          normal training objects
    <cls>/test/*.pcd                    test objects; "good" in the name = normal
    <cls>/gt/<stem>.txt                 x y z label rows for a test object (labels of the anomalous points)

Anomalous objects take their points and labels from the ground-truth text file; normal objects are read from the
PCD. Views are rendered by :mod:`anomaly_ov.data.pointcloud` (one ``group`` per object, view index in ``view``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.pointcloud import CloudItem, RenderSettings, items_from_files
from anomaly_ov.data.sources._common import LayoutError, require_dir, select_categories, subdirs
from anomaly_ov.data.sources._render3d import render_source
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

LAYOUT = (
    "<root>/<cls>/train/*template*.pcd, <root>/<cls>/test/*.pcd ('good' in the name = normal), "
    "<root>/<cls>/gt/<stem>.txt"
)
CLOUD_SUFFIXES = (".pcd", ".ply", ".npy")


def _clouds(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CLOUD_SUFFIXES)


def collect_items(root: Path, categories: list[str], gt_folder: str, layout: str) -> list[CloudItem]:
    """Objects of the Real3D-AD / Anomaly-ShapeNet style layouts (they differ only in the gt folder name)."""
    files: list[tuple[str, str, Path, Path | None]] = []
    for category in categories:
        cdir = root / category
        gt_dir = next((d for d in subdirs(cdir) if d.name.lower() == gt_folder.lower()), cdir / gt_folder)
        for path in _clouds(cdir / "train"):
            if "template" in path.stem.lower():
                files.append((category, "train", path, None))
        for path in _clouds(cdir / "test"):
            gt = gt_dir / f"{path.stem}.txt"
            normal = any(name in path.stem.lower() for name in ("good", "positive", "normal"))
            if not normal and not gt.exists():
                raise LayoutError(f"{path}: anomalous test object without ground truth; expected {gt} "
                                  f"(x y z label rows); layout: {layout}")
            files.append((category, "test", path, gt if gt.exists() and not normal else None))
    return items_from_files(files)


def categories_of(root: Path) -> list[str]:
    return [d.name for d in subdirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]


def read_real3d(source: SourceParams, workspace: Path, settings: RenderSettings | None = None,
                out_dir: str | Path | None = None) -> pd.DataFrame:
    """Read and render a Real3D-AD-style dataset (renders under ``data/rendered/<source name>`` by default)."""
    root = require_dir(in_workspace(workspace, source.path), f"Real3D-AD root of source {source.name!r}", LAYOUT)
    categories = select_categories(categories_of(root), source.categories, root, LAYOUT)
    return render_source(collect_items(root, categories, "gt", LAYOUT), source, workspace, LAYOUT, settings, out_dir)
