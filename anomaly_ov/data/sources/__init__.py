"""Dataset readers: one module per on-disk format, each turning a dataset into manifest rows.

``read_source(source, workspace)`` dispatches on ``source.format`` through :data:`READERS` (format ->
``"module:function"``, imported lazily). Every reader has the same signature as ``read_source`` and returns a
manifest built with :func:`anomaly_ov.data.manifest.from_rows`. Layout problems raise :class:`LayoutError`;
per-file problems (unusable image, missing or orphan mask, a path out of the dataset, a non-UTF-8 name) are
:class:`Issue` s: ``read_source(..., issues=[])`` collects them all and returns the usable rows, without
``issues`` it raises one :class:`LayoutError` listing every one of them.

Formats and what they accept (details in each module's docstring):

- ``mvtec``: ``<cls>/train/good/*``, ``<cls>/test/{good,<defect>}/*``, ``<cls>/ground_truth/<defect>/<stem>_mask.png``
- ``visa``: ``split_csv/1cls.csv`` (object,split,label,image,mask) with paths relative to the VisA root
- ``meta_json``: ``meta.json`` of the CLIP zero-shot repos (``{"train"|"test": {cls: [items]}}``)
- ``folder``: ``<category>/[train|test/]{good,<defect>}/*`` with optional masks
- ``bmad``, ``mvtec3d``, ``real3d``, ``shapenet``: registered here, implemented by the extensions' modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_ov.data.sources._common import ISSUE_CHECKS, Issue, LayoutError, collecting

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_ov.config import SourceParams

__all__ = ["ISSUE_CHECKS", "Issue", "LayoutError", "READERS", "describe_issues", "reader_for", "read_source"]

#: source format -> "module:function"; the function has the signature of :func:`read_source`. The keys are
#: exactly the values of :data:`anomaly_ov.choices.SourceFormat` (checked by a unit test).
READERS: dict[str, str] = {
    "mvtec": "anomaly_ov.data.sources.mvtec:read_mvtec",
    "visa": "anomaly_ov.data.sources.visa:read_visa",
    "meta_json": "anomaly_ov.data.sources.meta_json:read_meta_json",
    "folder": "anomaly_ov.data.sources.folder:read_folder",
    "bmad": "anomaly_ov.data.sources.bmad:read_bmad",
    "mvtec3d": "anomaly_ov.data.sources.mvtec3d:read_mvtec3d",
    "real3d": "anomaly_ov.data.sources.real3d:read_real3d",
    "shapenet": "anomaly_ov.data.sources.shapenet:read_shapenet",
}


def reader_for(fmt: str) -> Callable[..., pd.DataFrame]:
    """The reader function registered for ``fmt`` (imported on first use)."""
    if fmt not in READERS:
        raise LayoutError(f"unknown source format {fmt!r}; known formats: {sorted(READERS)}")
    module_name, _, func_name = READERS[fmt].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise LayoutError(
            f"source format {fmt!r} is registered but its reader module {module_name} is not installed"
        ) from None
    return getattr(module, func_name)


def read_source(source: SourceParams, workspace: Path, issues: list[Issue] | None = None) -> pd.DataFrame:
    """Read one dataset described in params.yaml (``data.sources[i]``) into a manifest DataFrame.

    Every per-file :class:`Issue` is appended to ``issues`` (the rows concerned are left out); when ``issues``
    is None and there is any, one :class:`LayoutError` lists them all.
    """
    from anomaly_ov.paths import in_workspace

    path = in_workspace(workspace, source.path)
    root = path.parent if path.suffix.lower() == ".json" else path  # meta_json accepts the file itself
    with collecting(root, source.allow_external_paths) as found:
        try:
            frame = reader_for(source.format)(source, Path(workspace))
        except LayoutError as exc:  # e.g. every image of a category was unusable: keep the per-file reasons
            exc.issues = [*getattr(exc, "issues", []), *found.issues]
            if found.issues and issues is None:
                raise LayoutError(f"{exc}\n{describe_issues(found.issues)}", failing=exc.issues) from None
            raise
    if issues is not None:
        issues.extend(found.issues)
    elif found.issues:
        raise LayoutError(describe_issues(found.issues), failing=found.issues)  # callers name the source
    return frame


def describe_issues(issues: list[Issue], limit: int = 50) -> str:
    """All issues as one message: a count, then one line per file with its reason (at most ``limit``)."""
    lines = [f"- {i.file}: {i.reason}" for i in issues[:limit]]
    more = [f"- ... and {len(issues) - limit} more"] if len(issues) > limit else []
    return f"{len(issues)} unusable file(s) or row(s):\n" + "\n".join(lines + more)
