"""Point clouds -> multi-view images: loaders, normals, a z-buffered point-splat renderer, and a synthetic 3D set.

Why: Anomaly-OV reads 3D objects as several rendered views (4 in the release), each view its own image with its
own anomaly tokens. This module turns any labelled point cloud (per-point 0/1 labels) into ``views`` RGB images
seen from a fixed camera ring, plus one anomaly mask per view rendered with the same cameras: a pixel is
anomalous when the front-most point painting it is labelled anomalous, so occluded defects never leak into a
mask. Pure numpy (+ scipy's KD-tree for normals); no display, no OpenGL.

Shading mixes the surface normal (headlight Lambert term, from local PCA or from the organised grid of MVTec
3D-AD) with depth, so geometry-only defects (dents, bumps, cracks) are visible in the images.

Views of one object share a manifest ``group`` and carry their index in ``view``. A view's row is labelled
anomalous when its mask has at least ``min_mask_pixels`` anomalous pixels (what the camera can see); the
object's label is the "any view" of its rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_ov.data.manifest import ManifestRow, from_rows, read_manifest, relative_root, write_manifest
from anomaly_ov.errors import InputError
from anomaly_ov.io import MissingFile, atomic_dir, atomic_path, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

SYNTHETIC_SHAPES = ("cylinder", "box", "bowl", "sphere", "cone", "torus", "capsule", "prism")
SYNTHETIC_DEFECTS = ("dent", "bump", "hole", "crack")
NORMAL_NAMES = ("good", "positive", "normal")
RENDER_VERSION = 5  # 2: gaps between the front surface's splats filled (fill_see_through); 3: holes keep their rims;
# 4: normals keep sharp edges (normals_sharp); 5: elliptical, blended surfel splats (render_view)


class PointCloudError(InputError):
    """A point-cloud file cannot be read; the message names the file and what is wrong."""


@dataclass
class Cloud:
    """Points [N,3] float64, per-point labels [N] uint8 (1 = anomalous) and optional normals [N,3]."""

    points: np.ndarray
    labels: np.ndarray
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 3)
        self.labels = np.asarray(self.labels).reshape(-1).astype(np.uint8)
        if len(self.labels) != len(self.points):
            raise PointCloudError(f"{len(self.labels)} labels for {len(self.points)} points")
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float64).reshape(-1, 3)

    def subsample(self, max_points: int | None, seed: int = 0) -> Cloud:
        """Deterministic random subset of at most ``max_points`` points (all anomalous points kept first)."""
        n = len(self.points)
        if not max_points or n <= max_points:
            return self
        rng = np.random.default_rng(seed)
        anomalous = np.flatnonzero(self.labels > 0)
        normal = np.flatnonzero(self.labels == 0)
        keep_anomalous = anomalous if len(anomalous) <= max_points // 2 else rng.choice(anomalous, max_points // 2,
                                                                                         replace=False)
        rest = rng.choice(normal, min(len(normal), max_points - len(keep_anomalous)), replace=False)
        idx = np.sort(np.concatenate([keep_anomalous, rest]))
        normals = None if self.normals is None else self.normals[idx]
        return Cloud(self.points[idx], self.labels[idx], normals)


# ================================================================================================ file formats
LABEL_FIELDS = ("label", "labels", "scalar_label", "anomaly", "gt")
#: names of the normal's components: PLY's ``nx ny nz`` and PCL's ``normal_x normal_y normal_z``
NORMAL_FIELDS = (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z"))


def read_pcd(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PCD file (DATA ascii, binary or binary_compressed) into ``{field: array}`` with pypcd4.

    Fields keep their declared types (ascii included); a field with COUNT n > 1 comes as ``name__0000`` ...
    ``name__{n-1}`` (pypcd4's naming). A file that pypcd4 cannot parse, or that holds fewer points than its header
    says, raises :class:`PointCloudError` naming the file.
    """
    from pypcd4 import PointCloud

    path = Path(path)
    try:
        cloud = PointCloud.from_path(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pypcd4 raises pydantic, Unicode, Type and Value errors for broken files
        reason = " ".join(str(exc).split())[:300]
        raise PointCloudError(f"{path}: not a readable PCD file ({type(exc).__name__}: {reason}); the header needs "
                              "FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, POINTS and DATA ascii|binary|"
                              "binary_compressed") from None
    expected = int(cloud.metadata.points)
    if len(cloud.pc_data) != expected:
        raise PointCloudError(f"{path}: the header says {expected} points but the file holds {len(cloud.pc_data)} "
                              "(a truncated file?)")
    return {name: np.asarray(cloud.pc_data[name]) for name in cloud.fields}


def write_pcd(path: str | Path, points: np.ndarray, binary: bool = True, labels: np.ndarray | None = None) -> Path:
    """Write x y z (and an optional integer ``label`` field) as PCD, atomically."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields, sizes, types = ["x", "y", "z"], ["4", "4", "4"], ["F", "F", "F"]
    if labels is not None:
        fields.append("label")
        sizes.append("4")
        types.append("U")
    n = len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(sizes)}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join('1' * len(fields))}\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {'binary' if binary else 'ascii'}\n"
    )
    if binary:
        dtype = np.dtype([(f, "<f4") for f in "xyz"] + ([("label", "<u4")] if labels is not None else []))
        records = np.zeros(n, dtype=dtype)
        for i, name in enumerate("xyz"):
            records[name] = points[:, i]
        if labels is not None:
            records["label"] = np.asarray(labels, dtype=np.uint32)
        body = records.tobytes()
    else:
        cols = [points[:, i] for i in range(3)]
        lines = [" ".join(f"{v:.6f}" for v in row) for row in zip(*cols, strict=False)]
        if labels is not None:
            lines = [f"{line} {int(lab)}" for line, lab in zip(lines, labels, strict=False)]
        body = ("\n".join(lines) + "\n").encode()
    with atomic_path(path, suffix=".pcd") as tmp:
        tmp.write_bytes(header.encode() + body)
    return Path(path)


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read the ``vertex`` element of a PLY file (ascii or binary, little/big endian) into ``{property: array}``.

    Each property keeps its declared type, in native byte order. Kept over plyfile (a maintained reader) on
    purpose: benchmarks/pointcloud_readers.py finds the same values at equal or better speed (ascii about 5x
    faster), and plyfile is GPL-3.0, which this Apache-2.0 package cannot depend on.
    """
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' magic / 'end_header')")
    header_lines = raw[:end].decode("ascii", errors="replace").splitlines()
    body_start = raw.find(b"\n", end) + 1
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []  # (name, count, [(property, type or "list")])
    for line in header_lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                elements[-1][2].append((parts[4], "list"))
            else:
                elements[-1][2].append((parts[2], parts[1]))
    if not elements or elements[0][0] != "vertex":
        raise PointCloudError(f"{path}: the first PLY element must be 'vertex' (found {[e[0] for e in elements]})")
    _, count, props = elements[0]
    if any(kind == "list" for _, kind in props):
        raise PointCloudError(f"{path}: list properties on vertices are not supported")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise PointCloudError(f"{path}: unknown PLY format {fmt!r} (ascii, binary_little_endian, binary_big_endian)")
    endian = ">" if fmt == "binary_big_endian" else "<"
    try:
        dtype = np.dtype([(name, endian + _PLY_TYPES[kind]) for name, kind in props])
    except KeyError as exc:
        raise PointCloudError(f"{path}: unsupported PLY property type {exc}") from None
    if fmt == "ascii":
        lines = raw[body_start:].decode("ascii", errors="replace").splitlines()[:count]
        try:
            table = np.loadtxt(lines, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise PointCloudError(f"{path}: ascii vertex rows are not numbers ({exc})") from None
        if table.shape != (count, len(props)):
            raise PointCloudError(f"{path}: expected {count} vertex rows of {len(props)} numbers, found "
                                  f"{table.shape[0]} rows of {table.shape[1] if table.size else 0}")
        return {name: table[:, i].astype(dtype[name]) for i, (name, _) in enumerate(props)}  # the declared types
    if len(raw) - body_start < dtype.itemsize * count:
        raise PointCloudError(f"{path}: the header says {count} vertices of {dtype.itemsize} bytes but the file "
                              f"holds {len(raw) - body_start} bytes after the header (a truncated file?)")
    records = np.frombuffer(raw, dtype=dtype, count=count, offset=body_start)
    return {name: records[name].astype(dtype[name].newbyteorder("=")) for name, _ in props}


def _cloud_from_fields(fields: dict[str, np.ndarray], path: Path) -> Cloud:
    missing = [k for k in "xyz" if k not in fields]
    if missing:
        raise PointCloudError(f"{path}: no {missing} field(s); found {sorted(fields)}")
    points = np.stack([np.asarray(fields[k], dtype=np.float64) for k in "xyz"], axis=1)
    label_key = next((k for k in LABEL_FIELDS if k in fields), None)
    labels = (np.asarray(fields[label_key]) > 0) if label_key else np.zeros(len(points), dtype=bool)
    normals = None
    names = next((names for names in NORMAL_FIELDS if all(k in fields for k in names)), None)
    if names is not None:
        normals = np.stack([np.asarray(fields[k], dtype=np.float64) for k in names], axis=1)
    finite = np.all(np.isfinite(points), axis=1)
    return Cloud(points[finite], labels[finite], None if normals is None else normals[finite])


def read_xyz_labels(path: str | Path) -> Cloud:
    """Whitespace table of ``x y z [label]`` rows (Real3D-AD / Anomaly-ShapeNet ground truth)."""
    path = Path(path)
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2, delimiter=None)
    except ValueError as exc:
        raise PointCloudError(f"{path}: expected rows of 'x y z label' numbers ({exc})") from None
    if table.shape[1] < 3:
        raise PointCloudError(f"{path}: expected at least 3 columns (x y z [label]), found {table.shape[1]}")
    labels = table[:, 3] > 0 if table.shape[1] >= 4 else np.zeros(len(table), dtype=bool)
    return Cloud(table[:, :3], labels)


def load_point_cloud(path: str | Path) -> Cloud:
    """Load ``.pcd``, ``.ply``, ``.npy`` ([N,3] or [N,4] with a label column) or ``.txt`` / ``.xyz``."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{path}: point cloud not found")
    suffix = path.suffix.lower()
    if suffix == ".pcd":
        return _cloud_from_fields(read_pcd(path), path)
    if suffix == ".ply":
        return _cloud_from_fields(read_ply(path), path)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2 or array.shape[1] not in (3, 4, 6, 7):
            raise PointCloudError(f"{path}: expected an [N,3] or [N,4] (x y z label) array, got {array.shape}")
        labels = array[:, 3] > 0 if array.shape[1] in (4, 7) else np.zeros(len(array), dtype=bool)
        return Cloud(array[:, :3], labels)
    if suffix in (".txt", ".xyz"):
        return read_xyz_labels(path)
    raise PointCloudError(f"{path}: unknown point-cloud format {suffix!r} (pcd, ply, npy, txt)")


# ================================================================================================= normals
def normals_pca(points: np.ndarray, k: int = 16, subset: np.ndarray | None = None) -> np.ndarray:
    """Unit normals from local PCA: the smallest-eigenvalue direction of each point's k-neighbourhood."""
    return _local_planes(points, k, subset)[0]


def _local_planes(points: np.ndarray, k: int, subset: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Per query point: (unit normal [M,3], neighbourhood centroid [M,3], surface variation [M], the tree).

    The surface variation ``l0 / (l0 + l1 + l2)`` of the neighbourhood's covariance eigenvalues is 0 on a plane and
    up to 1/3 where the neighbourhood straddles an edge."""
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    query = points if subset is None else points[subset]
    if len(points) < 3:
        return np.tile([0.0, 0.0, 1.0], (len(query), 1)), query.copy(), np.zeros(len(query)), None
    tree = cKDTree(points)
    k = min(k, len(points))
    _, idx = tree.query(query, k=k)
    neigh = points[idx]  # [M,k,3]
    centroid = neigh.mean(axis=1)
    centred = neigh - centroid[:, None]
    cov = np.einsum("mki,mkj->mij", centred, centred)
    vals, vecs = np.linalg.eigh(cov)
    normals = vecs[:, :, 0]
    variation = vals[:, 0] / np.maximum(vals.sum(axis=1), 1e-30)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12), centroid, variation, tree


def normals_sharp(points: np.ndarray, k: int = 16, search_k: int = 48, ratio: float = 4.0,
                  min_variation: float = 0.02) -> np.ndarray:
    """Normals by local PCA that keep sharp edges sharp.

    Near an edge a point's k-neighbourhood straddles two faces and PCA returns a normal between them: rendered, every
    edge of a box becomes a bevelled band whose brightness changes from point to point, a speckle that looks like
    the scratches and cracks a defect detector is trained on. Here a point whose neighbourhood is not flat (surface
    variation above ``min_variation``) looks among its ``search_k`` nearest points for the flat neighbourhoods
    (variation at most ``min_variation``; where there is none, the flattest one) and takes the normal of the one whose
    plane passes nearest to it: on a box, the face it lies on, not the one across the edge. It does so only where
    that plane passes within the median point spacing and its own variation is over ``ratio`` times the plane's.
    Smooth surfaces (spheres, a cylinder's side, dents and bumps) keep their PCA normals: their neighbourhoods are
    all about as flat."""
    points = np.asarray(points, dtype=np.float64)
    normals, centroid, variation, tree = _local_planes(points, k)
    if tree is None or len(points) < max(k, 4):
        return normals
    search_k = min(search_k, len(points))
    spacing = float(np.median(tree.query(points, k=[2])[0]))  # the median distance to the nearest point
    rough = np.flatnonzero(variation > min_variation)
    if not len(rough):
        return normals
    _, cand = tree.query(points[rough], k=search_k)  # [R,S]
    offset = points[rough][:, None, :] - centroid[cand]  # [R,S,3]
    residual = np.abs(np.einsum("rsi,rsi->rs", offset, normals[cand]))
    cand_variation = variation[cand]
    rows = np.arange(len(rough))
    # the plane nearest the point among the flat ones around it (the face it lies on, not the one across the edge);
    # where none is flat, the flattest
    flat = cand_variation <= min_variation
    nearest_flat = np.argmin(np.where(flat, residual, np.inf), axis=1)
    best = np.where(flat.any(axis=1), nearest_flat, np.argmin(cand_variation, axis=1))
    best_variation = cand_variation[rows, best]
    replace = (variation[rough] > ratio * best_variation) & (residual[rows, best] < spacing)
    normals = normals.copy()
    normals[rough[replace]] = normals[cand[rows, best][replace]]
    return normals


def normals_grid(xyz: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals of an organised cloud [H,W,3] from central differences; returns (normals [H,W,3], ok [H,W])."""
    pad = np.pad(xyz, ((1, 1), (1, 1), (0, 0)), mode="edge")
    vpad = np.pad(valid, 1, mode="constant", constant_values=False)
    du = pad[1:-1, 2:] - pad[1:-1, :-2]
    dv = pad[2:, 1:-1] - pad[:-2, 1:-1]
    ok = valid & vpad[1:-1, 2:] & vpad[1:-1, :-2] & vpad[2:, 1:-1] & vpad[:-2, 1:-1]
    normals = np.cross(du, dv)
    norm = np.linalg.norm(normals, axis=2, keepdims=True)
    ok &= norm[..., 0] > 1e-12
    return normals / np.maximum(norm, 1e-12), ok


# ================================================================================================ rendering
@dataclass(frozen=True)
class Camera:
    """Orthographic camera: rows of ``rotation`` are (right, up, forward) in world coordinates."""

    rotation: np.ndarray
    azimuth: float
    elevation: float


def camera_ring(views: int = 4, elevation_deg: float = 30.0, azimuth_offset_deg: float = 45.0) -> list[Camera]:
    """``views`` cameras evenly spaced in azimuth around the world z axis, looking at the origin from above."""
    cameras = []
    for i in range(views):
        az = np.deg2rad(azimuth_offset_deg + 360.0 * i / views)
        el = np.deg2rad(elevation_deg)
        position = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        forward = -position
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        cameras.append(Camera(np.stack([right, up, forward]), float(np.rad2deg(az)), float(elevation_deg)))
    return cameras


def normalisation(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, scale): the bounding-box centre and the largest distance from it (so the object fits the view)."""
    if len(points) == 0:
        return np.zeros(3), 1.0
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    scale = float(np.linalg.norm(points - centre, axis=1).max()) or 1.0
    return centre, scale


def project(points: np.ndarray, camera: Camera, size: int, centre: np.ndarray, scale: float, margin: float = 0.9
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel (row, col) as floats and depth (larger = farther) of each point for an orthographic camera."""
    cam = (np.asarray(points, dtype=np.float64) - centre) @ camera.rotation.T / scale * margin
    col = (cam[:, 0] * 0.5 + 0.5) * size
    row = (0.5 - cam[:, 1] * 0.5) * size
    return row, col, cam[:, 2]


def splat_radius(points: np.ndarray, size: int, scale: float, margin: float = 0.9, max_radius: int = 5) -> int:
    """Splat radius in pixels from the median nearest-neighbour spacing (so surfaces render without holes)."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return 1
    rng = np.random.default_rng(0)
    sample = points if len(points) <= 2000 else points[rng.choice(len(points), 2000, replace=False)]
    dist, _ = cKDTree(points).query(sample, k=2)
    spacing_px = float(np.median(dist[:, 1])) / scale * margin * size / 2.0
    return int(np.clip(np.ceil(spacing_px), 1, max_radius))


#: the four axes along which a pixel is "between" two nearer pixels (horizontal, vertical, both diagonals)
_FILL_AXES = ((0, 1), (1, 0), (1, 1), (1, -1))


def fill_see_through(point_index: np.ndarray, depth: np.ndarray, reach: int = 2, gap: float = 0.125,
                     passes: int = 2, min_axes: int = 3) -> np.ndarray:
    """Give the gaps of the front surface the nearest point around them (screen-space hole filling).

    A pixel is a gap when, along at least ``min_axes`` of four axes (horizontal, vertical, both diagonals), both
    sides hold a point within ``reach`` pixels that is nearer than the pixel's own by more than ``gap`` (depth units
    of :func:`project`; background pixels are infinitely far). A smooth surface, however steep, rises on one side
    and falls on the other, so it never qualifies. Pinholes do along all four axes and slits up to ``2 * reach - 1``
    pixels wide along three (a second pass fills the pixels beside a filled middle), while a pixel on the rim of a
    wider hole has nearer points on both sides along one or two axes only (the rim's tangent), so real holes keep
    their far side and their size. The gap takes the nearest of those points (its shading and label), so the fill is
    the front surface's own.

    Args:
        point_index: [H,W] index of the front-most point per pixel, -1 for background.
        depth: [P] depth of each point (larger = farther).
    Returns the filled [H,W] index (a new array).
    """
    index = point_index.copy()
    h, w = index.shape
    for _ in range(passes):
        own = np.where(index >= 0, depth[np.maximum(index, 0)], np.inf)
        padded_depth = np.pad(own, reach, constant_values=np.inf)
        padded_index = np.pad(index, reach, constant_values=-1)
        best_depth, best_index = np.full((h, w), np.inf), index.copy()
        axes = np.zeros((h, w), dtype=np.int64)
        for dy, dx in _FILL_AXES:
            sides = []
            for sign in (1, -1):
                near_depth, near_index = np.full((h, w), np.inf), np.full((h, w), -1, dtype=index.dtype)
                for k in range(1, reach + 1):
                    y0, x0 = reach + sign * k * dy, reach + sign * k * dx
                    d = padded_depth[y0:y0 + h, x0:x0 + w]
                    closer = d < near_depth
                    near_depth = np.where(closer, d, near_depth)
                    near_index = np.where(closer, padded_index[y0:y0 + h, x0:x0 + w], near_index)
                sides.append((near_depth, near_index))
            (d1, i1), (d2, i2) = sides
            between = (d1 < own - gap) & (d2 < own - gap)
            axes += between
            nearer_depth, nearer_index = np.where(d1 <= d2, d1, d2), np.where(d1 <= d2, i1, i2)
            take = between & (nearer_depth < best_depth)
            best_depth = np.where(take, nearer_depth, best_depth)
            best_index = np.where(take, nearer_index, best_index)
        filled = np.where(axes >= min_axes, best_index, index)
        if np.array_equal(filled, index):
            break
        index = filled
    return index


@dataclass
class View:
    """One rendered view: RGB image, anomaly mask, index of the front-most point per pixel (-1 = background)."""

    image: np.ndarray
    mask: np.ndarray
    point_index: np.ndarray
    camera: Camera = field(repr=False)


def render_view(points: np.ndarray, normals: np.ndarray, labels: np.ndarray, camera: Camera, size: int,
                centre: np.ndarray, scale: float, radius: int = 1, colour: Sequence[float] = (0.85, 0.85, 0.8),
                background: int = 0, fill_reach: int = 2, fill_gap_px: float = 8.0, blend_px: float = 3.0,
                min_squash: float = 0.5) -> View:
    """Z-buffered surfel splatting: each point paints the disc of its tangent plane as the camera sees it.

    Each point's footprint is an ellipse of ``radius + 0.75`` pixels across its normal's screen direction, shrunk
    along it by ``|n . view|`` (at least ``min_squash``), so a face seen at a grazing angle does not spill its splats
    across the edge into its neighbour or past the silhouette. The nearest footprint sets a pixel's depth; every
    footprint within ``blend_px`` pixel widths of it is blended in, weighted by a Gaussian of its distance to its
    point, so where two faces meet at an edge their splats average into one line instead of interleaving as a comb
    (square splats with a hard z-test drew box and cylinder edges as a sawtooth band that no real part has).

    Randomly sampled surfaces leave gaps between splats wider than the median spacing; through them the z-buffer
    shows the far side of the object (or the background) as a scatter of darker pixels, which look like small
    defects. :func:`fill_see_through` closes pinholes and slits up to ``2 * fill_reach - 1`` pixels wide (0 turns it
    off) whose surroundings are at least ``fill_gap_px`` pixel widths nearer; wider holes keep their far side.
    A pixel is anomalous in the mask when the blended weight of its anomalous points is at least half.

    Args:
        points: [P,3] positions; normals: [P,3] unit normals (sign ignored); labels: [P] (> 0 = anomalous).
    """
    row, col, depth = project(points, camera, size, centre, scale)
    n = len(points)
    r0, c0 = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if dy * dy + dx * dx <= radius * radius + radius]
    rows = np.concatenate([r0 + dy for dy, _ in offsets]) if n else np.zeros(0, np.int64)
    cols = np.concatenate([c0 + dx for _, dx in offsets]) if n else np.zeros(0, np.int64)
    owner = np.tile(np.arange(n), len(offsets))
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    rows, cols, owner = rows[inside], cols[inside], owner[inside]

    # The footprint: distance to the point's projected centre, measured across the normal's screen direction as
    # is and along it divided by the squash (a disc seen at an angle is an ellipse).
    normal_cam = np.asarray(normals, dtype=np.float64) @ camera.rotation.T  # (right, up, forward) components
    in_plane = np.hypot(normal_cam[:, 0], normal_cam[:, 1])
    tilted = in_plane > 1e-9
    safe = np.where(tilted, in_plane, 1.0)
    along_row = np.where(tilted, -normal_cam[:, 1] / safe, 1.0)  # screen rows grow downwards, "up" upwards
    along_col = np.where(tilted, normal_cam[:, 0] / safe, 0.0)
    squash = np.maximum(np.abs(normal_cam[:, 2]), min_squash)
    d_row, d_col = rows + 0.5 - row[owner], cols + 0.5 - col[owner]
    along = (d_row * along_row[owner] + d_col * along_col[owner]) / squash[owner]
    across = d_row * along_col[owner] - d_col * along_row[owner]
    distance2 = along * along + across * across
    footprint = radius + 0.75
    own_pixel = (rows == r0[owner]) & (cols == c0[owner])  # a point always paints the pixel it falls in
    keep = (distance2 <= footprint * footprint) | own_pixel
    rows, cols, owner, distance2 = rows[keep], cols[keep], owner[keep], distance2[keep]
    pix = rows * size + cols
    # The centre of a point beats the rim of a neighbour's footprint at the same depth (tiny depth bias).
    z = depth[owner] + distance2 * 1e-9
    order = np.lexsort((z, pix))
    pix_sorted = pix[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    winners = order[first]
    front_depth = np.full(size * size, np.inf)
    front_depth[pix[winners]] = z[winners]
    nearest: np.ndarray = np.full(size * size, -1, dtype=np.int64)
    nearest[pix[winners]] = owner[winners]
    nearest = nearest.reshape(size, size)
    point_index = nearest
    if fill_reach > 0 and n:
        point_index = fill_see_through(nearest, depth, reach=fill_reach, gap=fill_gap_px * 2.0 / size)

    lambert = np.abs(np.asarray(normals) @ camera.rotation[2])  # headlight: light along the view direction
    dmin, dmax = (depth.min(), depth.max()) if n else (0.0, 1.0)
    near = 1.0 - (depth - dmin) / max(dmax - dmin, 1e-9)
    point_intensity = np.clip(0.15 + 0.7 * lambert + 0.15 * near, 0.0, 1.0)
    anomalous = (np.asarray(labels) > 0).astype(np.float64)
    sigma = 0.6 * footprint
    weight = np.exp(-distance2 / (2.0 * sigma * sigma)) * (z <= front_depth[pix] + blend_px * 2.0 / size)
    total = np.maximum(np.bincount(pix, weight, size * size), 1e-12)
    intensity = np.bincount(pix, weight * point_intensity[owner], size * size) / total
    anomaly_share = np.bincount(pix, weight * anomalous[owner], size * size) / total
    filled = (point_index != nearest).ravel()  # gaps closed by fill_see_through take their new point as is
    index = point_index.ravel()
    intensity[filled] = point_intensity[index[filled]]
    anomaly_share[filled] = anomalous[index[filled]]

    hit = index >= 0
    image = np.full((size * size, 3), background, dtype=np.uint8)
    image[hit] = np.rint(intensity[hit, None] * np.asarray(colour)[None, :] * 255).astype(np.uint8)
    mask = hit & (anomaly_share >= 0.5)
    return View(image.reshape(size, size, 3), mask.reshape(size, size), point_index, camera)


def render_views(cloud: Cloud, views: int = 4, size: int = 128, elevation_deg: float = 30.0,
                 radius: int | None = None, normal_k: int = 16) -> list[View]:
    """Render ``cloud`` from the camera ring (normals by local PCA with sharp edges, :func:`normals_sharp`, unless
    the cloud carries them)."""
    if len(cloud.points) == 0:
        raise PointCloudError("cannot render an empty point cloud")
    normals = cloud.normals if cloud.normals is not None else normals_sharp(cloud.points, normal_k)
    centre, scale = normalisation(cloud.points)
    if radius is None:
        radius = splat_radius(cloud.points, size, scale)
    return [render_view(cloud.points, normals, cloud.labels, cam, size, centre, scale, radius)
            for cam in camera_ring(views, elevation_deg)]


# ====================================================================================== rendering a dataset
@dataclass(frozen=True)
class CloudItem:
    """One object of a 3D dataset, rendered lazily: ``load`` returns its labelled cloud."""

    category: str
    split: str
    stem: str
    defect_type: str  # "good" for normal objects
    load: Callable[[], Cloud]
    inputs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RenderSettings:
    views: int = 4
    image_size: int = 128
    elevation_deg: float = 30.0
    max_points: int | None = 200_000
    min_mask_pixels: int = 4

    def key(self) -> dict[str, Any]:
        return {"version": RENDER_VERSION, **self.__dict__}


def _cache_key(settings: RenderSettings, items: Sequence[CloudItem], source: str) -> str:
    parts: list[Any] = [settings.key(), source]
    for item in items:
        parts.append([item.category, item.split, item.stem, item.defect_type])
        for path in item.inputs:
            stat = path.stat()
            parts.append([path.as_posix(), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stable_seed(*parts: Any) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def render_items(items: Sequence[CloudItem], out_root: str | Path, source: str, role: str,
                 workspace: str | Path = ".", settings: RenderSettings = RenderSettings()) -> pd.DataFrame:
    """Render every object's views + masks under ``out_root`` and return (and store) the manifest.

    Layout: ``<cat>/<split>/<defect>/<stem>/view_<k>.png`` and ``.../mask_<k>.png``. The folder is replaced as a
    whole; when the inputs and settings are unchanged (same cache key) the previous render is reused.
    """
    out_root = Path(out_root)
    key = _cache_key(settings, items, source)
    stamp = out_root / "render.json"
    manifest_path = out_root / "manifest.parquet"
    if stamp.exists() and manifest_path.exists():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                return read_manifest(manifest_path)
        except (ValueError, OSError):
            pass
    root = relative_root(out_root, workspace)
    rows: list[dict[str, Any]] = []
    with atomic_dir(out_root) as tmp:
        from anomaly_ov.console import track

        for item in track(items, f"render {source}: point clouds", unit="objects"):
            rows.extend(_render_item(item, tmp, root, source, role, settings))
        frame = from_rows(rows)
        write_manifest(frame, tmp / "manifest.parquet")
        atomic_write_text(tmp / "render.json", json.dumps({"key": key, "settings": settings.key()}, indent=2))
    return frame


def _render_item(item: CloudItem, out: Path, root: str, source: str, role: str, settings: RenderSettings
                 ) -> list[dict[str, Any]]:
    from anomaly_ov.data.medical import write_mask, write_png

    cloud = item.load().subsample(settings.max_points, stable_seed(item.category, item.split, item.stem))
    views = render_views(cloud, settings.views, settings.image_size, settings.elevation_deg)
    folder = f"{item.category}/{item.split}/{item.defect_type}/{item.stem}"
    group = f"{source}/{folder}"
    rows = []
    for k, view in enumerate(views):
        image_rel = f"{folder}/view_{k}.png"
        write_png(out / image_rel, view.image)
        visible = item.defect_type != "good" and int(view.mask.sum()) >= settings.min_mask_pixels
        mask_rel = ""
        if visible:
            mask_rel = f"{folder}/mask_{k}.png"
            write_mask(out / mask_rel, view.mask)
        rows.append(ManifestRow(
            image_path=image_rel, root=root, mask_path=mask_rel, source=source, category=item.category,
            split=item.split, role=role, label="anomaly" if visible else "normal",
            defect_type=item.defect_type if visible else "good", modality="3d", view=str(k), group=group,
            width=settings.image_size, height=settings.image_size,
        ).as_dict())
    return rows


def defect_from_name(stem: str) -> str:
    """``"012_bulge"`` / ``"ashtray0_crack1"`` / ``"339_good"`` -> ``"bulge"`` / ``"crack"`` / ``"good"``."""
    if any(name in stem.lower() for name in NORMAL_NAMES):
        return "good"
    token = re.sub(r"\d+$", "", stem.split("_")[-1]).lower()
    return token or "defect"


# =========================================================================================== synthetic objects
def _sample_shape(shape: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform surface samples of a primitive and their outward normals."""
    if shape == "cylinder":
        r, h = rng.uniform(0.4, 0.55), rng.uniform(0.5, 0.8)
        side, cap = 2 * np.pi * r * 2 * h, np.pi * r * r
        k_side = int(n * side / (side + 2 * cap))
        t = rng.uniform(0, 2 * np.pi, k_side)
        z = rng.uniform(-h, h, k_side)
        p_side = np.stack([r * np.cos(t), r * np.sin(t), z], 1)
        n_side = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1)
        k_cap = n - k_side
        rad = r * np.sqrt(rng.uniform(0, 1, k_cap))
        t2 = rng.uniform(0, 2 * np.pi, k_cap)
        sign = np.where(rng.uniform(0, 1, k_cap) < 0.5, -1.0, 1.0)
        p_cap = np.stack([rad * np.cos(t2), rad * np.sin(t2), sign * h], 1)
        n_cap = np.stack([np.zeros(k_cap), np.zeros(k_cap), sign], 1)
        return np.concatenate([p_side, p_cap]), np.concatenate([n_side, n_cap])
    if shape == "box":
        half = rng.uniform(0.3, 0.6, 3)
        areas = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]] * 2)
        face = rng.choice(6, n, p=areas / areas.sum())
        axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
        pts = rng.uniform(-1, 1, (n, 3)) * half
        pts[np.arange(n), axis] = sign * half[axis]
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return pts, nrm
    if shape == "bowl":
        big_r, depth = rng.uniform(0.5, 0.6), rng.uniform(0.35, 0.5)
        rad = big_r * np.sqrt(rng.uniform(0, 1, n))
        t = rng.uniform(0, 2 * np.pi, n)
        a = depth / big_r**2
        z = a * rad**2 - depth / 2
        pts = np.stack([rad * np.cos(t), rad * np.sin(t), z], 1)
        grad = np.stack([-2 * a * pts[:, 0], -2 * a * pts[:, 1], np.ones(n)], 1)  # inner (upward) side
        return pts, grad / np.linalg.norm(grad, axis=1, keepdims=True)
    if shape == "sphere":
        v = rng.standard_normal((n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v * rng.uniform(0.45, 0.55), v
    if shape == "cone":  # a cone on its base disc
        r, h = rng.uniform(0.4, 0.55), rng.uniform(0.7, 1.0)
        slant = np.hypot(r, h)
        side, base = np.pi * r * slant, np.pi * r * r
        k_side = int(n * side / (side + base))
        rad = r * np.sqrt(rng.uniform(0, 1, k_side))  # uniform over the lateral surface
        t = rng.uniform(0, 2 * np.pi, k_side)
        p_side = np.stack([rad * np.cos(t), rad * np.sin(t), h / 2 - h * rad / r], 1)
        n_side = np.stack([h * np.cos(t), h * np.sin(t), np.full(k_side, r)], 1) / slant
        k_base = n - k_side
        rad2, t2 = r * np.sqrt(rng.uniform(0, 1, k_base)), rng.uniform(0, 2 * np.pi, k_base)
        p_base = np.stack([rad2 * np.cos(t2), rad2 * np.sin(t2), np.full(k_base, -h / 2)], 1)
        n_base = np.tile([0.0, 0.0, -1.0], (k_base, 1))
        return np.concatenate([p_side, p_base]), np.concatenate([n_side, n_base])
    if shape == "torus":  # a ring: tube radius a around a circle of radius big_r (rejection-sampled to be uniform)
        big_r, a = rng.uniform(0.38, 0.45), rng.uniform(0.12, 0.18)
        u, v = np.empty(0), np.empty(0)
        while len(u) < n:
            cu, cv = rng.uniform(0, 2 * np.pi, 2 * n), rng.uniform(0, 2 * np.pi, 2 * n)
            keep = rng.uniform(0, 1, 2 * n) < (big_r + a * np.cos(cv)) / (big_r + a)
            u, v = np.concatenate([u, cu[keep]]), np.concatenate([v, cv[keep]])
        u, v = u[:n], v[:n]
        nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
        centre = np.stack([big_r * np.cos(u), big_r * np.sin(u), np.zeros(n)], 1)
        return centre + a * nrm, nrm
    if shape == "capsule":  # a cylinder with hemispherical ends, lying along x
        r, half_length = rng.uniform(0.22, 0.3), rng.uniform(0.25, 0.4)
        side, caps = 2 * np.pi * r * 2 * half_length, 4 * np.pi * r * r
        k_side = int(n * side / (side + caps))
        t, along = rng.uniform(0, 2 * np.pi, k_side), rng.uniform(-half_length, half_length, k_side)
        n_side = np.stack([np.zeros(k_side), np.cos(t), np.sin(t)], 1)
        p_side = n_side * r + np.stack([along, np.zeros(k_side), np.zeros(k_side)], 1)
        k_caps = n - k_side
        d = rng.standard_normal((k_caps, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        p_caps = d * r + np.stack([np.sign(d[:, 0]) * half_length, np.zeros(k_caps), np.zeros(k_caps)], 1)
        return np.concatenate([p_side, p_caps]), np.concatenate([n_side, d])
    if shape == "prism":  # an upright hexagonal prism: six flat sides with edges, two flat caps
        r, h = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.7)
        apothem = r * np.cos(np.pi / 6)
        side, caps = 6 * r * 2 * h, 2 * 3 * np.sqrt(3) / 2 * r * r
        k_side = int(n * side / (side + caps))
        face = rng.integers(0, 6, k_side)
        normal_angle = face * np.pi / 3
        along = rng.uniform(-r / 2, r / 2, k_side)
        n_side = np.stack([np.cos(normal_angle), np.sin(normal_angle), np.zeros(k_side)], 1)
        tangent = np.stack([-np.sin(normal_angle), np.cos(normal_angle), np.zeros(k_side)], 1)
        p_side = n_side * apothem + tangent * along[:, None]
        p_side[:, 2] = rng.uniform(-h, h, k_side)
        k_caps = n - k_side
        pts = rng.uniform(-r, r, (4 * k_caps + 16, 2))
        angle = np.mod(np.arctan2(pts[:, 1], pts[:, 0]), np.pi / 3) - np.pi / 6
        inside = np.hypot(pts[:, 0], pts[:, 1]) * np.cos(angle) < apothem
        pts = pts[inside][:k_caps]
        sign = np.where(rng.uniform(0, 1, len(pts)) < 0.5, -1.0, 1.0)
        p_caps = np.stack([pts[:, 0], pts[:, 1], sign * h], 1)
        n_caps = np.stack([np.zeros(len(pts)), np.zeros(len(pts)), sign], 1)
        return np.concatenate([p_side, p_caps]), np.concatenate([n_side, n_caps])
    raise ValueError(f"unknown synthetic shape {shape!r}; choose from {SYNTHETIC_SHAPES}")


def _visible_anchor(points: np.ndarray, normals: np.ndarray, rng: np.random.Generator) -> int:
    """A point facing the first camera of the ring (which every ring has), so the defect shows in view 0."""
    towards = -camera_ring(1)[0].rotation[2]  # from the object to the camera
    facing = normals @ towards
    candidates = np.flatnonzero(facing >= max(0.3, float(np.percentile(facing, 85))))
    return int(rng.choice(candidates if len(candidates) else np.arange(len(points))))


def make_defect(points: np.ndarray, normals: np.ndarray, defect: str, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Apply a dent / bump / hole / crack around a visible anchor; return (points, per-point labels)."""
    anchor = _visible_anchor(points, normals, rng)
    p0, n0 = points[anchor], normals[anchor]
    dist = np.linalg.norm(points - p0, axis=1)
    labels = np.zeros(len(points), dtype=np.uint8)
    points = points.copy()
    if defect in ("dent", "bump"):
        rho, amount = rng.uniform(0.15, 0.25), rng.uniform(0.08, 0.14)
        inside = dist < rho
        fall = 1.0 - (dist[inside] / rho) ** 2
        sign = -1.0 if defect == "dent" else 1.0
        points[inside] += sign * amount * fall[:, None] * normals[inside]
        labels[inside] = (amount * fall > 0.01).astype(np.uint8)
        return points, labels
    if defect == "hole":
        rho = rng.uniform(0.08, 0.14)
        rim = (dist >= rho) & (dist < rho * 1.5)
        labels[rim] = 1
        keep = dist >= rho
        return points[keep], labels[keep]
    if defect == "crack":
        tangent = np.cross(n0, rng.standard_normal(3))
        tangent /= np.linalg.norm(tangent) + 1e-12
        length, width = rng.uniform(0.35, 0.5), rng.uniform(0.025, 0.04)
        rel = points - p0
        along = np.clip(rel @ tangent, -length / 2, length / 2)
        off = np.linalg.norm(rel - along[:, None] * tangent, axis=1)
        inside = off < width
        points[inside] -= 0.06 * (1 - off[inside] / width)[:, None] * normals[inside]
        labels[inside] = 1
        return points, labels
    raise ValueError(f"unknown synthetic defect {defect!r}; choose from {SYNTHETIC_DEFECTS}")


def synthetic_object(shape: str, n_points: int, seed: int, defect: str | None = None) -> Cloud:
    """One primitive (randomly sized and turned about z) with an optional labelled defect."""
    rng = np.random.default_rng(seed)
    points, normals = _sample_shape(shape, n_points, rng)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    points, normals = points @ rot.T, normals @ rot.T
    if defect is None:
        return Cloud(points, np.zeros(len(points), dtype=np.uint8))
    points, labels = make_defect(points, normals, defect, rng)
    return Cloud(points, labels)


def generate_synthetic_3d(out_dir: str | Path, shapes: Sequence[str] = ("cylinder", "box", "bowl"),
                          normal_per_shape: int = 4, anomaly_per_shape: int = 4, train_per_shape: int = 2,
                          points_per_object: int = 20000, seed: int = 0,
                          defects: Sequence[str] = SYNTHETIC_DEFECTS) -> Path:
    """Write synthetic labelled clouds in the Real3D-AD layout under ``out_dir`` (deterministic); return it.

    ``<shape>/train/<shape>_template_<i>.pcd``, ``<shape>/test/<i>_good.pcd`` / ``<i>_<defect>.pcd`` and
    ``<shape>/gt/<stem>.txt`` (x y z label rows) for every anomalous test object. Defects cycle through
    ``defects``. Replaced as a whole, atomically.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for shape in shapes:
            for i in range(train_per_shape):
                cloud = synthetic_object(shape, points_per_object, stable_seed(seed, shape, "train", i))
                write_pcd(tmp / shape / "train" / f"{shape}_template_{i}.pcd", cloud.points)
            for i in range(normal_per_shape):
                cloud = synthetic_object(shape, points_per_object, stable_seed(seed, shape, "good", i))
                write_pcd(tmp / shape / "test" / f"{i:03d}_good.pcd", cloud.points)
            for i in range(anomaly_per_shape):
                defect = defects[i % len(defects)]
                cloud = synthetic_object(shape, points_per_object, stable_seed(seed, shape, defect, i), defect)
                stem = f"{normal_per_shape + i:03d}_{defect}"
                write_pcd(tmp / shape / "test" / f"{stem}.pcd", cloud.points)
                table = np.concatenate([cloud.points, cloud.labels[:, None].astype(np.float64)], axis=1)
                with atomic_path(tmp / shape / "gt" / f"{stem}.txt") as gt:
                    np.savetxt(gt, table, fmt=["%.6f", "%.6f", "%.6f", "%d"])
    return out_dir


def items_from_files(files: Iterable[tuple[str, str, Path, Path | None]]) -> list[CloudItem]:
    """Helper for readers: (category, split, cloud file, ground-truth file or None) -> CloudItems.

    Objects of the ``train`` split are normal whatever their name; elsewhere the name gives the defect type.
    """
    items = []
    for category, split, path, gt in files:
        stem = path.stem
        defect = "good" if split == "train" else defect_from_name(stem)

        def load(path: Path = path, gt: Path | None = gt) -> Cloud:
            return read_xyz_labels(gt) if gt is not None else load_point_cloud(path)

        inputs = (path,) if gt is None else (path, gt)
        items.append(CloudItem(category, split, stem, defect, load, inputs))
    return items
