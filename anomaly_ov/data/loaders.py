"""torch Datasets and collates for the two training stages.

Stage 1 (:class:`ExpertDataset`): manifest rows -> ``{"pixel_values" [n_crops,3,H,W], "image_size" (h, w),
"label" 0/1, "mask" [1,R,R] (binary, at the evaluation resolution R), "mask_grid" [1,G,G] (fraction of defect
pixels per expert cell), "has_mask_target"}``. Images are decoded lazily in ``__getitem__`` (workers can share
the work; ``cache=True`` keeps decoded items in memory for small sets trained over many epochs); the image
transform is the model's (``preprocess(PIL.Image) -> (pixel_values, (h, w))``), so this
module knows nothing about crop sizes. ``has_mask_target`` is true for normal images (all-zero target) and for
anomalies with a mask; anomalies without a mask take no part in the mask loss.

Stage 2 (:class:`InstructDataset`): LLaVA records (``image`` a workspace-relative path or a list of paths,
``conversations`` human/gpt turns) -> whatever the model's processor returns for (images, conversation):
``input_ids``, ``labels`` (-100 outside the answers), ``pixel_values``, ``image_sizes``.

Data order is not decided here: the training loop (``anomaly_ov.train.common``) draws every epoch's
permutation from (seed, epoch) and hands index batches to a DataLoader, which keeps resumed runs exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL import Image

Preprocess = Callable[["Image.Image"], tuple["torch.Tensor", tuple[int, int]]]


class DataError(InputError):
    """An input row or record that cannot be used; the message names the file and the row."""


# ---------------------------------------------------------------------------------------------- decoding
def load_image(path: Path, row_hint: str = "") -> Image.Image:
    """RGB image through :func:`anomaly_ov.data.images.open_image`; a bad file is a :class:`DataError`."""
    from anomaly_ov.data.images import ImageError, open_image

    try:
        return open_image(path)
    except ImageError as exc:
        if exc.kind == "missing":
            raise DataError(f"{path}: image not found{row_hint}; re-run `anomaly-ov stage prepare`") from None
        raise DataError(f"{path}: unreadable image{row_hint} ({exc.reason}); fix or drop the file") from None


def load_mask(path: Path, size: int, row_hint: str = "", binary: bool = True) -> torch.Tensor:
    """Mask [1,size,size]: ``mask > 0``, box-resized (fraction of defect pixels), thresholded at 0.5 if ``binary``."""
    return load_mask_sizes(path, (size,), row_hint, binary=(binary,))[0]


def load_mask_sizes(path: Path, sizes: Sequence[int], row_hint: str = "",
                    binary: Sequence[bool] | None = None) -> list[torch.Tensor]:
    """One decode, several square sizes (see :func:`load_mask`)."""
    import numpy as np
    import torch
    from PIL import Image

    from anomaly_ov.data.images import ImageError, open_image

    try:
        arr = (np.asarray(open_image(path, mode=None).convert("L")) > 0).astype("float32")
    except ImageError as exc:
        if exc.kind == "missing":
            raise DataError(f"{path}: mask not found{row_hint}; check the manifest's mask_path") from None
        raise DataError(f"{path}: unreadable mask{row_hint} ({exc.reason})") from None
    full = Image.fromarray(arr, mode="F")
    out = []
    for i, size in enumerate(sizes):
        small = np.asarray(full.resize((size, size), Image.Resampling.BOX), dtype="float32")
        if binary is None or binary[i]:
            small = (small >= 0.5).astype("float32")
        out.append(torch.from_numpy(small.copy())[None])
    return out


def resize_mask(mask: torch.Tensor, size: int, binary: bool = True) -> torch.Tensor:
    """[1,H,W] float mask -> [1,size,size]: area average (fraction of defect pixels), thresholded when ``binary``."""
    import torch.nn.functional as F

    out = F.interpolate(mask[None].float(), size=(size, size), mode="area")[0]
    return (out >= 0.5).float() if binary else out


# ----------------------------------------------------------------------------------------------- stage 1
class ExpertDataset:
    """Manifest rows (one image each) for stage 1; see the module docstring for the item layout."""

    def __init__(
        self,
        frame: pd.DataFrame,
        workspace: str | Path,
        preprocess: Preprocess,
        grid_size: int,
        mask_size: int,
        cache: bool = False,
    ) -> None:
        from anomaly_ov.data.manifest import resolve

        self.cache: dict[int, dict[str, Any]] | None = {} if cache else None

        self.frame = frame.reset_index(drop=True)
        self.workspace = Path(workspace)
        self.preprocess = preprocess
        self.grid_size = int(grid_size)
        self.mask_size = int(mask_size)
        bad = sorted(set(self.frame["label"]) - {"normal", "anomaly"})
        if bad:
            raise DataError(f"manifest labels must be normal/anomaly, found {bad}")
        self._images = [resolve(r, "image_path", self.workspace) for _, r in self.frame.iterrows()]
        self._masks = [resolve(r, "mask_path", self.workspace) if r["mask_path"] else None
                       for _, r in self.frame.iterrows()]

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def labels(self) -> list[int]:
        return [int(v == "anomaly") for v in self.frame["label"]]

    @property
    def files(self) -> list[Path]:
        """Every file an epoch reads: the images and the masks."""
        return [*self._images, *(m for m in self._masks if m is not None)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = self._load(index)
        if self.cache is not None:
            self.cache[index] = item
        return item

    def _load(self, index: int) -> dict[str, Any]:
        import torch

        row = self.frame.iloc[index]
        hint = f" (manifest row {index}: {row['source']}/{row['category']})"
        image = load_image(self._images[index], hint)
        pixel_values, image_size = self.preprocess(image)
        label = int(row["label"] == "anomaly")
        mask_path = self._masks[index]
        if mask_path is not None:
            mask, grid = load_mask_sizes(mask_path, (self.mask_size, self.grid_size), hint, binary=(True, False))
        else:
            mask = torch.zeros(1, self.mask_size, self.mask_size)
            grid = torch.zeros(1, self.grid_size, self.grid_size)
        return {
            "index": index,
            "pixel_values": pixel_values,
            "image_size": tuple(int(v) for v in image_size),
            "label": label,
            "mask": mask,
            "mask_grid": grid,
            "has_mask_target": bool(label == 0 or mask_path is not None),
            "category": str(row["category"]),
        }


def collate_expert(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a stage-1 batch: crops of all images are concatenated (``crops_per_image`` keeps the split)."""
    import torch

    crops = [it["pixel_values"] if it["pixel_values"].dim() == 4 else it["pixel_values"][None] for it in items]
    return {
        "index": torch.tensor([it["index"] for it in items]),
        "pixel_values": torch.cat(crops, 0),
        "crops_per_image": [c.shape[0] for c in crops],
        "image_sizes": torch.tensor([it["image_size"] for it in items], dtype=torch.long),
        "labels": torch.tensor([float(it["label"]) for it in items]),
        "masks": torch.stack([it["mask"] for it in items]),
        "mask_grids": torch.stack([it["mask_grid"] for it in items]),
        "has_mask_target": torch.tensor([bool(it["has_mask_target"]) for it in items]),
        "categories": [it["category"] for it in items],
    }


