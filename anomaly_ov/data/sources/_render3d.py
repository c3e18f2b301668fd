"""Shared plumbing of the 3D readers: where renders go and how a source's objects become manifest rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.pointcloud import CloudItem, RenderSettings, render_items
from anomaly_ov.data.sources._common import LayoutError
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

#: renders of a 3D source land in <workspace>/RENDER_DIR/<source name>/ unless a reader is told otherwise.
RENDER_DIR = "data/rendered"


def render_source(items: list[CloudItem], source: SourceParams, workspace: Path, layout: str,
                  settings: RenderSettings | None = None, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Render every object of ``source`` (multi-view + masks) and return the manifest of the views."""
    if not items:
        raise LayoutError(f"{in_workspace(workspace, source.path)}: no point clouds found; expected layout: {layout}")
    out = in_workspace(workspace, out_dir) if out_dir is not None else in_workspace(workspace, RENDER_DIR) / source.name
    return render_items(items, out, source.name, source.role, workspace, settings or RenderSettings())
