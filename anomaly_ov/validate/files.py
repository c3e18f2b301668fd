"""Per-file checks: every image and mask named by the manifest is opened, decoded and compared.

A file that cannot be read is a finding in the report, never an exception. Decisions (also in each message):

- ``image_readable`` (critical): the file exists, ``PIL.Image.verify()`` accepts it and ``load()`` decodes every
  pixel (a truncated JPEG or a PNG with a bad CRC fails here), and it converts to RGB.
- ``image_mode`` (warning): images that are not 8-bit RGB are converted on load by :func:`to_rgb` (CMYK, L, 1,
  P, RGBA/LA (alpha dropped), 16-bit ``I;16``/``I`` and float ``F`` (rescaled to 8 bit)); the warning names the
  mode and the conversion.
- ``decoded_size_in_bounds`` (critical) and ``manifest_size_matches`` (warning: the manifest's width/height,
  when filled, are stale).
- ``mask_readable`` and ``mask_size_matches_image`` (critical).
- ``mask_binary`` (warning): a mask is binarised with ``> 0`` everywhere in the project, so any two-level mask
  ({0, 1}, {0, 255}, ...) is fine; more than one non-zero level (anti-aliased or JPEG-compressed masks) still
  works after ``> 0`` but may grow the region by a pixel, hence a warning, not a stop.
- ``anomaly_mask_not_empty`` (critical): an anomaly whose mask has no pixel > 0 cannot teach localisation.
- ``duplicate_across_roles`` (critical: the same pixels in a training and an evaluation source break the
  zero-shot protocol) and ``duplicate_content`` (warning: the same pixels listed twice); the hash is SHA-1 of the
  decoded pixels, so the same image saved twice in different formats is still found.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.data.images import CONVERSIONS, ImageError, ImageTooLarge, to_rgb
from anomaly_ov.data.images import open_image as _open_image
from anomaly_ov.data.sources._common import ISSUE_CHECKS, Issue
from anomaly_ov.validate.report import Check

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from anomaly_ov.config import ValidateParams
    from anomaly_ov.parallel import FanOut

#: Kept for callers of this module: the image helpers live in :mod:`anomaly_ov.data.images`.
ImageReadError = ImageError


def open_image(path: str | Path, max_side: int | None = None) -> Image.Image:
    """Check the declared size, verify and fully decode an image, in its stored mode (:class:`ImageError` if not)."""
    return _open_image(path, max_side=max_side, mode=None, verify=True)


def load_rgb(path: str | Path, max_side: int | None = None) -> tuple[Image.Image, str | None]:
    """Decode ``path`` and convert it to 8-bit RGB; returns the image and the conversion note (or None)."""
    return to_rgb(open_image(path, max_side))


@dataclass
class MaskStats:
    """What a mask holds, measured once."""

    size: tuple[int, int]
    levels: int  #: distinct values
    nonzero_levels: int  #: distinct values > 0
    positive: int  #: pixels > 0
    channels: int


def mask_stats(image: Image.Image) -> MaskStats:
    """Distinct levels and positive pixels of a mask (multi-channel masks: a pixel is positive in any channel)."""
    import numpy as np

    values = np.asarray(image)
    channels = 1 if values.ndim == 2 else values.shape[2]
    if values.ndim == 3:
        values = values.max(axis=2)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.dtype.kind in "ui" and values.size and values.min() >= 0 and values.max() < 65536:
        counts = np.bincount(values.ravel().astype(np.int64))
        present = np.flatnonzero(counts)
    else:
        present = np.unique(values)
    positive = int(np.count_nonzero(values > 0))
    return MaskStats(image.size, len(present), int((present > 0).sum()), positive, channels)


@dataclass
class RowResult:
    """Everything measured for one manifest row."""

    row: int
    file: str
    label: str
    role: str
    manifest_size: tuple[int, int]
    error: str | None = None
    mode: str | None = None
    conversion: str | None = None
    size: tuple[int, int] | None = None
    digest: str | None = None
    mask_file: str = ""
    mask_error: str | None = None
    mask: MaskStats | None = None
    too_large: str | None = None  #: why the image was refused from its header (never decoded)


def inspect_row(task: dict[str, Any], hash_pixels: bool = True, max_side: int | None = None) -> RowResult:
    """Open the row's image (and mask); every problem is recorded on the result, nothing is raised."""
    result = RowResult(task["row"], task["file"], task["label"], task["role"], task["manifest_size"])
    try:
        image = open_image(task["file"], max_side)
        result.mode, result.size = image.mode, image.size
        if hash_pixels:
            digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
            result.digest = digest.hexdigest()
        _, result.conversion = to_rgb(image)
    except ImageTooLarge as exc:
        result.too_large, result.size = exc.reason, exc.size
    except ImageReadError as exc:
        result.error = str(exc)
    except Exception as exc:  # a conversion failure is a finding too
        result.error = f"{task['file']}: cannot convert mode to RGB ({type(exc).__name__}: {exc})"
    if task.get("mask"):
        result.mask_file = task["mask"]
        try:
            result.mask = mask_stats(open_image(task["mask"], max_side))
        except ImageReadError as exc:
            result.mask_error = str(exc)
        except Exception as exc:
            result.mask_error = f"{task['mask']}: cannot read mask values ({type(exc).__name__}: {exc})"
    return result