def stratified_split(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) with ``fraction`` of every (category, label) group held out (at least one when the
    group has two or more rows and the fraction is positive); deterministic for a seed."""
    import numpy as np

    if fraction <= 0:
        return frame.reset_index(drop=True), frame.iloc[0:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for _, group in frame.groupby(["category", "label"], sort=True):
        idx = group.index.to_numpy()
        k = int(round(len(idx) * fraction))
        if k == 0 and len(idx) >= 2:
            k = 1
        held.extend(rng.permutation(idx)[:k].tolist())
    held_set = set(held)
    keep = [i for i in frame.index if i not in held_set]
    return frame.loc[keep].reset_index(drop=True), frame.loc[sorted(held_set)].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- stage 2
def read_instruct_records(path: str | Path, max_records: int | None = None) -> list[dict[str, Any]]:
    """LLaVA-format records, checked: each has ``conversations`` (alternating human/gpt) and ``image`` paths."""
    from anomaly_ov.io import read_json

    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}")
    records: list[dict[str, Any]] = []
    for i, rec in enumerate(data):
        where = f"{path}: record {i} (id {rec.get('id', '?') if isinstance(rec, dict) else '?'})"
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
            raise DataError(f"{where}: needs a non-empty `conversations` list")
        for j, turn in enumerate(rec["conversations"]):
            if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or "value" not in turn:
                raise DataError(f"{where}: conversations[{j}] must be {{'from': 'human'|'gpt', 'value': ...}}")
        records.append(rec)
        if max_records is not None and len(records) >= max_records:
            break
    if not records:
        raise DataError(f"{path}: no instruction records; run `anomaly-ov stage synthesize` first")
    return records


def record_images(record: Mapping[str, Any]) -> list[str]:
    image = record.get("image")
    if image is None or image == "":
        return []
    return [image] if isinstance(image, str) else list(image)


class InstructDataset:
    """LLaVA records for stage 2; ``encode(images, conversations)`` is the model processor's (returns tensors)."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        workspace: str | Path,
        encode: Callable[[list[Image.Image], list[dict[str, str]]], Mapping[str, Any]],
        image_root: str | Path | None = None,
    ) -> None:
        self.records = list(records)
        self.workspace = Path(workspace)
        self.image_root = Path(image_root) if image_root is not None else self.workspace
        self.encode = encode

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, rel: str) -> Path:
        path = Path(rel)
        return path if path.is_absolute() else self.image_root / path

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        hint = f" (instruction record {index}, id {rec.get('id', '?')})"
        images = [load_image(self.image_path(p), hint) for p in record_images(rec)]
        out = dict(self.encode(images, list(rec["conversations"])))
        out["index"] = index
        return out


