"""Visual prompts: red boxes drawn around the merged defect regions (the Anomaly-Instruct captioning hint).

The boxes are the dilated, merged regions of :mod:`anomaly_ov.instruct.regions`. They are written next to the
instruction data for people to inspect and are sent to the optional LLM rewriter with the templated description.
"""

from __future__ import annotations

import io
from pathlib import Path

from anomaly_ov.instruct.regions import MaskFacts


def draw_red_boxes(image_path: str | Path, facts: MaskFacts, line_px: int | None = None):
    """Return a PIL RGB image with one red rectangle per region (coordinates scaled to the image size)."""
    from PIL import ImageDraw

    from anomaly_ov.data.images import open_image

    canvas = open_image(image_path)
    sx, sy = canvas.width / max(facts.width, 1), canvas.height / max(facts.height, 1)
    width = line_px or max(1, round(min(canvas.size) / 100))
    draw = ImageDraw.Draw(canvas)
    for region in facts.regions:
        x0, y0, x1, y1 = region.bbox
        box = (int(x0 * sx), int(y0 * sy), max(int(x1 * sx) - 1, int(x0 * sx)), max(int(y1 * sy) - 1, int(y0 * sy)))
        draw.rectangle(box, outline=(255, 0, 0), width=width)
    return canvas


def red_box_png(image_path: str | Path, facts: MaskFacts) -> bytes:
    """PNG bytes of :func:`draw_red_boxes` (what the rewriter sends as a data URL)."""
    buffer = io.BytesIO()
    draw_red_boxes(image_path, facts).save(buffer, format="PNG")
    return buffer.getvalue()


def save_red_boxes(image_path: str | Path, facts: MaskFacts, out_path: str | Path) -> Path:
    """Write the red-box rendering atomically as PNG."""
    from anomaly_ov.io import atomic_write_bytes

    return atomic_write_bytes(out_path, red_box_png(image_path, facts))