def outside_paths(
    frame: pd.DataFrame, workspace: str | Path = ".", allow_external: Collection[str] = ()
) -> tuple[list[Issue], set[int]]:
    """Rows whose image or mask path leaves its ``root`` (absolute, ``..``, a symlink out), as ``path_inside_dataset``
    issues, and their positions; rows of the sources named in ``allow_external`` are accepted."""
    from anomaly_ov.paths import OutsideRootError, RootGuard

    issues: list[Issue] = []
    rows: set[int] = set()
    if not {"image_path", "root"} <= set(frame.columns):
        return issues, rows
    guard = RootGuard()  # each root's and folder's real path resolved once, not once per row
    bases: dict[str, Path] = {}
    for position, row in enumerate(frame.to_dict("records")):
        root = row.get("root")
        if not isinstance(root, str) or not root or str(row.get("source", "")) in allow_external:
            continue
        base = bases.get(root)
        if base is None:
            base = bases[root] = Path(root) if Path(root).is_absolute() else Path(workspace) / root
        for column in ("image_path", "mask_path"):
            value = row.get(column)
            if not isinstance(value, str) or not value:
                continue
            try:
                guard.check(base, value)
            except OutsideRootError as exc:
                where = f"manifest row {position}, {column}"
                issues.append(Issue("path_inside_dataset", exc.path, f"{where}: {exc.reason}"))
                rows.add(position)
    return issues, rows


def _tasks(frame: pd.DataFrame, workspace: Path, skip: Collection[int] = ()) -> list[dict[str, Any]]:
    """One task per row: absolute-or-workspace image/mask paths plus what the checks compare against."""
    tasks = []
    columns = set(frame.columns)
    for position, row in enumerate(frame.to_dict("records")):
        image_path, root = row.get("image_path"), row.get("root")
        if not isinstance(image_path, str) or not image_path or not isinstance(root, str) or not root:
            continue  # null/empty paths are table findings (not_null / not_empty); nothing to open
        if position in skip:
            continue  # a path out of the dataset: reported, never opened
        base = Path(root) if Path(root).is_absolute() else workspace / root
        mask_path = row.get("mask_path") if "mask_path" in columns else ""
        tasks.append({
            "row": position,
            "file": str(base / image_path),
            "mask": str(base / mask_path) if isinstance(mask_path, str) and mask_path else "",
            "label": str(row.get("label", "")),
            "role": str(row.get("role", "")),
            "manifest_size": (_int(row.get("width")), _int(row.get("height"))),
        })
    return tasks


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def inspect_files(
    frame: pd.DataFrame, workspace: str | Path = ".", *, hash_pixels: bool = True, workers: int | None = None,
    max_side: int | None = None, skip: Collection[int] = (), fan: FanOut | None = None,
) -> list[RowResult]:
    """Inspect every row's files; results in row order.

    In-process (``fan`` None or not distributed) a thread pool of ``workers`` threads decodes (PIL decodes outside
    the GIL; by default one thread for small images, :func:`default_workers`); with a distributed ``fan`` the rows
    are sharded over its workers. Images whose header declares a side above ``max_side`` are refused before
    decoding; rows in ``skip`` are not opened."""
    tasks = _tasks(frame, Path(workspace), skip)
    if fan is not None and fan.distributed:
        job = functools.partial(inspect_tasks, hash_pixels=hash_pixels, max_side=max_side, workers=1)
        parts = fan.map("validate", job, tasks, name=lambda t: t["file"], what="rows",
                        same=lambda task, result: task["row"] == result.row and task["file"] == result.file)
        return [result for _, part in parts for result in part]
    return inspect_tasks(tasks, hash_pixels=hash_pixels, max_side=max_side, workers=workers)


#: Median image area (pixels, from the manifest's width x height) from which a thread pool decodes faster than one
#: thread. PIL decodes outside the GIL, but a small image's open / verify / hash is mostly Python: on 2 cores a pool
#: of 4 threads was x0.42 of one thread's speed on 64 px PNGs, x0.9 at 128 px, x1.0-1.2 at 180 px, x1.3 at 256 px
#: and x1.7 (PNG) to x2.8 (JPEG) at 1500 x 1000 (``benchmarks/validate_speed.py --thread-sizes``).
THREADS_FROM_PIXELS = 160 * 160


