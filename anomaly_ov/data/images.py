"""Opening untrusted images: a pixel limit checked on the declared size before any pixel is decoded.

``open_image(source)`` takes a file path or the raw bytes of an encoded image and returns a PIL RGB image. It
reads the header first (PIL opens lazily), refuses an image whose width x height exceeds ``max_pixels`` (a
decompression bomb: a few kilobytes of PNG can declare 50 000 x 50 000 pixels), then decodes. Every failure is an
:class:`ImageError` (a ``ValueError``) with a short message naming the image and what is wrong, never PIL's
internals.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 5000 x 5000; the processor resizes far below this anyway


class ImageError(ValueError):
    """An image that cannot be opened safely: unreadable, not an image, truncated, or too large."""


def open_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, name: str | None = None):
    """A PIL RGB image from a path or encoded bytes, refusing more than ``max_pixels`` before decoding.

    Args:
        source: a file path, or the bytes of a PNG / JPEG / any format PIL reads.
        max_pixels: the largest width x height accepted (checked on the header).
        name: how the image is called in error messages (default: the path, or "image").
    """
    from PIL import Image, UnidentifiedImageError

    label = name or (str(source) if isinstance(source, str | Path) else "image")
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{label}: {width}x{height} pixels is more than the limit of {max_pixels:,}"
                    )
                return img.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: declares more pixels than PIL's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image PIL can read") from None
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data, unreadable file
        reason = "truncated or corrupt image data" if not isinstance(exc, PermissionError) else "permission denied"
        raise ImageError(f"{label}: {reason}") from None
