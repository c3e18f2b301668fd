"""Zero-shot detection protocol of VisA-D&R (docs/model.md, 'The VisA-D&R protocol') plus the expert's localisation.

For each image of ``test_data.json`` the model is asked the detection prompt (greedy decoding); the answer is
positive when it contains "Yes" or "yes". The expert's image score and anomaly map are kept for every image:
maps and masks are compared at ``params.evaluate.resolution`` (masks binarised ``> 0``, resized bilinearly and
thresholded at 0.5). Pixel metrics come from one streaming :class:`~anomaly_ov.evaluate.metrics.PixelScoreTable`
per class: exact, in memory bounded by ``params.evaluate.exact_pixel_limit`` distinct scores per class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from anomaly_ov.errors import InputError
from anomaly_ov.evaluate import metrics as M
from anomaly_ov.model.tokenizer import DETECTION_PROMPT
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    from PIL import Image

    from anomaly_ov.config import EvaluateParams
    from anomaly_ov.parallel import FanOut

REQUIRED_TEST_KEYS = ("anomaly",)
KINDS = ("TP", "FP", "FN")


class PredictorLike(Protocol):
    """What evaluation needs from ``anomaly_ov.model.predict.Predictor`` (tests use a small fake)."""

    def predict(self, images: Sequence[Any], question: str | None = None, generate: bool = False,
                threshold: float = 0.5, max_new_tokens: int = 64) -> list[Any]: ...

    def chat_batch(self, conversations: Sequence[tuple[Sequence[Any], Sequence[tuple[str, str]], str]],
                   max_new_tokens: int = 128, batch_size: int = 8) -> list[str]: ...


# -------------------------------------------------------------------------------------------- parsing
def parse_yes_no(answer: str | None) -> bool | None:
    """The published rule: positive when the response contains "Yes" or "yes" (None when there is no answer)."""
    if answer is None:
        return None
    return "Yes" in answer or "yes" in answer


# ---------------------------------------------------------------------------------------------- items
def load_test_items(
    path: str | Path,
    max_images: int | None = None,
    data_root: str | Path | None = None,
    allow_external: bool = False,
) -> list[dict[str, Any]]:
    """Read and check a detection file; ``max_images`` keeps a class- and label-balanced subset.

    Two schemas are read: the project's ``test_data.json`` (items carry ``file``, see
    :mod:`anomaly_ov.instruct.benchmark`) and the official VisA-D&R one, ``{"image": "VisA/<class>/...",
    "anomaly": true|false}``, whose images are ``data_root / image`` as the release's scripts open them
    (``os.path.join(data_dir, item["image"])``).
    """
    items = read_benchmark_items(path, "test", normalise_test_item, data_root, allow_external)
    return balanced_subset(items, max_images)


def read_benchmark_items(
    path: str | Path,
    what: str,
    normalise: Callable[..., dict[str, Any]],
    data_root: str | Path | None,
    allow_external: bool,
) -> list[dict[str, Any]]:
    """The items of a benchmark JSON list, each through ``normalise(item, index, source, data_root,
    allow_external)``; every bad item is collected and reported in one error (the first 20 spelled out)."""
    from anomaly_ov.io import read_json

    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {what} items, got {type(data).__name__}")
    items, errors = [], []
    for i, item in enumerate(data):
        try:
            items.append(normalise(item, i, str(path), data_root, allow_external))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise InputError(f"{len(errors)} bad {what} item(s):\n" + "\n".join(errors[:20]) + more)
    return items


def resolve_item_image(
    item: dict[str, Any], index: int, source: str, data_root: str | Path | None, allow_external: bool = False
) -> str:
    """The file to open for a benchmark item: its ``file``, else ``data_root / image`` kept inside ``data_root``
    (an absolute or ``..`` path is refused unless ``allow_external``)."""
    from anomaly_ov.paths import OutsideRootError, inside_root

    if item.get("file"):
        return str(item["file"])
    image = item.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(f"{source}: item {index} has neither 'file' nor an 'image' path")
    if data_root is None:
        raise InputError(
            f"{source}: item {index} names its image {image!r} relative to a data root (the official VisA-D&R "
            "layout); give the folder that holds it: `anomaly-ov model evaluate DATA_ROOT --bench FILE` or "
            "evaluate.data_root in the params"
        )
    try:
        return str(inside_root(data_root, image, allow_external=allow_external))
    except OutsideRootError as exc:
        raise InputError(
            f"{source}: item {index} image {image!r} leaves the data root {data_root} ({exc.reason.split(';')[0]}); "
            "fix the file, or allow it with evaluate.allow_external_paths / --allow-external-paths"
        ) from None


def normalise_test_item(
    item: Any,
    index: int,
    source: str = "test items",
    data_root: str | Path | None = None,
    allow_external: bool = False,
) -> dict[str, Any]:
    """Check one test item's keys and fill ``file`` (see :func:`resolve_item_image`), ``category`` (second
    component of ``image``) and ``mask``."""
    if not isinstance(item, dict):
        raise InputError(f"{source}: item {index} is a {type(item).__name__}, expected an object")
    missing = [k for k in REQUIRED_TEST_KEYS if k not in item]
    if missing:
        raise InputError(f"{source}: item {index} lacks key(s) {missing}; each item needs {list(REQUIRED_TEST_KEYS)}"
                         " (and 'file', or an 'image' path under the data root)")
    out = dict(item)
    if not isinstance(out["anomaly"], bool | int):
        raise InputError(f"{source}: item {index} key 'anomaly' must be true/false, got {out['anomaly']!r}")
    out["anomaly"] = bool(out["anomaly"])
    out["file"] = resolve_item_image(out, index, source, data_root, allow_external)
    out.setdefault("mask", "")
    out["mask"] = out["mask"] or ""
    out.setdefault("image", str(out["file"]))
    if not out.get("category"):
        parts = Path(str(out["image"])).parts
        if len(parts) < 2:
            raise InputError(f"{source}: item {index} has no 'category' and its image {out['image']!r} has no class")
        out["category"] = parts[1]
    return out


def balanced_subset(items: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` items taken round-robin over (category, anomaly) groups, so no class loses a label (an item
    without ``anomaly``, as a reasoning item, counts as anomalous), in their file order within a group."""
    if limit is None or len(items) <= limit:
        return items
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault((str(item.get("category", "")), bool(item.get("anomaly", True))), []).append(item)
    queues = [groups[k] for k in sorted(groups)]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < limit:
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return picked


