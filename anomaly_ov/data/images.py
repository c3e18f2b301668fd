"""Opening image files safely: the one helper every stage, command and server uses to read pixels.

Why one helper: a file named ``.png`` can hold anything. PIL reads the header lazily (``Image.open`` then
``.size`` costs a few bytes), so the declared size is checked *before* any pixel is decoded: a 272 KB PNG that
declares 10000 x 10000 pixels would otherwise take seconds and gigabytes to decode, and PIL's own guard raises
``DecompressionBombError``, which is not an ``OSError`` and escaped every ``except OSError``. Every failure here is
an :class:`ImageError` (a ``ValueError``) naming the file and the reason, so callers turn it into a finding
(``validate``) or a clear error (``evaluate``, ``predict``, serving), and the orchestration sees a deterministic
bad-input error, never a retryable crash.

Limits: ``max_side`` (default ``validate.max_image_side`` of params.yaml, installed by :func:`configure`) bounds
each side; ``max_pixels`` (default ``max_side ** 2``) bounds width x height. :func:`configure` also sets PIL's
global ``Image.MAX_IMAGE_PIXELS`` to the same pixel budget, as a backstop for code that opens images without
this helper.

    from anomaly_ov.data.images import open_image, read_header
    read_header("a.png").size           # (width, height) from the header; ImageError when too large
    open_image("a.png")                 # decoded, 8-bit RGB; ImageError naming the file when unusable
    open_image(raw_bytes, name="upload")  # bytes or a binary file object work too (serving)
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from anomaly_ov.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

ImageSource = str | Path | bytes | bytearray | IO[bytes]
#: What :class:`ImageError` says went wrong (a finding's ``reason_kind``).
Kind = Literal["missing", "unreadable", "too_large"]

#: Default bound on each image side (params.yaml ``validate.max_image_side`` replaces it through :func:`configure`).
DEFAULT_MAX_SIDE = 8192
_limits: dict[str, int] = {"max_side": DEFAULT_MAX_SIDE, "pil_pixels": 0}

#: mode -> how :func:`to_rgb` converts it (shown in validation warnings).
CONVERSIONS: dict[str, str] = {
    "CMYK": "CMYK -> RGB (PIL colour conversion)",
    "L": "grey -> RGB (channel replicated)",
    "1": "1-bit -> RGB",
    "P": "palette -> RGB",
    "PA": "palette + alpha -> RGB (alpha dropped)",
    "RGBA": "RGBA -> RGB (alpha dropped)",
    "LA": "grey + alpha -> RGB (alpha dropped)",
    "I;16": "16-bit grey -> 8-bit RGB (value * 255 / 65535)",
    "I;16B": "16-bit grey -> 8-bit RGB (value * 255 / 65535)",
    "I;16L": "16-bit grey -> 8-bit RGB (value * 255 / 65535)",
    "I": "32-bit integer grey -> 8-bit RGB (rescaled to the 8/16-bit range, else min-max)",
    "F": "float grey -> 8-bit RGB ([0, 1] scaled, else min-max)",
}


class ImageError(InputError):
    """An image file cannot be used. ``path`` names it, ``reason`` says why, ``kind`` classifies it."""

    def __init__(self, path: str | Path, reason: str, kind: Kind = "unreadable") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind: Kind = kind


class ImageTooLarge(ImageError):
    """The image declares more pixels (or a longer side) than the configured limits allow; nothing was decoded."""

    def __init__(self, path: str | Path, reason: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(path, reason, "too_large")
        self.size = size


class ImageNotFound(ImageError, FileNotFoundError):
    """The image file does not exist (also a ``FileNotFoundError`` for callers that catch that)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "file not found", "missing")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file declares (no pixel decoded)."""

    width: int
    height: int
    mode: str
    format: str | None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


# ------------------------------------------------------------------------------------------------ limits
def configure(max_side: int) -> None:
    """Install the project's limits: ``max_side`` per side (params ``validate.max_image_side``), ``max_side ** 2``
    pixels, also as PIL's global ``Image.MAX_IMAGE_PIXELS`` (the bomb guard of code that bypasses this module;
    set now when PIL is loaded, else on this module's first open, so the CLI does not import PIL to start)."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    _limits["max_side"] = int(max_side)
    _limits["pil_pixels"] = int(max_side) * int(max_side)
    if "PIL.Image" in sys.modules:
        _apply_pil_limit()


def _apply_pil_limit() -> None:
    pixels = _limits.get("pil_pixels")
    if pixels:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = pixels


def default_max_side() -> int:
    """The per-side limit used when a caller passes none (see :func:`configure`)."""
    return _limits["max_side"]