def pool_threads() -> int:
    """The thread pool's size for large images: the cores + 2, at most 8 (decoding waits on I/O now and then)."""
    return min(8, (os.cpu_count() or 1) + 2)


def default_workers(tasks: Sequence[dict[str, Any]]) -> int:
    """Threads for :func:`inspect_tasks`: one for small images (see :data:`THREADS_FROM_PIXELS`), else
    :func:`pool_threads`. Rows whose manifest has no size count as large: real datasets' images are."""
    areas = sorted(w * h if w > 0 and h > 0 else THREADS_FROM_PIXELS for w, h in (t["manifest_size"] for t in tasks))
    if areas and areas[len(areas) // 2] < THREADS_FROM_PIXELS:
        return 1
    return pool_threads()


def inspect_tasks(tasks: Sequence[dict[str, Any]], *, hash_pixels: bool = True, max_side: int | None = None,
                  workers: int | None = None) -> list[RowResult]:
    """:func:`inspect_row` over ``tasks`` (from :func:`_tasks`) with a thread pool of ``workers`` (default:
    :func:`default_workers`); in order."""
    from anomaly_ov.console import track

    workers = workers or default_workers(tasks)
    if len(tasks) < 8 or workers == 1:
        return list(track((inspect_row(t, hash_pixels, max_side) for t in tasks), "validate: file checks",
                          total=len(tasks), unit="files"))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="validate-files") as pool:
        return list(track(pool.map(lambda t: inspect_row(t, hash_pixels, max_side), tasks, chunksize=16),
                          "validate: file checks", total=len(tasks), unit="files"))


def file_checks(
    frame: pd.DataFrame, settings: ValidateParams, workspace: str | Path = ".", skip: Collection[int] = (),
    fan: FanOut | None = None,
) -> tuple[list[Check], list[str], int]:
    """All per-file checks; returns (checks, notes for the report, number of rows whose files were opened).
    ``fan`` shards the file inspection (:mod:`anomaly_ov.parallel`); the checks are computed here, in row order."""
    results = inspect_files(frame, workspace, hash_pixels=settings.check_duplicates,
                            max_side=settings.max_image_side, skip=skip, fan=fan)
    return checks_from_results(results, settings), conversion_notes(results), len(results)


def issue_checks(issues: Sequence[Issue], cap: int) -> list[Check]:
    """One critical check per kind of per-file issue found while reading the dataset (passed when none)."""
    checks = []
    for name, (what, todo, ok) in ISSUE_CHECKS.items():
        failing = [{"file": i.file, "reason": i.reason} for i in issues if i.check == name]
        checks.append(Check.from_failures(
            name, "critical", failing, max_examples=cap, origin="reader",
            ok_message=ok, fail_message="{n} " + what + ": {examples}; " + todo,
        ))
    return checks


def conversion_notes(results: Sequence[RowResult]) -> list[str]:
    counts = Counter(str(r.mode) for r in results if r.conversion)
    return [f"{n} image(s) in mode {mode}: converted on load, {CONVERSIONS.get(mode, mode + ' -> RGB')}"
            for mode, n in sorted(counts.items())]


def _size_fields(size: tuple[int, int] | None) -> dict[str, Any]:
    return {"width": size[0], "height": size[1]} if size else {}