# ------------------------------------------------------------------------------------------ image I/O
class EvaluationInputError(InputError):
    """Some images or masks to evaluate are unusable; the message lists every one of them with its reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        listed = "\n".join(f"- {p}" for p in problems[:50])
        more = f"\n- ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} unusable image(s) or mask(s); fix or remove them "
                         f"(`anomaly-ov data validate` lists every problem of a dataset):\n{listed}{more}",
                         failing=problems)
        self.problems = list(problems)


def check_inputs(items: Sequence[dict[str, Any]], workspace: str | Path, max_side: int | None = None) -> list[str]:
    """Every problem of the items' files found from their headers alone (nothing decoded): a missing file, a
    file that is not an image, one declaring more than ``max_side``, a mask whose size differs from its image's.
    """
    from anomaly_ov.data.images import ImageError, read_header

    problems = []
    for item in items:
        try:
            size = read_header(in_workspace(workspace, item["file"]), max_side=max_side).size
        except ImageError as exc:
            problems.append(str(exc))
            continue
        if not item.get("mask"):
            continue
        mask = in_workspace(workspace, item["mask"])
        try:
            mask_size = read_header(mask, max_side=max_side).size
        except ImageError as exc:
            problems.append(f"{exc} (mask of {item['file']})")
            continue
        if mask_size != size:
            problems.append(f"{mask}: mask is {mask_size[0]} x {mask_size[1]} px but its image {item['file']} is "
                            f"{size[0]} x {size[1]} px; fix the mask (it is never resized to fit)")
    return problems


def load_image(file: str | Path, workspace: str | Path, max_side: int | None = None) -> Image.Image:
    """The item's image as RGB through :func:`anomaly_ov.data.images.open_image` (an ``ImageError`` names it)."""
    from anomaly_ov.data.images import open_image

    return open_image(in_workspace(workspace, file), max_side=max_side)


