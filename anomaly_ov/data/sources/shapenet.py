"""Anomaly-ShapeNet layout reader: labelled point clouds rendered into multi-view images + masks.

Accepted layout (docs/model.md, 'Dataset layouts')::

    <cls>/train/*template*.pcd          normal training objects
    <cls>/test/<id>_<type>.pcd          test objects; type "positive" / "good" = normal, else the defect type
    <cls>/GT/<id>_<type>.txt            x y z label rows of an anomalous test object

The defect type is the last ``_`` token of the name without its trailing digits (``ashtray0_bulge1`` -> bulge).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.pointcloud import RenderSettings
from anomaly_ov.data.sources._common import require_dir, select_categories
from anomaly_ov.data.sources._render3d import render_source
from anomaly_ov.data.sources.real3d import categories_of, collect_items
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

LAYOUT = "<root>/<cls>/train/*template*.pcd, <root>/<cls>/test/<id>_<type>.pcd, <root>/<cls>/GT/<id>_<type>.txt"


def read_shapenet(source: SourceParams, workspace: Path, settings: RenderSettings | None = None,
                  out_dir: str | Path | None = None) -> pd.DataFrame:
    """Read and render an Anomaly-ShapeNet-style dataset (renders under ``data/rendered/<source name>``)."""
    root = require_dir(in_workspace(workspace, source.path), f"Anomaly-ShapeNet root of source {source.name!r}",
                       LAYOUT)
    categories = select_categories(categories_of(root), source.categories, root, LAYOUT)
    return render_source(collect_items(root, categories, "GT", LAYOUT), source, workspace, LAYOUT, settings, out_dir)
