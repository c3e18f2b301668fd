"""Region facts from a defect mask: where, how big, how many, what shape and how it looks.

The instruction answers and the VisA-D&R reference answers are written from these facts, so that every sentence
about location, size and count is true to the mask. Pipeline (docs/model.md, 'The Anomaly-Instruct recipe'):
binarise (``mask > 0``), dilate by ``dilate_px``, merge regions closer than ``merge_distance_px``, then describe
each merged region (8-connectivity). Everything here is deterministic and uses numpy + scipy only.

Locations use a 3 x 3 grid over the image: "upper left", "top", "upper right", "left", "center", "right",
"lower left", "bottom", "lower right".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: (row, column) of the 3 x 3 grid -> location phrase.
GRID_PHRASES: dict[tuple[int, int], str] = {
    (0, 0): "upper left",
    (0, 1): "top",
    (0, 2): "upper right",
    (1, 0): "left",
    (1, 1): "center",
    (1, 2): "right",
    (2, 0): "lower left",
    (2, 1): "bottom",
    (2, 2): "lower right",
}
LOCATIONS: tuple[str, ...] = tuple(GRID_PHRASES.values())

#: location phrase -> the same with a natural preposition ("in the upper left", "at the top").
_PREPOSITION = {
    "top": "at the top",
    "bottom": "at the bottom",
    "left": "on the left side",
    "right": "on the right side",
    "center": "in the center",
}

#: (upper bound of the area fraction, size word); the last bound is open.
SIZE_WORDS: tuple[tuple[float, str], ...] = (
    (0.005, "tiny"),
    (0.02, "small"),
    (0.08, "medium-sized"),
    (0.2, "large"),
    (math.inf, "very large"),
)

SHAPES: tuple[str, ...] = ("speck", "thin line", "elongated streak", "round spot", "oval blob", "irregular patch")

_STRUCT8 = np.ones((3, 3), dtype=bool)


def location_phrase(cx: float, cy: float, width: int, height: int) -> str:
    """3 x 3 grid cell of the point (cx, cy) in an image of the given size."""
    col = min(2, max(0, int(3 * cx / max(width, 1))))
    row = min(2, max(0, int(3 * cy / max(height, 1))))
    return GRID_PHRASES[(row, col)]


def with_preposition(location: str) -> str:
    """"upper left" -> "in the upper left"; "top" -> "at the top"."""
    return _PREPOSITION.get(location, f"in the {location}")


def size_word(fraction: float) -> str:
    for bound, word in SIZE_WORDS:
        if fraction < bound:
            return word
    return SIZE_WORDS[-1][1]


def count_word(n: int) -> str:
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


@dataclass(frozen=True)
class Region:
    """One merged defect region. Coordinates are pixels; ``bbox`` is (x0, y0, x1, y1), x1/y1 exclusive."""

    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area_px: int
    image_fraction: float
    object_fraction: float
    location: str
    size: str
    shape: str
    orientation: str
    appearance: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "bbox": list(self.bbox),
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
            "area_px": self.area_px,
            "image_fraction": round(self.image_fraction, 5),
            "object_fraction": round(self.object_fraction, 5),
            "location": self.location,
            "size": self.size,
            "shape": self.shape,
            "orientation": self.orientation,
            "appearance": self.appearance,
        }


@dataclass(frozen=True)
class MaskFacts:
    """All regions of one mask, largest first, plus whole-mask figures."""

    width: int
    height: int
    regions: tuple[Region, ...] = field(default_factory=tuple)
    image_fraction: float = 0.0
    object_fraction: float = 0.0

    @property
    def count(self) -> int:
        return len(self.regions)

    @property
    def is_empty(self) -> bool:
        return not self.regions

    @property
    def locations(self) -> list[str]:
        """Distinct region locations, largest region first."""
        seen: list[str] = []
        for region in self.regions:
            if region.location not in seen:
                seen.append(region.location)
        return seen

    @property
    def size(self) -> str:
        return size_word(self.image_fraction)

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "image_fraction": round(self.image_fraction, 5),
            "object_fraction": round(self.object_fraction, 5),
            "regions": [r.as_dict() for r in self.regions],
        }


# ------------------------------------------------------------------------------------------------- loading
def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask file as a boolean array (``mask > 0``); resize with nearest neighbour to (width, height)."""
    from PIL import Image

    from anomaly_ov.data.images import open_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: mask file not found (manifest mask_path points here; re-run prepare)")
    img = open_image(path, mode=None).convert("L")
    if size is not None and img.size != tuple(size):
        img = img.resize((int(size[0]), int(size[1])), Image.Resampling.NEAREST)
    return np.asarray(img) > 0


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as float RGB in [0, 1], shape (H, W, 3)."""
    from anomaly_ov.data.images import open_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found (check the manifest's root and image_path)")
    return np.asarray(open_image(path), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------- morphology
def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean (disc) dilation by ``radius`` pixels."""
    from scipy import ndimage

    if radius <= 0 or not mask.any():
        return mask.copy()
    distance = ndimage.distance_transform_edt(~mask)
    return distance <= radius


