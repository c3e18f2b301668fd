"""MVTec 3D-AD layout reader: organised xyz point clouds rendered into multi-view images + masks.

Accepted layout (docs/model.md, 'Dataset layouts')::

    <cls>/{train,validation,test}/<good|defect>/xyz/NNN.tiff    organised cloud [H,W,3] float, zeros = missing
    <cls>/{train,validation,test}/<good|defect>/gt/NNN.png      pixel mask on the same grid (anomalous > 0)
    <cls>/{train,validation,test}/<good|defect>/rgb/NNN.png     colour image (not used: views are rendered)

Per-point labels come from the mask on the same grid; normals come from the organised grid (central differences,
local PCA where a neighbour is missing). The background plane is removed by fitting a plane to the points on the
grid's border (where MVTec 3D-AD only sees the table) and dropping points close to it, as M3DM does.
``validation`` becomes split ``valid`` in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly_ov.data.pointcloud import Cloud, CloudItem, PointCloudError, RenderSettings, normals_grid, normals_pca
from anomaly_ov.data.sources._common import LayoutError, list_images, require_dir, select_categories, subdirs
from anomaly_ov.data.sources._render3d import render_source
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

LAYOUT = "<root>/<cls>/{train,validation,test}/<good|defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}"
SPLITS = {"train": "train", "validation": "valid", "test": "test"}


def read_organised(xyz_path: Path, gt_path: Path | None = None, remove_plane: bool = True,
                   border: int = 10, plane_tolerance: float = 0.005) -> Cloud:
    """Organised xyz TIFF (+ optional grid mask) -> labelled cloud with grid normals."""
    import tifffile

    from anomaly_ov.data.images import ImageError, open_image

    try:
        xyz = np.asarray(tifffile.imread(str(xyz_path)), dtype=np.float64)
    except Exception as exc:  # tifffile raises several types for broken files
        raise PointCloudError(f"{xyz_path}: not a readable TIFF ({exc})") from None
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise PointCloudError(f"{xyz_path}: expected an organised [H,W,3] cloud, got shape {xyz.shape}")
    valid = np.any(xyz != 0, axis=2) & np.all(np.isfinite(xyz), axis=2)
    labels = np.zeros(valid.shape, dtype=bool)
    if gt_path is not None and gt_path.exists():
        try:
            mask = np.asarray(open_image(gt_path, mode=None).convert("L")) > 0
        except ImageError as exc:
            raise PointCloudError(str(exc)) from None
        if mask.shape != valid.shape:
            raise PointCloudError(f"{gt_path}: mask shape {mask.shape} differs from the xyz grid {valid.shape}")
        labels = mask
    keep = valid.copy()
    if remove_plane:
        keep &= ~_background(xyz, valid, border, plane_tolerance)
        if keep.sum() < 0.05 * valid.sum():  # the fit ate the object: keep everything instead
            keep = valid.copy()
    normals, ok = normals_grid(xyz, valid)
    points = xyz[keep]
    point_normals = normals[keep]
    bad = ~ok[keep]
    if bad.any():
        point_normals[bad] = normals_pca(points, 16, subset=np.flatnonzero(bad))
    return Cloud(points, labels[keep], point_normals)


def _background(xyz: np.ndarray, valid: np.ndarray, border: int, tolerance: float) -> np.ndarray:
    """Points within ``tolerance`` of the plane fitted (least squares) to the grid's border points."""
    ring = np.zeros(valid.shape, dtype=bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    sample = xyz[ring & valid]
    if len(sample) < 3:
        return np.zeros(valid.shape, dtype=bool)
    centroid = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - centroid, full_matrices=False)
    normal = vt[2]
    distance = np.abs((xyz - centroid) @ normal)
    return valid & (distance < tolerance)


def read_mvtec3d(source: SourceParams, workspace: Path, settings: RenderSettings | None = None,
                 out_dir: str | Path | None = None) -> pd.DataFrame:
    """Read and render an MVTec-3D-AD-style dataset (renders under ``data/rendered/<source name>``)."""
    root = require_dir(in_workspace(workspace, source.path), f"MVTec 3D-AD root of source {source.name!r}", LAYOUT)
    available = [d.name for d in subdirs(root) if any((d / s).is_dir() for s in SPLITS)]
    items: list[CloudItem] = []
    for category in select_categories(available, source.categories, root, LAYOUT):
        for folder_split, split in SPLITS.items():
            for defect_dir in subdirs(root / category / folder_split):
                xyz_dir = defect_dir / "xyz"
                if not xyz_dir.is_dir():
                    raise LayoutError(f"{defect_dir}: missing xyz/ folder; expected layout: {LAYOUT}")
                defect = defect_dir.name
                for xyz_path in list_images(xyz_dir):
                    gt = defect_dir / "gt" / f"{xyz_path.stem}.png"
                    if defect != "good" and not gt.exists():
                        raise LayoutError(f"{xyz_path}: anomalous sample without its mask {gt}")

                    def load(xyz_path: Path = xyz_path, gt: Path = gt) -> Cloud:
                        return read_organised(xyz_path, gt if gt.exists() else None)

                    inputs = (xyz_path, gt) if gt.exists() else (xyz_path,)
                    items.append(CloudItem(category, split, f"{defect}_{xyz_path.stem}", defect, load, inputs))
    return render_source(items, source, workspace, LAYOUT, settings, out_dir)