def checks_from_results(results: Sequence[RowResult], settings: ValidateParams) -> list[Check]:
    """Turn the per-row measurements into the file :class:`Check` list."""
    cap, lo, hi = settings.max_failing_examples, settings.min_image_side, settings.max_image_side
    readable = [r for r in results if r.error is None and r.too_large is None]

    def at(r: RowResult, mask: str | None = None, **extra: Any) -> dict[str, Any]:
        return ({"mask": mask} if mask else {}) | {"file": r.file, "row": r.row, **extra}

    unreadable = [at(r, error=r.error) for r in results if r.error]
    refused = [at(r, **_size_fields(r.size), reason=r.too_large) for r in results if r.too_large]
    converted = [at(r, mode=r.mode, conversion=r.conversion) for r in readable if r.conversion]
    modes = Counter(item["mode"] for item in converted)
    out_of_bounds = [at(r, width=r.size[0], height=r.size[1]) for r in readable
                     if r.size is not None and not (lo <= min(r.size) and max(r.size) <= hi)] + refused
    stale = [at(r, manifest=list(r.manifest_size), decoded=list(r.size)) for r in readable
             if r.size is not None and all(r.manifest_size) and tuple(r.manifest_size) != tuple(r.size)]
    with_mask = [r for r in results if r.mask_file]
    bad_mask = [at(r, mask=r.mask_file, error=r.mask_error) for r in with_mask if r.mask_error]
    masks = [(r, r.mask) for r in with_mask if r.mask is not None]
    wrong_size = [at(r, mask=r.mask_file, mask_size=list(m.size), image_size=list(r.size)) for r, m in masks
                  if r.size is not None and tuple(m.size) != tuple(r.size)]
    non_binary = [at(r, mask=r.mask_file, nonzero_levels=m.nonzero_levels) for r, m in masks if m.nonzero_levels > 1]
    empty = [at(r, mask=r.mask_file) for r, m in masks if r.label == "anomaly" and m.positive == 0]
    checks = [
        Check.from_failures(
            "image_readable", "critical", unreadable, max_examples=cap, origin="files",
            ok_message=f"all {len(results)} image(s) decode",
            fail_message="{n} image(s) cannot be read (missing, corrupt or truncated): {examples}; "
            "replace or remove them and re-run prepare",
        ),
        Check.from_failures(
            "image_mode", "warning", converted, max_examples=cap, origin="files",
            ok_message="every image is 8-bit RGB",
            fail_message="{n} image(s) are not 8-bit RGB and are converted on load ("
            + ", ".join(f"{mode}: {n}" for mode, n in sorted(modes.items()))
            + "): {examples}",
        ),
        Check.from_failures(
            "decoded_size_in_bounds", "critical", out_of_bounds, max_examples=cap, origin="files",
            ok_message=f"every decoded image side is within [{lo}, {hi}] px",
            fail_message=f"{{n}} image(s) have a side outside [{lo}, {hi}] px "
            "(validate.min_image_side/max_image_side; images declaring more are refused from their header, "
            "never decoded): {examples}",
        ),
        Check.from_failures(
            "manifest_size_matches", "warning", stale, max_examples=cap, origin="files",
            ok_message="manifest width/height match the decoded images (where filled)",
            fail_message="{n} row(s) record a width/height that differs from the decoded image: {examples}; "
            "re-run prepare",
        ),
        Check.from_failures(
            "mask_readable", "critical", bad_mask, max_examples=cap, origin="files",
            ok_message=f"all {len(with_mask)} mask(s) decode",
            fail_message="{n} mask(s) cannot be read (missing, corrupt or truncated): {examples}",
        ),
        Check.from_failures(
            "mask_size_matches_image", "critical", wrong_size, max_examples=cap, origin="files",
            ok_message="every mask has its image's size",
            fail_message="{n} mask(s) differ in size from their image: {examples}",
        ),
        Check.from_failures(
            "mask_binary", "warning", non_binary, max_examples=cap, origin="files",
            ok_message="every mask has one non-zero level (0/1, 0/255, ... are all fine)",
            fail_message="{n} mask(s) have several non-zero grey levels (soft or JPEG-compressed masks); "
            "they are binarised with > 0, which may grow the region slightly: {examples}",
        ),
        Check.from_failures(
            "anomaly_mask_not_empty", "critical", empty, max_examples=cap, origin="files",
            ok_message="every anomaly mask marks at least one pixel",
            fail_message="{n} anomaly mask(s) have no pixel > 0: {examples}; fix the mask or the label",
        ),
    ]
    if settings.check_duplicates:
        checks += duplicate_checks(readable, cap)
    return checks


def duplicate_checks(results: Sequence[RowResult], cap: int) -> list[Check]:
    """Identical decoded pixels listed more than once, and the same pixels in a train and an eval source."""
    by_digest: dict[str, list[RowResult]] = defaultdict(list)
    for r in results:
        if r.digest:
            by_digest[r.digest].append(r)
    repeats, leaks = [], []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        first = group[0]
        repeats += [{"file": r.file, "row": r.row, "duplicate_of": first.file} for r in group[1:]]
        if len({r.role for r in group}) > 1:
            leaks += [{"file": r.file, "row": r.row, "role": r.role,
                       "same_pixels_as": [o.file for o in group if o.role != r.role][:3]} for r in group]
    return [
        Check.from_failures(
            "duplicate_across_roles", "critical", leaks, max_examples=cap, origin="files",
            ok_message="no image appears in both a training and an evaluation source",
            fail_message="{n} image(s) have the same pixels in a training and an evaluation source, which breaks "
            "the zero-shot protocol: {examples}; remove them from one side",
        ),
        Check.from_failures(
            "duplicate_content", "warning", repeats, max_examples=cap, origin="files",
            ok_message="no two images have the same pixels",
            fail_message="{n} image(s) duplicate the pixels of another listed image: {examples}",
        ),
    ]
