"""Medical images for the extension: DICOM / NIfTI -> 8-bit RGB PNG slices (+ masks), and a synthetic medical set.

Why: the model reads 8-bit RGB images, while scanners write signed 12-16 bit values in physical units (Hounsfield
units for CT). Conversion applies the DICOM modality LUT or rescale (slope / intercept), a VOI transform (a CT
preset window such as ``brain`` or ``lung``, an explicit centre / width, the file's own VOI LUT or window, or the
value range) and the MONOCHROME1 inversion, as a radiology viewer would, so that the images match what BMAD-style
datasets hold. The DICOM maths is pydicom's own (``pydicom.pixels.apply_modality_lut``, ``apply_voi``,
``apply_windowing``); this module only chooses the window and names the file when something fails.

Converted and synthetic sets are written in the BMAD pixel-level layout
(``<cat>/<split>/{good,Ungood}/img/*.png`` with masks in ``.../Ungood/label/*.png``) so that one reader
(``anomaly_ov.data.sources.bmad``) serves real and generated data alike. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_ov.data.manifest import ManifestRow, from_rows, relative_root, write_manifest
from anomaly_ov.errors import InputError
from anomaly_ov.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

#: CT display windows (centre, width) in Hounsfield units, as radiology viewers ship them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}
#: Window = preset name, (centre, width), "auto" (the file's VOI LUT or window, else the value range), "minmax", or
#: "percentile".
Window = str | tuple[float, float] | None

BMAD_ANOMALY_DIR = "Ungood"
SYNTHETIC_MODALITIES = ("brain_mri", "liver_ct", "chest_xray", "retina_oct", "retina_fundus")


class MedicalFormatError(InputError):
    """A DICOM / NIfTI file cannot be turned into an image; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------------ windowing
def resolve_window(window: Window, values: np.ndarray | None = None, default: tuple[float, float] | None = None,
                   ) -> tuple[float, float]:
    """Return (low, high) display limits for ``window``.

    ``default`` is the file's own (centre, width) used by ``"auto"``; without it ``"auto"`` falls back to the
    value range of ``values``.
    """
    if isinstance(window, tuple | list):
        centre, width = _centre_width(window)
        return centre - width / 2.0, centre + width / 2.0
    name = (window or "auto").lower()
    if name in WINDOW_PRESETS:
        return resolve_window(WINDOW_PRESETS[name])
    if name == "auto" and default is not None:
        return resolve_window(default)
    if name in ("auto", "minmax", "percentile"):
        if values is None or values.size == 0:
            raise ValueError(f"window {name!r} needs pixel values")
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return 0.0, 1.0
        if name == "percentile":
            low, high = np.percentile(finite, [0.5, 99.5])
        else:
            low, high = float(finite.min()), float(finite.max())
        return float(low), float(high) if high > low else float(low) + 1.0
    raise ValueError(
        f"unknown window {window!r}; use one of {sorted(WINDOW_PRESETS)}, 'auto', 'minmax', 'percentile' "
        "or a (centre, width) pair"
    )


def _centre_width(window: Sequence[float]) -> tuple[float, float]:
    if len(window) != 2:
        raise ValueError(f"window {window!r} must be (centre, width)")
    centre, width = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return centre, width


