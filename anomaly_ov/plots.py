"""Training curves as DVC plots: the records a stage produced, written to the plot files its declaration lists.

A stage declares its plots in ``anomaly_ov/stages.py`` (``Plot(path, x, y)``); :func:`write_stage_plots` writes
each of them as a two-column CSV from the first record list that has both columns (per-step losses, per-epoch
validation metrics). A declared plot is always written, with its header alone when there is nothing to draw
(an official expert taken as is, no validation split): DVC fails a stage whose declared output is missing.
``dvc plots show`` (or ``dvc plots diff`` between commits) draws them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomaly_ov.io import atomic_write_text
from anomaly_ov.paths import in_workspace

Records = Sequence[Mapping[str, Any]]


def write_stage_plots(stage: str, workspace: str | Path, *sources: Records) -> list[Path]:
    """Write every plot declared for ``stage`` from ``sources`` (e.g. a loop's history and its epoch metrics).

    Args:
        stage: the stage whose declaration lists the plots.
        workspace: the workspace root (plot paths are relative to it).
        sources: record lists; a plot takes the rows of the first list whose records have its ``x`` and ``y``.

    Returns:
        The files written.
    """
    from anomaly_ov.stages import spec

    written = []
    for plot in spec(stage).plots:
        rows: list[tuple[Any, Any]] = []
        for records in sources:
            rows = [(_number(r[plot.x]), _number(r[plot.y])) for r in records if plot.x in r and plot.y in r]
            if rows:
                break
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([plot.x, plot.y])
        writer.writerows((x, y) for x, y in rows if x is not None and y is not None)
        written.append(atomic_write_text(in_workspace(workspace, plot.path), buffer.getvalue()))
    return written


def _number(value: Any) -> int | float | None:
    """Integral floats as ints (step 12, not 12.0); NaN/inf and non-numbers dropped (None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else round(value, 6)
    return value