def merged_labels(mask: np.ndarray, dilate_px: int = 3, merge_distance_px: int = 6) -> tuple[np.ndarray, int]:
    """Label the merged regions of ``mask``: components of the mask dilated by ``dilate_px`` + half the merge
    distance, so that regions whose dilated outlines are less than ``merge_distance_px`` apart share a label.
    Returns (labels restricted to the ``dilate_px``-dilated mask, number of regions)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32), 0
    # Disc dilations compose (r1 then r2 = r1 + r2), so one distance transform gives both masks.
    distance = ndimage.distance_transform_edt(~mask)
    dilated = distance <= dilate_px
    grown = distance <= dilate_px + merge_distance_px / 2.0
    labels, n = ndimage.label(grown, structure=_STRUCT8)
    labels = np.where(dilated, labels, 0)
    return labels, int(n)


# ----------------------------------------------------------------------------------------------- estimates
def foreground_mask(image: np.ndarray, texture: bool = False) -> np.ndarray:
    """Rough object mask: pixels that differ from the border colour. Textures (and images where the estimate is
    implausible: under 5 % or over 95 % of the image) count as whole-image objects."""
    h, w = image.shape[:2]
    whole = np.ones((h, w), dtype=bool)
    if texture or h < 8 or w < 8:
        return whole
    gray = image.mean(axis=2) if image.ndim == 3 else image
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    spread = float(np.median(np.abs(border - background))) + 0.03
    fg = np.abs(gray - background) > 3 * spread
    from scipy import ndimage

    fg = ndimage.binary_closing(fg, structure=_STRUCT8, iterations=2)
    fg = ndimage.binary_fill_holes(fg)
    share = fg.mean()
    return fg if 0.05 <= share <= 0.95 else whole


def _shape(ys: np.ndarray, xs: np.ndarray) -> tuple[str, str]:
    """(shape word, orientation) from the second moments of a region's pixels."""
    n = len(xs)
    if n < 6:
        return "speck", ""
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) + np.eye(2) / 12.0  # pixel extent regularises lines
    evals, evecs = np.linalg.eigh(cov)
    minor, major = max(evals[0], 1e-9), max(evals[1], 1e-9)
    elongation = math.sqrt(major / minor)
    # A filled ellipse with these moments has area 4*pi*sqrt(major*minor): compare the real pixel count.
    fill = n / (4 * math.pi * math.sqrt(major * minor))
    vx, vy = evecs[0, 1], evecs[1, 1]
    angle = math.degrees(math.atan2(abs(vy), abs(vx)))  # 0 = horizontal, 90 = vertical
    orientation = "horizontal" if angle < 22.5 else "vertical" if angle > 67.5 else "diagonal"
    if elongation >= 5.0:
        return "thin line", orientation
    if elongation >= 2.5:
        return "elongated streak", orientation
    if fill < 0.6:
        return "irregular patch", ""
    if elongation < 1.5:
        return "round spot", ""
    return "oval blob", orientation