def window_to_uint8(values: np.ndarray, centre: float, width: float, function: str = "LINEAR",
                    invert: bool = False) -> np.ndarray:
    """The DICOM VOI windowing of ``values`` (physical units) to 0..255, by ``pydicom.pixels.apply_windowing``.

    ``function`` is the VOI LUT Function: ``LINEAR`` (the standard's default, what viewers apply to a window
    centre / width; needs width >= 1), ``LINEAR_EXACT`` (``[centre - width/2, centre + width/2]`` maps exactly onto
    0..255) or ``SIGMOID``. ``invert`` flips the result (MONOCHROME1: low values are white).
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # an 8-bit unsigned MONOCHROME2 description: apply_windowing's output range is then exactly 0..255
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored, voi.PixelRepresentation = 8, 0
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = centre, width, function
    windowed = apply_windowing(np.asarray(values, dtype=np.float64), voi)
    out = np.rint(np.nan_to_num(windowed, nan=0.0)).clip(0, 255).astype(np.uint8)
    return (255 - out) if invert else out


def apply_window(values: np.ndarray, low: float, high: float, invert: bool = False) -> np.ndarray:
    """Map ``values`` linearly from [low, high] to [0, 255] (clipped, rounded) as uint8; ``invert`` flips it.

    The DICOM ``LINEAR_EXACT`` window of centre (low + high) / 2 and width high - low (:func:`window_to_uint8`).
    """
    return window_to_uint8(values, (low + high) / 2.0, max(high - low, 1e-12), "LINEAR_EXACT", invert)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """HxW uint8 -> HxWx3 uint8 (RGB input passes through)."""
    if gray.ndim == 3 and gray.shape[2] == 3:
        return gray.astype(np.uint8)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {gray.shape}")
    return np.repeat(gray[:, :, None], 3, axis=2)


# ---------------------------------------------------------------------------------------------------- DICOM
@dataclass(frozen=True)
class DicomImage:
    """A DICOM frame: its values in physical units and the 8-bit image a viewer would show."""

    values: np.ndarray  # HxW float64 after the modality LUT / rescale (HU for CT)
    image: np.ndarray  # HxW uint8 after the VOI window or LUT (and the MONOCHROME1 inversion)
    window: str  # how ``image`` was windowed, e.g. "LINEAR 40/80", "VOI LUT 0", "LINEAR_EXACT -1024/2048"
    invert: bool
    modality: str
    path: str


def _voi_lut_to_uint8(values: np.ndarray, ds: Any, invert: bool) -> np.ndarray:
    """The file's first VOI LUT (``pydicom.pixels.apply_voi``), its output scaled from the LUT's bit depth."""
    from pydicom.pixels import apply_voi

    integral = np.rint(values)
    if not np.array_equal(integral, values):
        raise ValueError("a VOI LUT maps integer values, and the modality LUT / rescale gave fractional ones")
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    mapped = apply_voi(integral.astype(np.int64), ds, index=0).astype(np.float64)
    out = np.rint(mapped * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    return (255 - out) if invert else out


def _file_window(ds: Any) -> tuple[float, float, str] | None:
    """The file's first (centre, width, VOI LUT Function) when it names a usable one."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if centre is None or width is None or width < (1 if function == "LINEAR" else 0) or width == 0:
        return None
    return centre, width, function


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _window_dicom(values: np.ndarray, ds: Any, window: Window, invert: bool) -> tuple[np.ndarray, str]:
    """(8-bit image, description) of a monochrome frame for ``window`` (see :data:`Window`)."""
    name = window.lower() if isinstance(window, str) else window
    if name in (None, "auto"):
        if ds.get("VOILUTSequence"):
            return _voi_lut_to_uint8(values, ds, invert), "VOI LUT 0"
        own = _file_window(ds)
        if own is not None:
            centre, width, function = own
            return window_to_uint8(values, centre, width, function, invert), f"{function} {centre:g}/{width:g}"
        name = "minmax"
    if isinstance(name, str) and name in WINDOW_PRESETS:
        name = WINDOW_PRESETS[name]
    if isinstance(name, tuple | list):
        centre, width = _centre_width(name)
        if width < 1:
            raise ValueError(f"window width must be >= 1 (a DICOM LINEAR window), got {width}")
        return window_to_uint8(values, centre, width, "LINEAR", invert), f"LINEAR {centre:g}/{width:g}"
    low, high = resolve_window(name, values)
    centre, width = (low + high) / 2.0, high - low
    return window_to_uint8(values, centre, width, "LINEAR_EXACT", invert), f"LINEAR_EXACT {centre:g}/{width:g}"