def pad_sequences(seqs: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    import torch

    longest = max(int(s.shape[-1]) for s in seqs)
    out = torch.full((len(seqs), longest), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, : s.shape[-1]] = s.reshape(-1)
    return out


def collate_instruct(items: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad ``input_ids`` (pad id) and ``labels`` (-100), build ``attention_mask``; images of the batch are
    concatenated in order (``pixel_values`` [n_images, crops, 3, H, W] padded over crops, ``image_sizes``)."""
    import torch

    ids = [torch.as_tensor(it["input_ids"]).reshape(-1) for it in items]
    labels = [torch.as_tensor(it["labels"]).reshape(-1) for it in items]
    batch: dict[str, Any] = {
        "index": torch.tensor([int(it.get("index", -1)) for it in items]),
        "input_ids": pad_sequences(ids, pad_token_id),
        "labels": pad_sequences(labels, -100),
        "attention_mask": pad_sequences([torch.ones_like(i) for i in ids], 0),
    }
    pixel = [torch.as_tensor(it["pixel_values"]) for it in items if it.get("pixel_values") is not None]
    pixel = [p for p in pixel if p.numel()]
    if pixel:
        pixel = [p if p.dim() == 5 else p[None] for p in pixel]  # [n_images, crops, 3, H, W] per item
        most = max(p.shape[1] for p in pixel)
        padded = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixel]
        batch["pixel_values"] = torch.cat(padded, 0)
        batch["image_sizes"] = torch.cat([torch.as_tensor(it["image_sizes"]).reshape(-1, 2) for it in items
                                          if it.get("image_sizes") is not None], 0)
        if all(it.get("batch_num_images") is not None for it in items if it.get("pixel_values") is not None):
            batch["batch_num_images"] = torch.cat([torch.as_tensor(it["batch_num_images"]).reshape(-1) for it in items
                                                   if it.get("pixel_values") is not None], 0)
    for key in items[0]:
        if key not in batch and key not in ("input_ids", "labels", "pixel_values", "image_sizes", "batch_num_images"):
            batch[key] = [it.get(key) for it in items]
    return batch