def _appearance(image: np.ndarray | None, region: np.ndarray, ring: np.ndarray) -> str:
    """"darker", "brighter", "reddish" / "greenish" / "bluish" (a colour shift) or "subtle" vs the surrounding ring."""
    if image is None or not region.any() or not ring.any():
        return "subtle"
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    inside = rgb[region].mean(axis=0)
    outside = rgb[ring].mean(axis=0)
    diff = inside - outside
    luminance = float(diff.mean())
    chroma = diff - luminance
    if abs(luminance) >= 0.06 and abs(luminance) >= np.abs(chroma).max():
        return "darker" if luminance < 0 else "brighter"
    channel = int(np.argmax(chroma))
    if chroma[channel] >= 0.05:
        return ("reddish", "greenish", "bluish")[channel]
    if abs(luminance) >= 0.03:
        return "darker" if luminance < 0 else "brighter"
    return "subtle"


# ----------------------------------------------------------------------------------------------------- facts
def region_facts(
    mask: np.ndarray,
    image: np.ndarray | None = None,
    *,
    dilate_px: int = 3,
    merge_distance_px: int = 6,
    object_mask: np.ndarray | None = None,
) -> MaskFacts:
    """Describe the merged regions of a boolean ``mask`` (H, W). ``image`` (H, W, 3 floats in [0, 1]) enables the
    appearance words; ``object_mask`` (default: whole image) gives the object fractions."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    if image is not None and image.shape[:2] != (h, w):
        raise ValueError(f"image shape {image.shape[:2]} does not match mask shape {(h, w)}")
    from scipy import ndimage

    obj = np.ones_like(mask) if object_mask is None else np.asarray(object_mask, dtype=bool)
    object_px = max(int(obj.sum()), 1)
    total = h * w
    if not mask.any():
        return MaskFacts(width=w, height=h)
    labels, n = merged_labels(mask, dilate_px, merge_distance_px)
    regions: list[Region] = []
    for k in range(1, n + 1):
        area = mask & (labels == k)  # the real defect pixels of this merged region
        if not area.any():
            continue
        ys, xs = np.nonzero(labels == k)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        ay, ax = np.nonzero(area)
        cx, cy = float(ax.mean()) + 0.5, float(ay.mean()) + 0.5
        shape, orientation = _shape(ay, ax)
        # The surrounding ring, computed in a crop around the region (a whole-image distance transform per
        # region is the slowest part on large images).
        pad = max(4, dilate_px + 2) + 1
        y0, y1 = max(0, int(ay.min()) - pad), min(h, int(ay.max()) + pad + 1)
        x0, x1 = max(0, int(ax.min()) - pad), min(w, int(ax.max()) + pad + 1)
        crop = area[y0:y1, x0:x1]
        distance = ndimage.distance_transform_edt(~crop)
        ring = (distance > 1) & (distance <= pad - 1)
        crop_image = image[y0:y1, x0:x1] if image is not None else None
        px = int(area.sum())
        image_fraction = px / total
        regions.append(
            Region(
                bbox=bbox,
                centroid=(cx, cy),
                area_px=px,
                image_fraction=image_fraction,
                object_fraction=min(1.0, px / object_px),
                location=location_phrase(cx, cy, w, h),
                size=size_word(image_fraction),
                shape=shape,
                orientation=orientation,
                appearance=_appearance(crop_image, crop, ring),
            )
        )
    regions.sort(key=lambda r: (-r.area_px, r.centroid[1], r.centroid[0]))
    px_all = int(mask.sum())
    return MaskFacts(
        width=w,
        height=h,
        regions=tuple(regions),
        image_fraction=px_all / total,
        object_fraction=min(1.0, px_all / object_px),
    )


def facts_from_files(
    mask_path: str | Path,
    image_path: str | Path | None = None,
    *,
    dilate_px: int = 3,
    merge_distance_px: int = 6,
    texture: bool = False,
) -> MaskFacts:
    """Load a mask (and its image, resized to match) and return its :class:`MaskFacts`."""
    image = load_image(image_path) if image_path is not None else None
    size = (image.shape[1], image.shape[0]) if image is not None else None
    mask = load_mask(mask_path, size=size)
    obj = foreground_mask(image, texture=texture) if image is not None else None
    return region_facts(mask, image, dilate_px=dilate_px, merge_distance_px=merge_distance_px, object_mask=obj)