def read_dicom(path: str | Path, window: Window = "auto", frame: int = 0) -> DicomImage:
    """Read one DICOM frame as a radiology viewer shows it, through pydicom's own pixel functions.

    The stored values go through the modality LUT or rescale slope / intercept (``apply_modality_lut``) into
    physical units, then through the VOI transform to 8 bits: with ``window="auto"`` the file's own VOI LUT
    (``apply_voi``) or window centre / width with its VOI LUT Function (``apply_windowing``), else the value range;
    a preset name or a (centre, width) pair is a ``LINEAR`` window; ``"minmax"`` / ``"percentile"`` map that range
    exactly onto 0..255. MONOCHROME1 is inverted; RGB / YBR frames become their mean gray.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except FileNotFoundError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files / missing pixel data handlers
        raise MedicalFormatError(f"{path}: not a readable DICOM image ({exc}); check the file or its transfer "
                                 "syntax (compressed files may need pylibjpeg / gdcm)") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    modality = str(ds.get("Modality", ""))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or (pixels.ndim == 3 and not photometric.startswith(("RGB", "YBR"))):
        if not 0 <= frame < pixels.shape[0]:
            raise MedicalFormatError(f"{path}: frame {frame} out of range (the file has {pixels.shape[0]} frames)")
        pixels = pixels[frame]
    if photometric.startswith(("RGB", "YBR")):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        gray = np.asarray(pixels, dtype=np.float64).mean(axis=2)
        return DicomImage(gray, np.rint(gray).clip(0, 255).astype(np.uint8), "RGB mean", False, modality, str(path))
    try:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        image, description = _window_dicom(values, ds, window, photometric == "MONOCHROME1")
    except (ValueError, NotImplementedError, AttributeError, IndexError, KeyError) as exc:
        raise MedicalFormatError(f"{path}: cannot window the image ({exc}); pass another window (a preset such as "
                                 f"{sorted(WINDOW_PRESETS)[:3]}, a (centre, width) pair, 'minmax' or "
                                 "'percentile')") from None
    return DicomImage(values, image, description, photometric == "MONOCHROME1", modality, str(path))


# ---------------------------------------------------------------------------------------------------- NIfTI
@dataclass(frozen=True)
class Slice:
    """One 2-D slice of a volume: 8-bit image and optional boolean mask."""

    index: int
    image: np.ndarray
    mask: np.ndarray | None


def _orient(plane: np.ndarray) -> np.ndarray:
    """Volume axes (i, j) -> display rows/columns: transpose then flip rows (radiological 'up' is +j)."""
    return np.flipud(plane.T)


def _load_volume(path: Path) -> np.ndarray:
    """A NIfTI (or other nibabel) image's data as float64."""
    import nibabel as nib
    from nibabel.dataobj_images import DataobjImage

    image = nib.load(str(path))
    if not isinstance(image, DataobjImage):
        raise MedicalFormatError(f"{path}: {type(image).__name__} holds no voxel array")
    return np.asarray(image.get_fdata(dtype=np.float64))


def nifti_slices(path: str | Path, axis: int = 2, mask_path: str | Path | None = None, window: Window = "percentile",
                 step: int = 1, skip_blank: bool = True) -> Iterator[Slice]:
    """Yield slices of a 3-D NIfTI volume along ``axis``; the mask volume is sliced the same way.

    One window is chosen for the whole volume (slices stay comparable). ``skip_blank`` drops slices with no
    signal (all values at the window's low end), which is where most volumes start and end.
    """
    path = Path(path)
    try:
        volume = _load_volume(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise MedicalFormatError(f"{path}: not a readable NIfTI volume ({exc})") from None
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise MedicalFormatError(f"{path}: expected a 3-D volume, found shape {volume.shape}; pick one channel first")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    mask = None
    if mask_path is not None:
        mask = _load_volume(Path(mask_path)) > 0
        if mask.ndim == 4 and mask.shape[3] == 1:
            mask = mask[..., 0]
        if mask.shape != volume.shape:
            raise MedicalFormatError(f"{mask_path}: mask shape {mask.shape} differs from volume {path} {volume.shape}")
    low, high = resolve_window(window, volume)
    for index in range(0, volume.shape[axis], max(1, step)):
        plane = np.take(volume, index, axis=axis)
        image = apply_window(_orient(plane), low, high)
        if skip_blank and int(image.max()) == 0:
            continue
        plane_mask = None if mask is None else _orient(np.take(mask, index, axis=axis))
        yield Slice(index, image, plane_mask)


# ---------------------------------------------------------------------------------------------- PNG writing
def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 grayscale or RGB array as PNG, atomically."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return Path(path)


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    return write_png(path, (np.asarray(mask) > 0).astype(np.uint8) * 255)


def _resize(array: np.ndarray, size: int | None, mask: bool = False) -> np.ndarray:
    if not size or array.shape[0] == array.shape[1] == size:
        return array
    from PIL import Image

    image = Image.fromarray(array)
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), resample))


