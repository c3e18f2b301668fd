"""Stage 1: train the anomaly expert (LTFM) on the training-role images of the manifest.

Loss: class-balanced BCE on the image score logits (weights from the training set's label frequencies), plus,
when the recipe turns it on, a mask loss on every level's base-view anomaly map: focal + dice against the defect
mask (the map bilinearly upsampled to the mask resolution) and a per-cell BCE against the fraction of defect pixels
in each G x G cell. Normal images count with an all-zero target; anomalies without a mask are left out of the mask
loss. With ``score_loss_trains_maps: false`` (tiny recipe) the BCE trains only the selector and the predictor and the
mask loss alone the maps and the tower (:class:`ExpertStage`). ``augment`` turns and mirrors each batch, and
``augment_colours`` also reorders each image's colour channels (seeded by the batch, so resume stays exact). The
paper's recipe (pretrained presets) has no mask loss and temperature 100; the tiny preset, whose tower starts from
random weights, needs the mask loss at temperature 10 (docs/model.md, 'Training recipes') — the run records which
recipe was used.

Optimiser: AdamW over the expert (and the vision tower when ``train_vision_tower``), with the recipe's ``schedule``:
the release's CosineAnnealingWarmRestarts restarting ``restarts_per_epoch`` times per epoch, or (tiny recipe) one
warm-up and cosine over the whole run (``one_cycle``), which trains the from-scratch tower better. A stratified
``val_fraction`` of the training-role rows is held out; image and pixel AUROC on it are logged every epoch.
Output: ``models/expert/`` (the model's ``save_expert_stage``) and ``reports/train_expert.json``.

The model is :func:`~anomaly_ov.model.presets.build_expert_model`'s: for a pretrained preset the checkpoint's vision
tower and the expert only (the LLM is never loaded; the 7B preset would otherwise load 7B parameters to train 7M).
A recipe with ``epochs: 0`` trains nothing: the expert of ``model.expert_checkpoint`` (the official
``pretrained_expert_*.pth``, loaded strictly) is the stage's output as it is, evaluated on the held-out rows and
recorded as ``expert_source: official_checkpoint`` (report and MLflow tag; a trained expert says ``trained``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ov.errors import ConfigError, InputError, StageFailed
from anomaly_ov.model.expert import AnomalyExpert, ExpertOutput
from anomaly_ov.train import common

if TYPE_CHECKING:
    from anomaly_ov.config import ExpertRecipe, Params
    from anomaly_ov.data.loaders import ExpertDataset
    from anomaly_ov.model.processing import ImagePreprocessor

#: ``forward(stage_module, batch) -> ExpertOutput``
ExpertForward = Callable[[nn.Module, Mapping[str, Any]], ExpertOutput]
Collate = Callable[[list[Any]], Any]

log = logging.getLogger(__name__)

STAGE = "train_expert"


# ---------------------------------------------------------------------------------------------------- losses
def class_balance(labels: Sequence[int]) -> tuple[float, float]:
    """Per-sample BCE weights (normal, anomaly) so both classes weigh half of the loss on average."""
    n = len(labels)
    n_pos = sum(1 for v in labels if v)
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"stage 1 needs normal and anomalous training images; found {n_neg} normal, "
                         f"{n_pos} anomalous (add test splits with anomalies to the training sources)")
    return n / (2.0 * n_neg), n / (2.0 * n_pos)


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor, weights: tuple[float, float]) -> torch.Tensor:

    w = labels * weights[1] + (1 - labels) * weights[0]
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels, weight=w)


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """Binary focal loss on probabilities (mean over pixels).

    ``pt`` is squeezed into [eps, 1 - eps] affinely rather than clamped: a clamp would cut the gradient of pixels
    whose probability saturated below eps, exactly the defect pixels a collapsed map must recover.
    """
    pt = target * prob + (1 - target) * (1 - prob)
    pt = pt * (1 - 2 * eps) + eps
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice over the whole batch, on the anomaly channel and on the normal channel (as AnomalyCLIP).

    Over the batch, not per image: a normal image's all-zero target would otherwise give a per-image dice near 1
    whatever the map does (no useful gradient); pooled, its false positives simply enlarge the denominator.
    """

    def dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)

    return (dice(prob, target) + dice(1 - prob, 1 - target)) / 2