def check_size(
    size: tuple[int, int], path: str | Path, max_side: int | None = None, max_pixels: int | None = None
) -> None:
    """Raise :class:`ImageTooLarge` naming ``path`` when ``size`` (width, height) exceeds the limits."""
    side = default_max_side() if max_side is None else max_side
    pixels = side * side if max_pixels is None else max_pixels
    width, height = size
    if max(width, height) > side:
        raise ImageTooLarge(
            path, f"declares {width} x {height} px, a side above the limit of {side} px "
            "(validate.max_image_side); not decoded. Downscale the image or raise the limit", (width, height)
        )
    if width * height > pixels:
        raise ImageTooLarge(
            path, f"declares {width} x {height} = {width * height} px, above the limit of {pixels} px; not decoded",
            (width, height),
        )


# ------------------------------------------------------------------------------------------------ opening
def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, str | Path):
        return str(source)
    return "<image bytes>"


@contextmanager
def _lazy_open(source: ImageSource, label: str) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with every PIL/OS failure turned into :class:`ImageError`."""
    from PIL import Image, UnidentifiedImageError

    _apply_pil_limit()
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ImageNotFound(label)
        if not path.is_file():
            raise ImageError(label, "not a regular file")
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:  # not an OSError: the reason this module exists
        side = default_max_side()
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found[1])} pixels" if found else "too many pixels"
        raise ImageTooLarge(
            label, f"declares {declared}, above the limit of {side} px per side (validate.max_image_side; PIL: "
            f"{exc}); not decoded. Downscale the image or raise the limit"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(label, "not an image PIL can identify (empty, corrupt or another file type)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(label, f"cannot read the header ({type(exc).__name__}: {exc})") from None
    try:
        yield image
    finally:
        image.close()


def read_header(
    source: ImageSource, *, max_side: int | None = None, max_pixels: int | None = None, name: str | None = None
) -> ImageInfo:
    """Size, mode and format declared by the header (no decoding); :class:`ImageError` when unusable or too large."""
    label = _describe(source, name)
    with _lazy_open(source, label) as image:
        info = ImageInfo(int(image.size[0]), int(image.size[1]), image.mode, image.format)
    check_size(info.size, label, max_side, max_pixels)
    return info


def open_image(
    source: ImageSource,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
    mode: Literal["RGB"] | None = "RGB",
    verify: bool = False,
    name: str | None = None,
) -> Image.Image:
    """Check the declared size, then decode every pixel; 8-bit RGB by default (``mode=None``: as stored).

    Args:
        source: a path, raw bytes or a binary file object.
        max_side, max_pixels: limits (default: :func:`default_max_side` and its square).
        mode: ``"RGB"`` converts with :func:`to_rgb` (16-bit and float greys rescaled); None keeps the file's mode.
        verify: also run PIL's structural check (PNG CRCs) before decoding; needs a path or bytes.
        name: how errors name the image (default: the path).

    Raises:
        ImageError: missing file, not an image, truncated or corrupt data (``kind`` says which);
            :class:`ImageTooLarge` when the header declares more than the limits (nothing decoded).
    """
    label = _describe(source, name)
    if isinstance(source, bytes | bytearray):
        source = bytes(source)
    elif not isinstance(source, str | Path):
        source = source.read()  # a file object is read once so that verify and decode can both see it
    if verify:
        with _lazy_open(source, label) as probe:
            check_size(probe.size, label, max_side, max_pixels)
            try:
                probe.verify()
            except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error... for broken structure
                raise ImageError(label, f"corrupt data ({type(exc).__name__}: {exc})") from None
    with _lazy_open(source, label) as image:
        check_size(image.size, label, max_side, max_pixels)
        try:
            image.load()  # decodes every pixel: truncated data fails here
        except Exception as exc:
            raise ImageError(label, f"cannot decode ({type(exc).__name__}: {exc})") from None
        if mode is None:
            return image.copy()  # the copy outlives the file handle closed on leaving the context
        try:
            rgb, _ = to_rgb(image)
        except Exception as exc:
            raise ImageError(label, f"cannot convert mode {image.mode} to RGB ({type(exc).__name__}: {exc})") from None
        return rgb if rgb is not image else image.copy()


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB version of ``image`` and a note naming the conversion (None when it already was RGB)."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image, None
    note = CONVERSIONS.get(mode, f"{mode} -> RGB (PIL conversion)")
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scaled = values * 255.0 / 65535.0
        elif mode == "F" and values.size and values.min() >= 0 and values.max() <= 1:
            scaled = values * 255.0
        elif mode == "I" and values.size and values.min() >= 0 and values.max() <= 255:
            scaled = values
        elif mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
            scaled = values * 255.0 / 65535.0
        else:
            low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
        return grey.convert("RGB"), note
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB"), note
    return image.convert("RGB"), note