def _bmad_paths(category: str, split: str, anomalous: bool, stem: str) -> tuple[str, str]:
    folder = BMAD_ANOMALY_DIR if anomalous else "good"
    image = f"{category}/{split}/{folder}/img/{stem}.png"
    mask = f"{category}/{split}/{folder}/label/{stem}.png" if anomalous else ""
    return image, mask


def write_bmad_item(out_root: Path, category: str, split: str, stem: str, image: np.ndarray,
                    mask: np.ndarray | None, source: str, role: str, workspace: str | Path,
                    defect_type: str = "lesion", size: int | None = None) -> ManifestRow:
    """Write one image (and its mask when anomalous) in the BMAD pixel-level layout; return its manifest row."""
    anomalous = mask is not None and bool(np.asarray(mask).any())
    image = _resize(to_rgb(image), size)
    image_rel, mask_rel = _bmad_paths(category, split, anomalous, stem)
    write_png(out_root / image_rel, image)
    if anomalous:
        write_mask(out_root / mask_rel, _resize((np.asarray(mask) > 0).astype(np.uint8) * 255, size, mask=True))
    return ManifestRow(
        image_path=image_rel, root=relative_root(out_root, workspace), mask_path=mask_rel, source=source,
        category=category, split=split, role=role, label="anomaly" if anomalous else "normal",
        defect_type=defect_type if anomalous else "good", modality="medical", width=image.shape[1],
        height=image.shape[0],
    )


# ------------------------------------------------------------------------------------------------ converters
def convert_nifti(volumes: Sequence[tuple[str | Path, str | Path | None]], out_root: str | Path, category: str,
                  split: str = "test", axis: int = 2, window: Window = "percentile", step: int = 1,
                  size: int | None = None, source: str = "nifti", role: str = "eval",
                  workspace: str | Path = ".", defect_type: str = "lesion") -> pd.DataFrame:
    """Slice NIfTI volumes (with optional label volumes) into BMAD layout; slices with mask pixels are anomalous.

    Writes ``out_root/manifest.parquet`` beside the images and returns the manifest.
    """
    out_root = Path(out_root)
    rows = []
    from anomaly_ov.console import track

    for volume, mask in track(list(volumes), f"convert {category}: NIfTI volumes", unit="volumes"):
        name = Path(volume).name.removesuffix(".gz").removesuffix(".nii")
        for item in nifti_slices(volume, axis=axis, mask_path=mask, window=window, step=step):
            rows.append(write_bmad_item(out_root, category, split, f"{name}_{item.index:04d}", item.image, item.mask,
                                        source, role, workspace, defect_type, size))
    return _finish(out_root, rows, f"no non-blank slices in {[str(v) for v, _ in volumes]}")


def convert_dicom(files: Iterable[str | Path], out_root: str | Path, category: str, split: str = "test",
                  window: Window = "auto", masks: Mapping[str, str | Path] | None = None, size: int | None = None,
                  source: str = "dicom", role: str = "eval", workspace: str | Path = ".",
                  defect_type: str = "lesion") -> pd.DataFrame:
    """Convert DICOM files to BMAD layout. ``masks`` maps a file's stem to a mask PNG (non-zero = anomalous)."""
    from anomaly_ov.console import track
    from anomaly_ov.data.images import open_image

    out_root = Path(out_root)
    masks = {k: Path(v) for k, v in (masks or {}).items()}
    rows = []
    for file in track(list(files), f"convert {category}: DICOM files", unit="files"):
        file = Path(file)
        dicom = read_dicom(file, window)
        mask = None
        if file.stem in masks:
            mask = np.asarray(open_image(masks[file.stem], mode=None).convert("L")) > 0
            if mask.shape != dicom.values.shape:
                raise MedicalFormatError(f"{masks[file.stem]}: mask shape {mask.shape} differs from {file} "
                                         f"{dicom.values.shape}")
        rows.append(write_bmad_item(out_root, category, split, file.stem, dicom.image, mask, source, role,
                                    workspace, defect_type, size))
    return _finish(out_root, rows, "no DICOM files given")