def resize_map(amap: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear resize of a float map to ``resolution`` x ``resolution``, clipped to [0, 1]."""
    from PIL import Image

    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    if amap.shape != (resolution, resolution):
        amap = np.asarray(Image.fromarray(amap).resize((resolution, resolution), Image.Resampling.BILINEAR))
    return np.clip(np.nan_to_num(amap, nan=0.0), 0.0, 1.0).astype(np.float32)


def load_mask(file: str | Path | None, resolution: int, workspace: str | Path,
              max_side: int | None = None) -> np.ndarray:
    """Mask at ``resolution``: binarised ``> 0``, resized bilinearly, thresholded at 0.5. No file -> all zeros."""
    from PIL import Image

    from anomaly_ov.data.images import open_image

    if not file:
        return np.zeros((resolution, resolution), dtype=bool)
    raw = np.asarray(open_image(in_workspace(workspace, file), max_side=max_side, mode=None))
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    binary = (raw > 0).astype(np.float32)
    resized = np.asarray(Image.fromarray(binary).resize((resolution, resolution), Image.Resampling.BILINEAR))
    return resized > 0.5


# --------------------------------------------------------------------------------------------- result
@dataclass
class Sample:
    """One image kept for the figures (at the evaluation resolution)."""

    category: str
    kind: str
    file: str
    image: np.ndarray
    amap: np.ndarray
    mask: np.ndarray
    score: float
    answer: str | None


@dataclass
class DetectionResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    pixel: dict[str, M.PixelScoreTable] = field(default_factory=dict)  # category -> its pixel statistics
    samples: list[Sample] = field(default_factory=list)
    skipped_pixel_images: int = 0

    @property
    def exact_pixels(self) -> bool:
        """True when no class had more distinct scores than its table holds (see PixelScoreTable)."""
        return all(table.exact for table in self.pixel.values())

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self.records]


def decision_kind(predicted: bool, anomaly: bool) -> str:
    if predicted and anomaly:
        return "TP"
    if predicted:
        return "FP"
    return "FN" if anomaly else "TN"


def _predict(predictor: PredictorLike, images: list[Any], cfg: EvaluateParams) -> list[Any]:
    out = predictor.predict(
        images,
        question=DETECTION_PROMPT if cfg.generate_answers else None,
        generate=cfg.generate_answers,
        threshold=cfg.threshold,
        max_new_tokens=cfg.max_new_tokens,
    )
    if len(out) != len(images):
        raise RuntimeError(f"predictor returned {len(out)} predictions for {len(images)} images")
    return out


@dataclass
class Scored:
    """One image scored (the worker's side of :func:`run_detection`): its record and arrays at the evaluation
    resolution, to be added to the :class:`DetectionResult` in item order by :func:`_accumulate`."""

    record: dict[str, Any]
    kind: str
    answer: str | None
    amap: np.ndarray | None  #: resized map added to the class's pixel table (None: no pixel statistics)
    mask: np.ndarray | None
    problems: list[str]  #: mask decoding problems of the pixel statistics
    thumb: np.ndarray | None = None  #: figure sample parts, only for an image that may be kept as a figure
    sample_amap: np.ndarray | None = None
    sample_mask: np.ndarray | None = None
    sample_problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PredictorSpec:
    """How a worker process builds the predictor: a saved model directory and a device. A worker loads it once and
    keeps it for the next shards while ``revision`` (e.g. the directory's content hash) is unchanged."""

    model: str
    device: str = "auto"
    one_gpu_per_worker: bool = True
    revision: str = ""

    def load(self) -> PredictorLike:
        return _load_predictor(self.model, self.worker_device(), self.revision)

    def worker_device(self) -> str:
        """The device in this process: on a multi-GPU machine, Dask worker ``i`` of a local cluster uses ``cuda:i``
        (modulo the GPU count), so the shards are scored one per GPU."""
        from anomaly_ov.evaluate.run import resolve_device
        from anomaly_ov.parallel import worker_index

        device = resolve_device(self.device)
        if device != "cuda" or not self.one_gpu_per_worker:
            return device
        import torch

        index, count = worker_index(), torch.cuda.device_count()
        return f"cuda:{index % count}" if index is not None and count > 1 else device


@functools.lru_cache(maxsize=1)
def _load_predictor(model: str, device: str, revision: str) -> PredictorLike:
    from anomaly_ov.evaluate.run import load_predictor

    return load_predictor(model, device)


def _score_batch(
    predictor: PredictorLike,
    items: list[dict[str, Any]],
    cfg: EvaluateParams,
    workspace: str | Path,
    max_side: int | None,
    want_sample: Callable[[str, str], bool],
) -> tuple[list[Scored], list[str]]:
    """Decode one batch, predict, resize maps and masks; returns the scored images and the images' decoding
    problems (an image that fails is left out). ``want_sample(category, kind)`` says whether to prepare figure
    parts for an image."""
    from anomaly_ov.data.images import ImageError

    res = cfg.resolution
    problems: list[str] = []
    batch, images = [], []
    for item in items:
        try:
            images.append(load_image(item["file"], workspace, max_side))
        except ImageError as exc:
            problems.append(str(exc))
            continue
        batch.append(item)
    if not batch:
        return [], problems

    def mask_at_res(item: dict[str, Any], found: list[str]) -> np.ndarray:
        try:
            return load_mask(item["mask"], res, workspace, max_side)
        except ImageError as exc:  # e.g. truncated: reported with the others after the loop
            found.append(str(exc))
            return np.zeros((res, res), dtype=bool)

    scored = []
    for item, image, pred in zip(batch, images, _predict(predictor, images, cfg), strict=True):
        score = float(pred.score)
        expert = score >= cfg.threshold
        answer = getattr(pred, "answer", None)
        said_yes = parse_yes_no(answer)
        record = {
            "file": str(item["file"]),
            "image": str(item.get("image", item["file"])),
            "category": item["category"],
            "label": "anomaly" if item["anomaly"] else "normal",
            "anomaly": item["anomaly"],
            "score": score,
            "expert_label": "anomaly" if expert else "normal",
            "answer": answer if answer is not None else "",
            "parsed": "" if said_yes is None else ("yes" if said_yes else "no"),
            "mask": item["mask"],
        }
        kind = decision_kind(said_yes if said_yes is not None else expert, item["anomaly"])
        out = Scored(record, kind, answer, None, None, [])
        amap = getattr(pred, "anomaly_map", None)
        if not (amap is None or (item["anomaly"] and not item["mask"])):
            out.amap = resize_map(amap, res)
            out.mask = mask_at_res(item, out.problems)
        if kind in KINDS and want_sample(item["category"], kind):
            out.thumb = np.asarray(image.resize((res, res)), dtype=np.uint8)
            out.sample_amap = out.amap if out.amap is not None or amap is None else resize_map(amap, res)
            out.sample_mask = out.mask if out.mask is not None else mask_at_res(item, out.sample_problems)
        scored.append(out)
    return scored, problems


def _accumulate(result: DetectionResult, scored: Scored, kept: dict[tuple[str, str], int], cfg: EvaluateParams,
                problems: list[str]) -> None:
    """Add one scored image to ``result`` (records, pixel table, figure samples), in item order."""
    record, res = scored.record, cfg.resolution
    cat = record["category"]
    result.records.append(record)
    problems += scored.problems
    if scored.amap is None or scored.mask is None:
        result.skipped_pixel_images += 1  # no map, or an anomaly whose pixels are unknown
    else:
        if cat not in result.pixel:
            result.pixel[cat] = M.PixelScoreTable(cfg.exact_pixel_limit)
        result.pixel[cat].add(scored.amap, scored.mask)
    # thumb and sample_mask are set for every image whose kind may be kept as a figure
    if (scored.kind in KINDS and scored.thumb is not None and scored.sample_mask is not None
            and kept.get((cat, scored.kind), 0) < cfg.figures_per_kind):
        kept[(cat, scored.kind)] = kept.get((cat, scored.kind), 0) + 1
        problems += scored.sample_problems
        amap = scored.sample_amap if scored.sample_amap is not None else np.zeros((res, res), np.float32)
        result.samples.append(Sample(cat, scored.kind, record["file"], scored.thumb, amap, scored.sample_mask,
                                     record["score"], scored.answer))


def _usable(items: list[dict[str, Any]], workspace: str | Path, max_side: int | None) -> tuple[list, list[str]]:
    """The items whose files pass the header checks, and the problems of the others (never decoded)."""
    problems, usable = [], []
    for item in items:
        found = check_inputs([item], workspace, max_side)
        problems += found
        if not found:
            usable.append(item)
    return usable, problems


def score_shard(
    items: list[dict[str, Any]], *, spec: PredictorSpec, cfg: EvaluateParams, workspace: str, max_side: int | None,
) -> list[tuple[list[Scored], list[str], list[str]]]:
    """Worker side of a sharded :func:`run_detection`: header checks, then batches of ``cfg.batch_size``.

    Returns ``(scored images, header problems, decoding problems)`` for the header checks, then one per batch;
    figure parts are prepared for the first
    ``figures_per_kind`` images of each (class, kind) of the shard, a superset of those the whole run keeps."""
    predictor = spec.load()
    usable, header = _usable(items, workspace, max_side)
    local: dict[tuple[str, str], int] = {}

    def want(cat: str, kind: str) -> bool:
        local[(cat, kind)] = local.get((cat, kind), 0) + 1
        return local[(cat, kind)] <= cfg.figures_per_kind

    out: list[tuple[list[Scored], list[str], list[str]]] = [([], header, [])]
    for start in range(0, len(usable), cfg.batch_size):
        scored, found = _score_batch(predictor, usable[start:start + cfg.batch_size], cfg, workspace, max_side, want)
        out.append((scored, [], found))
    return out


def scores_in_workers(fan: FanOut | None, spec: PredictorSpec | None) -> bool:
    """Whether :func:`run_detection` scores in Dask workers (a distributed ``fan`` and a ``spec`` they load the
    model from) rather than with a predictor in this process."""
    return fan is not None and fan.distributed and spec is not None


def run_detection(
    predictor: PredictorLike | None,
    items: list[dict[str, Any]],
    cfg: EvaluateParams,
    workspace: str | Path = ".",
    progress: Callable[[int, int], None] | None = None,
    max_side: int | None = None,
    *,
    fan: FanOut | None = None,
    spec: PredictorSpec | None = None,
) -> DetectionResult:
    """Ask the detection prompt for every item and keep scores, answers, pixel statistics and figure samples.

    Every item's files are checked from their headers first (:func:`check_inputs`); an image or mask that
    fails, then or while decoding, is left out and collected, the others go on, and all the problems are raised
    together as :class:`EvaluationInputError` once the loop is done (no metrics from a partial set).

    With a distributed ``fan`` and a ``spec``, the items are sharded over the workers (shards are whole batches;
    each worker loads the predictor from ``spec`` once); the results are added here in item order, so the
    outcome is the same as in one process; ``predictor`` is not used then (None: this process holds no model).
    """
    result = DetectionResult()
    kept: dict[tuple[str, str], int] = {}
    if scores_in_workers(fan, spec) and fan is not None and spec is not None:  # (the last two narrow the types)
        header: list[str] = []
        later: list[str] = []
        job = functools.partial(score_shard, spec=spec, cfg=cfg, workspace=str(workspace), max_side=max_side)
        for shard, part in fan.map("evaluate", job, items, name=lambda it: str(it["file"]), what="images",
                                   multiple_of=cfg.batch_size, per_item=False):
            for scored, header_problems, found in part:
                header += header_problems
                later += found
                for one in scored:
                    _accumulate(result, one, kept, cfg, later)
            if progress is not None:
                progress(shard.stop, len(items))
        problems = header + later
    else:
        if predictor is None:
            raise ValueError("run_detection scores in this process and needs a predictor")
        items, problems = _usable(items, workspace, max_side)

        def want(cat: str, kind: str) -> bool:
            return kept.get((cat, kind), 0) < cfg.figures_per_kind

        for start in range(0, len(items), cfg.batch_size):
            scored, found = _score_batch(predictor, items[start:start + cfg.batch_size], cfg, workspace, max_side,
                                         want)
            problems += found
            for one in scored:
                _accumulate(result, one, kept, cfg, problems)
            if progress is not None:
                progress(min(start + cfg.batch_size, len(items)), len(items))
    if problems:
        raise EvaluationInputError(problems)
    return result


# -------------------------------------------------------------------------------------------- metrics
def detection_metrics(result: DetectionResult, cfg: EvaluateParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """(overall, per_class) metric dicts with flat-ready nested keys; missing values are None."""
    cats = result.column("category")
    labels = result.column("anomaly")
    scores = result.column("score")
    parsed = result.column("parsed")
    expert = [s >= cfg.threshold for s in scores]

    per_class: dict[str, dict[str, Any]] = {c: {} for c in sorted(set(cats))}
    overall: dict[str, Any] = {}

    answered = [i for i, p in enumerate(parsed) if p]
    if answered:
        text_macro, text_classes = M.macro_binary(
            [parsed[i] == "yes" for i in answered], [labels[i] for i in answered], [cats[i] for i in answered]
        )
        overall["detection"] = {f"macro_{k}": v for k, v in text_macro.items()}
        for c, values in text_classes.items():
            per_class[c].update({f"detection.{k}": v for k, v in values.items()})
    else:
        overall["detection"] = {f"macro_{k}": None for k in ("accuracy", "precision", "recall", "f1")}

    expert_macro, expert_classes = M.macro_binary(expert, labels, cats)
    overall["expert"] = {"accuracy": expert_macro.get("accuracy"), "f1": expert_macro.get("f1"),
                         "precision": expert_macro.get("precision"), "recall": expert_macro.get("recall")}
    for c, values in expert_classes.items():
        per_class[c].update({"expert.accuracy": values["accuracy"], "expert.f1": values["f1"]})

    image_macro, image_classes = M.macro_image(scores, labels, cats)
    pixel_classes: dict[str, dict[str, float | None]] = {}
    for c in per_class:
        store = result.pixel.get(c)
        if store is None:
            pixel_classes[c] = {"pixel_auroc": None, "pixel_f1_max": None, "aupro": None}
            continue
        f1_value, f1_threshold = store.pixel_f1_max()
        pixel_classes[c] = {"pixel_auroc": store.pixel_auroc(), "pixel_f1_max": f1_value, "aupro": store.aupro(0.3)}
        per_class[c]["pixel_f1_threshold"] = f1_threshold
    pixel_macro = M.macro(pixel_classes)
    overall["zero_shot"] = {
        "image_auroc": image_macro.get("image_auroc"),
        "image_f1_max": image_macro.get("image_f1_max"),
        "pixel_auroc": pixel_macro.get("pixel_auroc"),
        "pixel_f1_max": pixel_macro.get("pixel_f1_max"),
        "aupro": pixel_macro.get("aupro"),
    }
    for c in per_class:
        per_class[c].update(image_classes.get(c, {}))
        per_class[c].update(pixel_classes[c])
        idx = [i for i, cc in enumerate(cats) if cc == c]
        per_class[c]["n_images"] = len(idx)
        per_class[c]["n_anomalous"] = sum(bool(labels[i]) for i in idx)
    return overall, per_class


def curves(result: DetectionResult) -> dict[str, list[dict[str, Any]]]:
    """Per class image ROC, pixel PRO and image PR curve points, as rows for CSV files."""
    from sklearn.metrics import precision_recall_curve

    out: dict[str, list[dict[str, Any]]] = {"roc": [], "pro": [], "pr": []}
    cats = result.column("category")
    for c in sorted(set(cats)):
        idx = [i for i, cc in enumerate(cats) if cc == c]
        s = np.asarray([result.records[i]["score"] for i in idx])
        y = np.asarray([result.records[i]["anomaly"] for i in idx], dtype=bool)
        roc = M.roc_points(s, y)
        if roc is not None:
            out["roc"].extend({"fpr": float(f), "tpr": float(t), "category": c} for f, t in zip(*roc, strict=True))
            p, r, _ = precision_recall_curve(y, s)
            out["pr"].extend(
                {"recall": float(b), "precision": float(a), "category": c} for a, b in zip(p, r, strict=True)
            )
        store = result.pixel.get(c)
        pro = store.pro_curve() if store is not None else None
        if pro is not None:
            out["pro"].extend(_thin(pro[0], pro[1], c, ("fpr", "pro")))
    return out


def _thin(x: np.ndarray, y: np.ndarray, category: str, names: tuple[str, str], points: int = 400) -> list[dict]:
    """At most about ``points`` points of a long curve (exact curves have one point per distinct score)."""
    if len(x) > points:
        keep = np.unique(np.concatenate([np.linspace(0, len(x) - 1, points).astype(int), [len(x) - 1]]))
        x, y = x[keep], y[keep]
    return [{names[0]: float(a), names[1]: float(b), "category": category} for a, b in zip(x, y, strict=True)]