def cell_bce(prob: torch.Tensor, target: torch.Tensor, pos_weight: float, eps: float = 1e-6) -> torch.Tensor:
    """BCE between a G x G map and the fraction of defect pixels per cell, defect cells weighted ``pos_weight``.

    The per-cell target reaches every cell the defect touches, also those of thin defects that bilinear upsampling
    and a 0.5-thresholded mask would miss; ``pos_weight`` keeps the few defect cells from being outvoted.
    """
    p = prob.clamp(eps, 1 - eps)
    weight = 1 + (pos_weight - 1) * target
    return -(weight * (target * p.log() + (1 - target) * (1 - p).log())).mean()


def mask_loss(level_maps: Sequence[torch.Tensor], masks: torch.Tensor, cells: torch.Tensor, eligible: torch.Tensor,
              pos_weight: float = 5.0) -> torch.Tensor:
    """Mean over levels of focal + dice (the map upsampled to the masks [B,1,R,R]) plus per-cell BCE (the map
    against ``cells`` [B,1,G,G], the fraction of defect pixels per cell), on base-view maps [B,1,G,G].

    Every level is supervised on its own map: supervising only their mean lets one level carry the map while the
    others stay flat, and the mean is what the selector and the evaluation read.
    """

    if not bool(eligible.any()):
        return level_maps[0].sum() * 0.0
    masks, cells = masks[eligible], cells[eligible]
    total = level_maps[0].new_zeros(())
    for level in level_maps:
        level = level[eligible]
        up = F.interpolate(level, size=masks.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
        total = total + focal_loss(up, masks) + dice_loss(up, masks) + cell_bce(level, cells, pos_weight)
    return total / len(level_maps)


def top_cells_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the hottest ``fraction`` of each map's cells (at least one): [B,1,G,G] -> [B]."""
    flat = maps.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


def map_image_loss(level_maps: Sequence[torch.Tensor], labels: torch.Tensor, weights: tuple[float, float],
                   fraction: float, eps: float = 1e-6) -> torch.Tensor:
    """Class-balanced BCE between each level's base-view map [B,1,G,G], pooled by :func:`top_cells_mean`, and the
    image labels [B]; mean over levels. A normal image pays for its hottest cells, an anomalous one for lacking any
    (multiple-instance pooling, as weakly supervised anomaly detectors score an image by its top cells)."""
    w = labels * weights[1] + (1 - labels) * weights[0]
    total = level_maps[0].new_zeros(())
    for level in level_maps:
        pooled = top_cells_mean(level, fraction).clamp(eps, 1 - eps)
        total = total + F.binary_cross_entropy(pooled, labels, weight=w)
    return total / len(level_maps)


def expert_loss(out: ExpertOutput, batch: Mapping[str, Any], recipe: ExpertRecipe, weights: tuple[float, float]
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Balanced BCE on the image score logits [B], plus the recipe's mask loss and image-level map loss on the
    base-view level maps."""
    labels = batch["labels"].to(out.score_logits.device)
    bce = balanced_bce(out.score_logits, labels, weights)
    metrics = {"bce": float(bce.detach())}
    loss = bce
    with_mask = recipe.mask_loss and recipe.mask_loss_weight > 0
    # the base view's map of every image, per level: what both map losses compare with the image's targets
    levels = ([m.index_select(0, out.base_index) for m in out.level_maps]
              if with_mask or recipe.map_image_loss_weight > 0 else [])
    if with_mask:
        dev = out.maps.device
        ml = mask_loss(levels, batch["masks"].to(dev), batch["mask_grids"].to(dev), batch["has_mask_target"].to(dev),
                       recipe.mask_pos_weight)
        metrics["mask_loss"] = float(ml.detach())
        loss = loss + recipe.mask_loss_weight * ml
    if recipe.map_image_loss_weight > 0:
        mil = map_image_loss(levels, labels.to(levels[0].device).float(), weights, recipe.map_image_top_fraction)
        metrics["map_image_loss"] = float(mil.detach())
        loss = loss + recipe.map_image_loss_weight * mil
    return loss, metrics


#: the 6 orders of an image's colour channels (``augment_colours``)
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def augment_batch(batch: Mapping[str, Any], seed: int,
                  colour_norm: tuple[Sequence[float], Sequence[float]] | None = None) -> dict[str, Any]:
    """The batch turned by a random multiple of 90 degrees and maybe mirrored (images, masks and mask cells alike).

    The draw is seeded by ``seed`` and the batch's dataset indices, so a resumed run augments its batches exactly
    as the uninterrupted run did. The training set's categories then appear in 8 poses, which keeps the expert
    from tying a defect to where it sits or how it is oriented in the few training categories.

    ``colour_norm``: the image processor's (mean, std) per channel; given, each image's colour channels are also
    reordered (one of :data:`CHANNEL_ORDERS` per image, from the same seeded draw) in pixel space: ``pixel_values``
    [B,...,3,H,W] are un-normalised, reordered and normalised again.
    """

    key = int(common.fingerprint(seed, [int(i) for i in batch["index"].tolist()])[:12], 16)
    generator = torch.Generator().manual_seed(key)
    draw = torch.randint(0, 8, (1,), generator=generator).item()
    turns, mirror = int(draw) % 4, draw >= 4

    def transform(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, turns, dims=(-2, -1))
        return t.flip(-1) if mirror else t

    out = dict(batch)
    for name in ("pixel_values", "masks", "mask_grids"):
        out[name] = transform(batch[name])
    if colour_norm is not None:
        pixels = out["pixel_values"]
        mean = torch.as_tensor(colour_norm[0], dtype=pixels.dtype).reshape(3, 1, 1)
        std = torch.as_tensor(colour_norm[1], dtype=pixels.dtype).reshape(3, 1, 1)
        orders = torch.tensor(CHANNEL_ORDERS)[torch.randint(0, len(CHANNEL_ORDERS), (pixels.shape[0],),
                                                            generator=generator)]  # [B,3]
        shape = (pixels.shape[0], *([1] * (pixels.dim() - 4)), 3, 1, 1)
        index = orders.reshape(shape).expand_as(pixels)
        out["pixel_values"] = (torch.gather(pixels * std + mean, -3, index) - mean) / std
    return out


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class ScoredImages:
    """What the expert gives each image of a dataset, in the dataset's order (:func:`score_images`)."""

    scores: list[float]  # the image score (``ExpertOutput.scores``)
    logits: list[float]  # the predictor's logit (``score_logits``)
    similarity: list[float] | None  # the base view's self-similarity, when the expert reads it
    labels: list[int]
    categories: list[str]
    maps: list[np.ndarray]  # the base view's map, upsampled (bilinear) to the mask's resolution
    masks: list[np.ndarray]  # bool


def score_images(forward: ExpertForward, model: nn.Module, dataset: ExpertDataset, collate: Collate,
                 batch_size: int, num_workers: int = 0) -> ScoredImages:
    """Run the expert (in eval mode, without gradients) over every image of ``dataset``."""
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    loader = common.make_loader(dataset, batches, collate, num_workers, seed=0, epoch=0)
    scored = ScoredImages([], [], [], [], [], [], [])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = forward(model, batch)
            scored.scores += out.scores.reshape(-1).float().cpu().tolist()
            scored.logits += out.score_logits.reshape(-1).float().cpu().tolist()
            if out.similarity is not None and scored.similarity is not None:
                scored.similarity += out.similarity.reshape(-1).float().cpu().tolist()
            else:
                scored.similarity = None
            scored.labels += [int(v) for v in batch["labels"].tolist()]
            scored.categories += list(batch["categories"])
            size = batch["masks"].shape[-2:]
            up = F.interpolate(out.base_maps.float(), size=size, mode="bilinear", align_corners=False)
            scored.maps += list(up[:, 0].cpu().numpy())
            scored.masks += list(batch["masks"][:, 0].cpu().numpy() > 0)
    model.train(was_training)
    return scored


def expert_metrics(scored: ScoredImages, scores: Sequence[float] | None = None) -> dict[str, Any]:
    """Image AUROC and pixel AUROC (per category, then the mean) of ``scored`` (its image scores, or ``scores``)."""
    from anomaly_ov.evaluate import metrics as M

    scores = scored.scores if scores is None else list(scores)
    labels, cats, maps, masks = scored.labels, scored.categories, scored.maps, scored.masks
    per_class: dict[str, dict[str, float | None]] = {}
    for cat in sorted(set(cats)):
        idx = [i for i, c in enumerate(cats) if c == cat]
        # only images whose mask is known count at pixel level (anomalies without a mask would count as normal)
        px = [i for i in idx if labels[i] == 0 or masks[i].any()]
        per_class[cat] = {
            "image_auroc": M.image_auroc([scores[i] for i in idx], [labels[i] for i in idx]),
            "pixel_auroc": M.pixel_auroc([maps[i] for i in px], [masks[i] for i in px]) if px else None,
        }
    return {
        "image_auroc": M.mean_of(v["image_auroc"] for v in per_class.values()),
        "pixel_auroc": M.mean_of(v["pixel_auroc"] for v in per_class.values()),
        "images": len(scores),
        "per_class": per_class,
    }


def calibrate_image_score(expert: AnomalyExpert, scored: ScoredImages) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit ``expert``'s ``calibrated_fusion`` score on ``scored`` (its held-out rows, as :func:`score_images` gave
    them for its final weights) and set it.

    Returns (the held-out metrics of the score the expert now gives, a report of the calibration: its numbers, the
    held-out image AUROC of the predictor alone and of the calibrated score; or why none was set, the expert then
    scoring what its predictor does).
    """
    from anomaly_ov.train.score_calibration import CalibrationError, fit_score_calibration

    logits = torch.tensor(scored.logits, dtype=torch.float32)[:, None]  # [B,1]
    predictor = expert_metrics(scored, torch.sigmoid(logits).reshape(-1).tolist())
    report: dict[str, Any] = {"predictor_image_auroc": predictor["image_auroc"], "images": len(scored.labels)}
    try:
        calibration = fit_score_calibration(scored.logits, scored.similarity or [], scored.labels)
    except CalibrationError as exc:
        log.warning("stage 1: no score calibration (%s)", exc)
        return predictor, {**report, "calibrated": False, "reason": str(exc)}
    expert.set_score_calibration(calibration)
    with torch.no_grad():  # the expert's own maths on the scores in hand
        calibrated = expert.image_scores(logits, similarity=torch.tensor(scored.similarity)[:, None])
    metrics = expert_metrics(scored, calibrated.reshape(-1).cpu().tolist())
    return metrics, {**report, "calibrated": True, **calibration.to_dict(),
                     "weights": expert.score_calibration.tolist(),  # type: ignore[operator]
                     "image_auroc": metrics["image_auroc"]}


# ------------------------------------------------------------------------------------------------- training
def make_optimizer(params: Sequence[nn.Parameter], recipe: ExpertRecipe, steps_per_epoch: int
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and the recipe's schedule, stepped every optimiser step: ``restarts`` (the release's
    CosineAnnealingWarmRestarts, ``restarts_per_epoch`` cycles per epoch) or ``one_cycle`` (OneCycleLR over all
    ``epochs * steps_per_epoch`` steps, warming up over ``warmup_ratio`` of them)."""

    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "one_cycle":
        total = max(1, steps_per_epoch * recipe.epochs)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total,
                                                        pct_start=recipe.warmup_ratio)
    cycle = max(1, math.ceil(steps_per_epoch / recipe.restarts_per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cycle, eta_min=recipe.lr * 0.01)
    return opt, sched


def set_trainable(model: nn.Module, trainable: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze everything in ``model`` except ``trainable`` (returned as a list without duplicates)."""
    keep = {id(p) for p in trainable}
    unique: list[nn.Parameter] = []
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            unique.append(p)
    return unique


#: stage 1 trains parameters that get no gradient (the tower's post_layernorm, which the expert does not read, and
#: the q-former's key bias, which the softmax cancels): DDP must look for them every step
FIND_UNUSED_PARAMETERS = True


def fit_expert(
    model: nn.Module,
    forward: ExpertForward,
    trainable: Sequence[nn.Parameter],
    train_set: ExpertDataset,
    val_set: ExpertDataset | None,
    collate: Collate,
    recipe: ExpertRecipe,
    *,
    seed: int,
    checkpoint_dir: Path,
    checkpoint_every: int,
    num_workers: int = 0,
    fingerprint: str = "",
    progress: bool = True,
    on_step_end: common.StepHook | None = None,
    max_grad_norm: float | None = None,
    strategy: str = "ddp",
    zero_stage: int = 2,
    colour_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    on_validated: Callable[[int, ScoredImages], None] | None = None,
) -> common.LoopResult:
    """Train the expert part of ``model`` (anything ``forward(model, batch) -> ExpertOutput`` understands).

    ``colour_norm``: the image processor's (mean, std), which ``recipe.augment_colours`` needs to reorder colours
    in pixel space (see :func:`augment_batch`). ``on_validated(epoch, scored)``: called with
    :func:`score_images`'s result each time an epoch's end scores ``val_set`` (epochs count from 0).

    Under torchrun the model is wrapped for ``strategy`` (see :func:`common.wrap_distributed`); the result's
    ``model`` is what trained (read its weights with :func:`common.consolidated_state`).
    """
    if recipe.augment_colours and colour_norm is None:
        raise ValueError("recipe.augment_colours needs colour_norm, the image processor's (mean, std)")
    info = common.dist_info()
    if not set_trainable(model, trainable):
        raise StageFailed(STAGE, "no trainable parameter (is the expert attached to the model?)")
    device = next(iter(trainable)).device
    weights = class_balance(train_set.labels)
    per_epoch = common.steps_per_epoch(len(train_set), recipe.batch_size, world_size=info.world_size)
    wrapped = (common.wrap_distributed(model, device, strategy, find_unused_parameters=FIND_UNUSED_PARAMETERS)
               if strategy != "deepspeed" else model)
    params = [p for p in wrapped.parameters() if p.requires_grad]  # FSDP's sharded parameters when sharded
    optimizer, scheduler = make_optimizer(params, recipe, per_epoch)

    def step(m: nn.Module, batch: Mapping[str, Any]) -> common.StepOutput:
        if recipe.augment:
            batch = augment_batch(batch, seed, colour_norm if recipe.augment_colours else None)
        out = forward(m, batch)
        loss, metrics = expert_loss(out, batch, recipe, weights)
        return common.StepOutput(loss=loss, items=len(batch["labels"]), metrics=metrics)

    def epoch_end(epoch: int, m: nn.Module) -> dict[str, float]:
        if val_set is None or len(val_set) == 0 or (epoch + 1) % recipe.validate_every:
            return {}
        scored = score_images(forward, common.unwrap(m), val_set, collate, recipe.batch_size, num_workers)
        if on_validated is not None:
            on_validated(epoch, scored)
        res = expert_metrics(scored)
        return {k: v for k, v in res.items() if k in ("image_auroc", "pixel_auroc") and v is not None}

    settings = common.LoopSettings(
        epochs=recipe.epochs, batch_size=recipe.batch_size, seed=seed, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, num_workers=num_workers, desc="stage 1 (expert)",
        items_name="images", fingerprint=fingerprint, progress=progress, max_grad_norm=max_grad_norm,
        strategy=strategy, zero_stage=zero_stage,
    )
    torch.manual_seed(seed)
    return common.run_loop(wrapped, optimizer, scheduler, train_set, collate, step, settings,
                           on_epoch_end=epoch_end, on_step_end=on_step_end)


def recipe_record(params: Params, recipe: ExpertRecipe) -> dict[str, Any]:
    """What the run records about the recipe (tags, params, report)."""
    from anomaly_ov.model.presets import expert_config

    return {
        "family": params.recipe_family,
        "mask_loss": recipe.mask_loss,
        "mask_loss_weight": recipe.mask_loss_weight,
        "temperature": expert_config(params)["temperature"],  # the model's (model.expert), recorded with the run
        "train_vision_tower": recipe.train_vision_tower,
        "lr": recipe.lr, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
        "schedule": recipe.schedule, "restarts_per_epoch": recipe.restarts_per_epoch,
        "warmup_ratio": recipe.warmup_ratio, "weight_decay": recipe.weight_decay,
        "base_view_only": recipe.base_view_only, "mask_pos_weight": recipe.mask_pos_weight,
        "map_image_loss_weight": recipe.map_image_loss_weight, "map_image_top_fraction": recipe.map_image_top_fraction,
        "augment": recipe.augment, "augment_colours": recipe.augment_colours,
        "score_loss_trains_maps": recipe.score_loss_trains_maps, "validate_every": recipe.validate_every,
    }


class ExpertStage(nn.Module):
    """Module view of a model's stage-1 path (tower + expert), so that DDP and FSDP see the forward they wrap.

    Args:
        model: a model with the expert path (``tower_features``, ``anomaly_expert``, ``expert_forward``): the tiny
            preset's whole model or a pretrained preset's ``AnomalyExpertModel``.
        base_view_only: score each image's base view alone (AnyRes crops skipped).
        score_loss_trains_maps: whether a loss on the image score reaches the maps and the tower through the
            look-twice selector (the release: yes); ``False`` detaches the selector's inputs (the recipe's
            ``score_loss_trains_maps``).
    """

    def __init__(self, model: nn.Module, base_view_only: bool, score_loss_trains_maps: bool = True) -> None:
        super().__init__()
        self.model = model
        self.base_only = base_view_only
        self.detach_selector = not score_loss_trains_maps

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, crops: list[int]) -> ExpertOutput:
        """Args: ``pixel_values`` [sum(crops), 3, H, W] (every image's crops, base view first), ``image_sizes``
        [B, 2], ``crops`` the crop count of each of the B images. Returns the expert's output for the B images."""
        m: Any = self.model
        if self.base_only:
            starts = torch.tensor([sum(crops[:i]) for i in range(len(crops))], device=pixel_values.device)
            base = pixel_values.index_select(0, starts)
            features, levels = m.tower_features(base)
            return m._run_expert(features, levels, [1] * len(crops), self.detach_selector)
        return m.expert_forward(pixel_values, image_sizes, detach_selector=self.detach_selector)


def stage_forward(device: torch.device) -> ExpertForward:
    """``forward(stage_module, batch) -> ExpertOutput`` for batches of :func:`collate_expert`."""

    def forward(module: nn.Module, batch: Mapping[str, Any]) -> ExpertOutput:
        return module(batch["pixel_values"].to(device), batch["image_sizes"].to(device),
                      list(batch["crops_per_image"]))

    return forward


def item_megabytes(item: Mapping[str, Any]) -> float:
    """Memory of one decoded stage-1 item (to decide whether the training set may be cached)."""
    total = sum(v.numel() * v.element_size() for v in item.values() if hasattr(v, "numel"))
    return total / 2**20


def split_training_rows(params: Params, workspace: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, held-out rows) of the manifest's training role, stratified by category and label."""
    from anomaly_ov.data.loaders import stratified_split
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.paths import in_workspace

    manifest = in_workspace(workspace, params.data.manifest)
    frame = read_manifest(manifest)
    train_rows = frame[frame["role"] == "train"]
    if train_rows.empty:
        raise InputError(f"{manifest}: no rows with role 'train'; list a training source in data.sources")
    return stratified_split(train_rows, params.train.expert.val_fraction, params.train.seed)


def stage_preprocessor(params: Params) -> ImagePreprocessor:
    """Stage 1's image transform (``ImagePreprocessor``): the preset's image processor
    (:func:`~anomaly_ov.model.presets.image_processor_for`, the checkpoint's for a pretrained preset) and, for a
    pretrained preset, the release's resize to 1024 px on the longer side, so the expert trains on the pixels stage 2
    and evaluation feed it."""
    from anomaly_ov.model.presets import RELEASE_MAX_IMAGE_SIDE, image_processor_for
    from anomaly_ov.model.processing import ImagePreprocessor

    return ImagePreprocessor(image_processor_for(params), RELEASE_MAX_IMAGE_SIDE if params.is_pretrained else None)


def consolidated_expert_model(params: Params, result: common.LoopResult, stage_module: ExpertStage,
                              model: nn.Module) -> nn.Module:
    """The trained model, whole, for saving: ``model`` itself when its weights are whole in this process (one
    process, ddp, deepspeed ZeRO-2); under fsdp or ZeRO-3 a fresh stage-1 model with the gathered weights on rank 0
    (a collective: call on every rank; the other ranks get ``model`` back and save nothing)."""
    from anomaly_ov.model.presets import build_expert_model

    if result.model is None or not (common.is_sharded(result.model) or _partitioned(result.model)):
        return model
    state = common.consolidated_state(result, stage_module)
    if not common.dist_info().is_main:
        return model
    whole = ExpertStage(build_expert_model(params), stage_module.base_only)
    whole.load_state_dict(state, strict=True)
    return whole.model


def _partitioned(model: nn.Module) -> bool:
    """Whether ``model`` is a DeepSpeed engine whose weights are partitioned (ZeRO-3)."""
    check = getattr(model, "zero_optimization_partition_weights", None)
    return bool(check()) if callable(check) else False


def run_train_expert(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage ``train_expert``: manifest (role train) -> models/expert/ + reports/train_expert.json."""
    from anomaly_ov import tracking
    from anomaly_ov.data.loaders import ExpertDataset, collate_expert
    from anomaly_ov.io import atomic_write_json
    from anomaly_ov.model.expert import load_expert_weights
    from anomaly_ov.model.presets import build_expert_model, save_expert_stage
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.plots import write_stage_plots

    cfg = params.train.expert
    workspace = Path(workspace)
    info = common.dist_info()
    common.require_strategy(cfg.strategy, "train.expert.strategy")
    if (cfg.num_processes > 1 or params.train.launch.nnodes > 1) and not info.distributed:
        from anomaly_ov.train.launch import relaunch

        return relaunch(STAGE, params, workspace, cfg.num_processes)

    started = time.perf_counter()
    recipe = params.expert_recipe
    device = common.select_device(cfg.device)
    common.seed_everything(params.train.seed)
    train_rows, val_rows = split_training_rows(params, workspace)


    official = recipe.epochs == 0
    if official and not params.model.expert_checkpoint:
        raise ConfigError("the stage-1 recipe has epochs: 0 (use the expert as released) but model.expert_checkpoint "
                          "is not set; point it to the official pretrained_expert_*.pth or give the recipe epochs")
    model = build_expert_model(params)
    from anomaly_ov.train.pretrain_tower import load_pretrained_tower, tower_file

    # the tiny preset starts from stage pretrain_tower's tower: its weights are an input of the resume fingerprint
    tower = (common.file_signature(tower_file(params, workspace)) if load_pretrained_tower(model, params, workspace)
             else None)
    model = model.to(device)
    expert_checkpoint = params.model.expert_checkpoint
    loaded = (load_expert_weights(model.anomaly_expert, expert_checkpoint, strict=True)
              if official and expert_checkpoint else None)
    expert_source = "official_checkpoint" if official else "trained"
    preprocess = stage_preprocessor(params)
    grid = int(model.config.grid_size)
    mask_size = params.evaluate.resolution
    train_set = ExpertDataset(train_rows, workspace, preprocess, grid, mask_size)
    cache = len(train_set) * item_megabytes(train_set[0]) <= cfg.cache_mb
    train_set.cache = {} if cache else None
    val_set = ExpertDataset(val_rows, workspace, preprocess, grid, mask_size, cache=cache) if len(val_rows) else None

    stage_module = ExpertStage(model, recipe.base_view_only, recipe.score_loss_trains_maps)
    trainable = list(model.anomaly_expert.parameters())
    if recipe.train_vision_tower:
        trainable += list(model.expert_tower.parameters())
    forward = stage_forward(device)
    record = recipe_record(params, recipe)
    if info.is_main:
        tracking.set_tags({"recipe": record["family"], "mask_loss": record["mask_loss"],
                           "temperature": record["temperature"], "expert_source": expert_source})
        tracking.log_params({"recipe": record, "expert_source": expert_source,
                             "expert_checkpoint": params.model.expert_checkpoint, "train_images": len(train_set),
                             "val_images": len(val_set or []), "device": str(device),
                             "num_processes": info.world_size, "strategy": cfg.strategy})
    fp = common.fingerprint(
        params.to_dict()["model"], params.to_dict()["train"]["expert"], params.train.seed, mask_size,
        common.file_signature(in_workspace(workspace, params.data.manifest)), info.world_size,
        common.data_fingerprint([*train_set.files, *(val_set.files if val_set is not None else [])], workspace),
        tower,
    )
    scored: dict[int, ScoredImages] = {}  # the held-out rows' scores at an epoch's end, by epoch
    if official:
        result = common.LoopResult(step=0, history=[], epoch_metrics=[], seconds=0.0, items=0, resumed_from_step=None)
    else:
        result = fit_expert(
            stage_module, forward, trainable, train_set, val_set, collate_expert, recipe, seed=params.train.seed,
            checkpoint_dir=in_workspace(workspace, cfg.checkpoint_dir), checkpoint_every=cfg.checkpoint_every,
            num_workers=cfg.num_workers, fingerprint=fp, max_grad_norm=cfg.max_grad_norm, strategy=cfg.strategy,
            zero_stage=cfg.zero_stage, colour_norm=(preprocess.image_processor.image_mean,
                                                    preprocess.image_processor.image_std),
            on_validated=lambda epoch, res: scored.update({epoch: res}),
        )
    # the last epoch's end scored the final weights already, unless it did not validate or ran in an earlier
    # process (a resume after the last step); otherwise every rank scores the whole held-out set (under fsdp the
    # sharded forward is a collective)
    trained = result.model if result.model is not None else stage_module
    rows = scored.get(recipe.epochs - 1)  # None when no epoch scored (the official expert trains none)
    if rows is None and val_set is not None and len(val_set):
        rows = score_images(forward, trained, val_set, collate_expert, recipe.batch_size, cfg.num_workers)
    val = expert_metrics(rows) if rows is not None else {}
    model = consolidated_expert_model(params, result, stage_module, model)
    calibration: dict[str, Any] | None = None  # the calibrated_fusion score is fit on the held-out rows, then saved
    expert: Any = model.anomaly_expert
    if info.is_main and expert.image_score == "calibrated_fusion":
        if rows is None:
            calibration = {"calibrated": False, "reason": "no held-out rows (train.expert.val_fraction is 0): the "
                           "expert scores what its predictor does"}
            log.warning("stage 1: %s", calibration["reason"])
        else:
            val, calibration = calibrate_image_score(expert, rows)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "expert_source": expert_source,
        "expert_checkpoint": params.model.expert_checkpoint,
        **({"expert_keys_loaded": len(loaded["matched"])} if loaded else {}),
        "steps": result.step,
        "epochs": recipe.epochs,
        "train_images": len(train_set),
        "val_images": len(val_set or []),
        "val_image_auroc": val.get("image_auroc"),
        "val_pixel_auroc": val.get("pixel_auroc"),
        **({"score_calibration": calibration} if calibration is not None else {}),
        **common.summarise_history(result),
        "train_seconds": round(result.seconds, 3),
        "images_per_s": round(result.items_per_s, 2),
        "resumed_from_step": result.resumed_from_step,
    }
    if info.is_main:
        out_dir = in_workspace(workspace, cfg.output_dir)
        # the tower travels with the expert when it trained, and always for the tiny preset (stage 2 rebuilds its
        # randomly initialised tower from another seed); a pretrained tower is the checkpoint's
        save_expert_stage(model, out_dir, include_tower=recipe.train_vision_tower or not params.is_pretrained)
        report_path = in_workspace(workspace, cfg.report)
        curves = common.plot_curves(result, report_path.with_name(report_path.stem + "_curves.png"),
                                    f"stage 1 (expert, {record['family']} recipe)", keys=("loss", "bce", "mask_loss",
                                                                                      "map_image_loss", "lr"))
        write_stage_plots("train_expert", workspace, result.history, result.epoch_metrics)  # DVC plots
        atomic_write_json(report_path, {
            **summary, "seconds": round(seconds, 3), "recipe": record, "device": str(device),
            "num_processes": info.world_size, "strategy": cfg.strategy, "val": val,
            "epoch_metrics": result.epoch_metrics, "output_dir": cfg.output_dir,
            "loss_curve": [[int(h["step"]), round(h["loss"], 6)] for h in result.history],
        })
        tracking.log_artifact(out_dir, "expert")
        tracking.log_artifact(report_path)
        if curves is not None:
            tracking.log_artifact(curves)
        common.remove_checkpoints(in_workspace(workspace, cfg.checkpoint_dir))  # the outputs are the result now
    common.barrier()
    return summary