def _finish(out_root: Path, rows: list[ManifestRow], empty_message: str) -> pd.DataFrame:
    if not rows:
        raise MedicalFormatError(f"{out_root}: {empty_message}")
    frame = from_rows(rows)
    write_manifest(frame, out_root / "manifest.parquet")
    return frame


# ---------------------------------------------------------------------------------------- synthetic phantoms
def _seed(*parts: Any) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return noise / (noise.std() + 1e-9)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
             ) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside)."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = dx * c + dy * s, -dx * s + dy * c
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float
          ) -> np.ndarray:
    """Irregular lesion shape: an ellipse whose radius wobbles with angle."""
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1.0 + sum(rng.uniform(0.05, 0.2) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    dist = np.hypot(yy - cy, xx - cx)
    return dist < radius * wobble


def _pick_inside(rng: np.random.Generator, region: np.ndarray, margin: float, size: int) -> tuple[float, float]:
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(region)
    candidates = np.argwhere(depth > margin)
    if len(candidates) == 0:
        candidates = np.argwhere(region)
    cy, cx = candidates[rng.integers(len(candidates))]
    return float(cy), float(cx)


def phantom(modality: str, size: int, seed: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic slice (uint8 HxW) and its lesion mask (bool HxW; all False when normal).

    ``brain_mri``: skull ring, textured brain with grey/white contrast and ventricles; lesion = bright tumour with
    a darker oedema rim. ``liver_ct``: body outline, liver, spine, kidneys; lesion = hypodense liver mass.
    ``chest_xray``: rib cage and lungs; lesion = opacity in a lung. ``retina_oct``: a B-scan of layered retina
    bands over a dark vitreous, dipping at the fovea; lesion = a dark fluid pocket inside the layers or bright
    deposits under them. ``retina_fundus``: a round field of view with the optic disc, dark vessels from it and
    the darker macula; lesion = bright exudates or a dark haemorrhage.
    """
    if modality not in SYNTHETIC_MODALITIES:
        raise ValueError(f"unknown synthetic medical modality {modality!r}; choose from {SYNTHETIC_MODALITIES}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2.0 + rng.normal(0, size * 0.01, 2)
    scale = rng.uniform(0.92, 1.05)
    texture = _smooth_noise(rng, size, size / 40.0)
    fine = rng.standard_normal((size, size))
    img = np.zeros((size, size))
    mask = np.zeros((size, size), dtype=bool)
    if modality == "brain_mri":
        ry, rx = size * 0.42 * scale, size * 0.34 * scale
        head = _ellipse(yy, xx, c[0], c[1], ry, rx, rng.normal(0, 0.05))
        brain = head < 0.9
        img[(head < 1.0) & ~brain] = 0.85  # skull / scalp
        img[brain] = 0.45 + 0.06 * texture[brain]
        white = _ellipse(yy, xx, c[0], c[1], ry * 0.6, rx * 0.6) + 0.15 * _smooth_noise(rng, size, size / 20.0) < 0.9
        img[white & brain] += 0.12
        for side in (-1, 1):
            vent = _ellipse(yy, xx, c[0] - size * 0.03, c[1] + side * size * 0.06, size * 0.1, size * 0.035,
                            side * 0.25)
            img[vent < 1.0] = 0.15
        if anomalous:
            cy, cx = _pick_inside(rng, brain, size * 0.12, size)
            radius = size * rng.uniform(0.05, 0.1)
            oedema = _blob(rng, yy, xx, cy, cx, radius * 1.5) & brain
            core = _blob(rng, yy, xx, cy, cx, radius) & brain
            img[oedema] = 0.62 + 0.04 * texture[oedema]
            img[core] = 0.9 + 0.05 * texture[core]
            mask = core | oedema
        img += 0.02 * fine
    elif modality == "liver_ct":
        body = _ellipse(yy, xx, c[0], c[1], size * 0.36 * scale, size * 0.46 * scale) < 1.0
        img[body] = 0.35 + 0.03 * texture[body]  # fat / muscle
        liver = (_ellipse(yy, xx, c[0] - size * 0.04, c[1] - size * 0.16, size * 0.22, size * 0.2, 0.3)
                 + 0.08 * _smooth_noise(rng, size, size / 16.0)) < 1.0
        liver &= body
        img[liver] = 0.58 + 0.03 * texture[liver]
        spine = _ellipse(yy, xx, c[0] + size * 0.24, c[1], size * 0.06, size * 0.06) < 1.0
        img[spine] = 0.95
        for side in (-1, 1):
            kidney = _ellipse(yy, xx, c[0] + size * 0.12, c[1] + side * size * 0.2, size * 0.07, size * 0.045)
            img[(kidney < 1.0) & ~liver] = 0.66
        if anomalous:
            cy, cx = _pick_inside(rng, liver, size * 0.08, size)
            core = _blob(rng, yy, xx, cy, cx, size * rng.uniform(0.04, 0.08)) & liver
            img[core] = 0.38 + 0.03 * texture[core]
            mask = core
        img += 0.025 * fine
    elif modality == "retina_oct":
        surface = c[0] - size * 0.08 + size * 0.04 * np.sin((xx - c[1]) / size * np.pi * rng.uniform(0.6, 1.2))
        surface = surface + size * 0.06 * np.exp(-(((xx - c[1]) / (size * 0.08)) ** 2))  # the foveal pit
        depth = (yy - surface) / (size * 0.22 * scale)  # 0 at the inner surface, 1 at the pigment epithelium
        retina = (depth > 0) & (depth < 1)
        layers = 0.35 + 0.15 * np.cos(depth * np.pi * 5) + 0.35 * (depth < 0.12) + 0.45 * (depth > 0.85)
        img[retina] = layers[retina] + 0.05 * texture[retina]
        choroid = (depth >= 1) & (depth < 1.6)
        img[choroid] = 0.3 + 0.1 * texture[choroid]
        if anomalous:
            if rng.random() < 0.5:  # intraretinal fluid: a dark, rounded pocket inside the layers
                cy, cx = _pick_inside(rng, retina & (depth > 0.25) & (depth < 0.75), size * 0.03, size)
                core = (_ellipse(yy, xx, cy, cx, size * rng.uniform(0.03, 0.05), size * rng.uniform(0.05, 0.1))
                        < 1.0) & retina
                img[core] = 0.05 + 0.02 * texture[core]
            else:  # drusen: a bright mound on the pigment epithelium, lifting the outer layers
                cy, cx = _pick_inside(rng, retina & (depth > 0.75), size * 0.01, size)
                core = _blob(rng, yy, xx, cy, cx, size * rng.uniform(0.04, 0.06)) & (depth > 0.45) & (depth < 1.2)
                img[core] = 0.95
            mask = core
        img += 0.06 * fine  # speckle
    elif modality == "retina_fundus":
        radial = np.hypot(yy - c[0], xx - c[1]) / (size * 0.46)
        field = radial < 1.0
        img[field] = 0.5 + 0.04 * texture[field] - 0.15 * radial[field] ** 2
        side = 1 if rng.random() < 0.5 else -1
        dy, dx = c[0] + rng.normal(0, size * 0.02), c[1] + side * size * 0.22
        macula = np.hypot(yy - c[0], xx - (c[1] - side * size * 0.05))
        img[field] -= 0.12 * np.exp(-((macula[field] / (size * 0.08)) ** 2))
        for _ in range(int(rng.integers(4, 7))):  # vessels: dark arcs leaving the optic disc
            angle = rng.uniform(0, 2 * np.pi)
            bend = rng.uniform(-0.015, 0.015)
            t = np.arctan2(yy - dy, xx - dx) - angle
            r = np.hypot(yy - dy, xx - dx)
            vessel = (np.abs(np.angle(np.exp(1j * (t - bend * r)))) < size * 0.012 / np.maximum(r, 1.0)) & field
            img[vessel & (r > size * 0.05)] -= 0.18
        disc = np.hypot(yy - dy, xx - dx) < size * 0.06
        img[disc & field] = 0.9
        if anomalous:
            cy, cx = _pick_inside(rng, field & ~disc, size * 0.08, size)
            core = _blob(rng, yy, xx, cy, cx, size * rng.uniform(0.03, 0.06)) & field & ~disc
            img[core] = 0.85 if rng.random() < 0.5 else 0.15  # exudate or haemorrhage
            mask = core
        img += 0.02 * fine
    else:  # chest_xray
        chest = _ellipse(yy, xx, c[0] + size * 0.05, c[1], size * 0.45, size * 0.42 * scale) < 1.0
        img[chest] = 0.55
        lungs = np.zeros_like(mask)
        for side in (-1, 1):
            lung = _ellipse(yy, xx, c[0], c[1] + side * size * 0.18, size * 0.32, size * 0.14, side * 0.08) < 1.0
            lungs |= lung
        img[lungs] = 0.2 + 0.04 * texture[lungs]
        ribs = (np.sin((yy - c[0]) / size * 2 * np.pi * 6 + 0.3 * np.abs(xx - c[1]) / size * 2 * np.pi) > 0.85)
        img[ribs & chest] += 0.12
        if anomalous:
            cy, cx = _pick_inside(rng, lungs, size * 0.06, size)
            core = _blob(rng, yy, xx, cy, cx, size * rng.uniform(0.04, 0.08)) & lungs
            img[core] = 0.5 + 0.05 * texture[core]
            mask = core
        img += 0.03 * fine
    return apply_window(img, 0.0, 1.0), mask


def generate_synthetic_medical(out_dir: str | Path, modalities: Sequence[str] = ("brain_mri", "liver_ct"),
                               image_size: int = 128, normal_per_modality: int = 12, anomaly_per_modality: int = 12,
                               train_normal_per_modality: int | None = None, seed: int = 0,
                               source: str = "synthetic_medical", role: str = "eval",
                               workspace: str | Path = ".") -> pd.DataFrame:
    """Write the synthetic medical set in BMAD pixel-level layout under ``out_dir``; return its manifest.

    Layout: ``<modality>/train/good/img`` (normals), ``<modality>/test/good/img`` and ``<modality>/test/Ungood/
    {img,label}``. Deterministic: the same arguments always give byte-identical files. The folder is replaced
    as a whole (written beside it, then moved), so a crash never leaves a half-written set.
    """
    from anomaly_ov.io import atomic_dir

    out_dir = Path(out_dir)
    train_normals = normal_per_modality if train_normal_per_modality is None else train_normal_per_modality
    rows: list[ManifestRow] = []
    with atomic_dir(out_dir) as tmp:
        for modality in modalities:
            plan = [("train", False, i) for i in range(train_normals)]
            plan += [("test", False, i) for i in range(normal_per_modality)]
            plan += [("test", True, i) for i in range(anomaly_per_modality)]
            for split, anomalous, i in plan:
                image, mask = phantom(modality, image_size, _seed(seed, modality, split, anomalous, i), anomalous)
                stem = f"{'anomaly' if anomalous else 'normal'}_{i:03d}"
                row = write_bmad_item(tmp, modality, split, stem, image, mask if anomalous else None, source, role,
                                      workspace, "lesion")
                rows.append(row)
    root = relative_root(out_dir, workspace)
    frame = from_rows([{**r.as_dict(), "root": root} for r in rows])
    write_manifest(frame, out_dir / "manifest.parquet")
    return frame
