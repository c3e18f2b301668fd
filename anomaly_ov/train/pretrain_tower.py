"""Stage ``pretrain_tower``: give the tiny preset's vision tower a SigLIP-style start before stage 1.

Why: a pretrained preset's tower is SigLIP, trained image-to-text with a sigmoid loss, so it knows what it looks at.
The tiny preset's tower starts from random weights; trained only to find anomalies (stage 1) it does not tell the
objects apart, and neither stage 1's look-back class embedding nor stage 2's anomaly tokens can carry what the object
and the defect are. This stage trains the tiny tower and a small text side on image-caption pairs the data already
knows: the object (the category), the defect type, where the defect is (3 x 3 grid words from its mask) and how large
it is. Stage 1 then starts from this tower (:func:`load_pretrained_tower`), and stage 2 from stage 1's.

Loss: SigLIP's pairwise sigmoid loss (Zhai et al., 2023) over a batch of N images and their N captions::

    logits[i, j] = exp(t) * <img_i, txt_j> + b        (img, txt: L2-normalised, width ``embed_dim``)
    loss = -1/N * sum_ij log sigmoid(z_ij * logits[i, j]),   z_ij = +1 if caption_i == caption_j else -1

Two images with the same caption (two normal screws) are both positives of it, not a false negative as in SigLIP's
web data, where captions never repeat. ``t`` starts at log 10 and ``b`` at -10, as in the paper.

Image side: the tower's last hidden state [N, T, C], mean over its T patch tokens, through a linear head to
``embed_dim``. Text side: each caption word's embedding ([V, embed_dim] over the captions' words), averaged, through
a two-layer MLP. Only the tower is kept for later stages (``models/tower/vision_tower.safetensors``, the key names of
the tiny model's ``vision_tower``); both heads and the vocabulary are saved beside it for inspection.

The images are stage 1's training rows (the same stratified split, so stage 1's held-out rows stay unseen); the
report gives the held-out rows' object accuracy (the object caption closest to the image among every category's) and
defect accuracy (for anomalies, the closest of the object's captions with each defect type), chance included.

Pretrained presets skip the stage (their tower is the checkpoint's); so does ``train.tower.enabled: false``. Either
way the stage writes its report and an output folder holding only ``tower.json`` (``"trained": false``), so DVC has
its outputs, and stage 1 starts from the preset's own tower.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from anomaly_ov.config import Params

log = logging.getLogger(__name__)

STAGE = "pretrain_tower"
TOWER_FILE = "vision_tower.safetensors"
HEADS_FILE = "heads.pt"
INFO_FILE = "tower.json"
#: resolution the masks are read at for the captions' position and size words
MASK_SIZE = 64
#: rows then columns of the 3 x 3 grid a defect's centre is named by
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


# -------------------------------------------------------------------------------------------------- captions
def object_name(category: str) -> str:
    """The words of a category's object: the generator's description for synthetic categories, else its name."""
    from anomaly_ov.data.synthetic import CATEGORIES

    known = CATEGORIES.get(category)
    return known.description if known is not None else category.replace("_", " ").replace("-", " ")


def position_words(mask: torch.Tensor) -> tuple[str, str]:
    """(where, size) of a defect mask [H, W] (fractions of defect pixels): 3 x 3 grid words of its centre of mass
    ("top left", "middle center", ...) and "small" (< 1 % of the image), "medium" (< 4 %) or "large"."""
    import torch

    mask = mask.float()
    total = float(mask.sum())
    if total <= 0:
        return "", ""
    h, w = mask.shape
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    cy = float((mask.sum(1) * ys).sum()) / total / h
    cx = float((mask.sum(0) * xs).sum()) / total / w
    where = f"{_ROWS[min(2, int(cy * 3))]} {_COLS[min(2, int(cx * 3))]}"
    fraction = total / (h * w)
    size = "small" if fraction < 0.01 else "medium" if fraction < 0.04 else "large"
    return where, size


def caption(category: str, defect: str | None, mask: torch.Tensor | None = None) -> str:
    """The caption of one image: "a screw with no defect" or "a screw with a medium scratch at the top left"."""
    name = object_name(category)
    if not defect:
        return f"a {name} with no defect"
    where, size = position_words(mask) if mask is not None else ("", "")
    text = f"a {name} with a {size + ' ' if size else ''}{defect.replace('_', ' ')}"
    return f"{text} at the {where}" if where else text


def vocabulary(captions: Sequence[str]) -> dict[str, int]:
    """word -> index over ``captions`` (sorted, so the same captions give the same vocabulary)."""
    return {word: i for i, word in enumerate(sorted({w for c in captions for w in c.split()}))}


def encode_captions(captions: Sequence[str], vocab: Mapping[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat word ids, offsets) for ``torch.nn.EmbeddingBag``; unknown words are dropped."""
    import torch

    ids: list[int] = []
    offsets: list[int] = []
    for text in captions:
        offsets.append(len(ids))
        ids.extend(vocab[w] for w in text.split() if w in vocab)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------- model
def sigmoid_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids: torch.Tensor,
                 log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with repeated captions as positives.

    Args:
        image_emb: [N, D] L2-normalised image embeddings.
        text_emb: [N, D] L2-normalised embeddings of the N images' captions.
        caption_ids: [N] an id per distinct caption (equal ids = the same caption = positive pairs).
        log_scale: scalar, the log of the logit scale ``t``.
        bias: scalar, the logit bias ``b``.
    """
    import torch.nn.functional as F

    logits = image_emb @ text_emb.T * log_scale.exp() + bias
    signs = (caption_ids[:, None] == caption_ids[None, :]).float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / image_emb.shape[0]


def build_heads(tower_width: int, vocab_size: int, embed_dim: int):
    """The image head, the text side and the loss's (log scale, bias), as one ``nn.Module``."""
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_proj = nn.Sequential(nn.LayerNorm(tower_width), nn.Linear(tower_width, embed_dim))
            self.words = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
            self.text_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.bias = nn.Parameter(torch.tensor(-10.0))

        def embed_images(self, hidden: torch.Tensor) -> torch.Tensor:
            """[N, T, C] tower tokens -> [N, D] normalised embeddings (mean over tokens)."""
            return nn.functional.normalize(self.image_proj(hidden.mean(1)), dim=-1)

        def embed_texts(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.text_proj(self.words(ids, offsets)), dim=-1)

    return Heads()


def tiny_tower():
    """A randomly initialised tiny-preset vision tower (the same module and key names as the tiny model's)."""
    from transformers import AutoModel, SiglipVisionConfig

    from anomaly_ov.model.presets import TINY_VISION

    return AutoModel.from_config(SiglipVisionConfig(**TINY_VISION))


def base_views(batch: Mapping[str, Any]) -> torch.Tensor:
    """The base view (first crop) of each image of a :func:`~anomaly_ov.data.loaders.collate_expert` batch."""
    import torch

    crops = list(batch["crops_per_image"])
    starts = torch.tensor([sum(crops[:i]) for i in range(len(crops))])
    return batch["pixel_values"].index_select(0, starts)


# -------------------------------------------------------------------------------------------------- the data
def row_captions(frame: pd.DataFrame, dataset: Any) -> list[str]:
    """The caption of every row of ``frame`` (its masks read through ``dataset``, the rows' ExpertDataset)."""
    out = []
    for i, row in enumerate(frame.itertuples(index=False)):
        defect = None if row.label == "normal" else (row.defect_type or "defect")
        mask = dataset[i]["mask"][0] if defect else None
        out.append(caption(row.category, defect, mask))
    return out


def held_out_accuracy(tower: Any, heads: Any, dataset: Any, frame: pd.DataFrame, vocab: Mapping[str, int],
                      batch_size: int) -> dict[str, Any]:
    """Object and defect accuracy of the held-out rows by caption retrieval (see the module docstring)."""
    import torch

    from anomaly_ov.data.loaders import collate_expert

    if len(dataset) == 0:
        return {}
    categories = sorted(set(frame["category"]))
    defects = sorted({d for d, lab in zip(frame["defect_type"], frame["label"], strict=True) if lab == "anomaly"})
    embeds = []
    tower.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate_expert([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            embeds.append(heads.embed_images(tower(base_views(batch)).last_hidden_state))
        images = torch.cat(embeds)
        objects = heads.embed_texts(*encode_captions([caption(c, None) for c in categories], vocab))
        object_hits = (images @ objects.T).argmax(1).tolist()
        right_object = [categories[k] == c for k, c in zip(object_hits, frame["category"], strict=True)]
        right_defect: list[bool] = []
        for i, row in enumerate(frame.itertuples(index=False)):
            if row.label != "anomaly" or len(defects) < 2:
                continue
            options = heads.embed_texts(*encode_captions([caption(row.category, d) for d in defects], vocab))
            right_defect.append(defects[int((options @ images[i]).argmax())] == row.defect_type)
    tower.train()
    return {
        "images": len(dataset),
        "object_accuracy": round(sum(right_object) / len(right_object), 4),
        "object_chance": round(1 / len(categories), 4),
        "defect_accuracy": round(sum(right_defect) / len(right_defect), 4) if right_defect else None,
        "defect_chance": round(1 / len(defects), 4) if right_defect else None,
    }


# ---------------------------------------------------------------------------------------------------- stage
def _write_output(out_dir: Path, trained: tuple[nn.Module, nn.Module] | None, info: dict[str, Any]) -> None:
    """The stage's output folder: ``info`` and, when it trained, the (tower, heads) weights."""
    import torch
    from safetensors.torch import save_file

    from anomaly_ov.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        if trained is not None:
            tower, heads = trained
            state = {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}
            save_file(state, str(tmp / TOWER_FILE))
            torch.save({k: v.detach().cpu() for k, v in heads.state_dict().items()}, tmp / HEADS_FILE)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def run_pretrain_tower(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage ``pretrain_tower``: stage 1's training rows -> ``train.tower.output_dir`` + ``train.tower.report``."""
    import torch

    from anomaly_ov.data.loaders import ExpertDataset, collate_expert
    from anomaly_ov.io import atomic_write_json
    from anomaly_ov.model.presets import TINY_VISION
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.train import common
    from anomaly_ov.train.expert import item_megabytes, split_training_rows, stage_preprocessor

    cfg = params.train.tower
    workspace = Path(workspace)
    out_dir = in_workspace(workspace, cfg.output_dir)
    report_path = in_workspace(workspace, cfg.report)
    started = time.perf_counter()
    if params.is_pretrained or not cfg.enabled:
        why = "pretrained preset: its tower is the checkpoint's" if params.is_pretrained else "train.tower.enabled"
        info = {"trained": False, "reason": why}
        _write_output(out_dir, None, info)
        atomic_write_json(report_path, {**info, "seconds": round(time.perf_counter() - started, 3)})
        return info

    common.seed_everything(params.train.seed)
    train_rows, val_rows = split_training_rows(params, workspace)
    preprocess = stage_preprocessor(params)
    grid = TINY_VISION["image_size"] // TINY_VISION["patch_size"]
    train_set = ExpertDataset(train_rows, workspace, preprocess, grid, MASK_SIZE)
    # decoded items stay in memory when they fit in stage 1's budget (train.expert.cache_mb), as in stage 1
    cache = len(train_set) > 0 and len(train_set) * item_megabytes(train_set[0]) <= params.train.expert.cache_mb
    train_set.cache = {} if cache else None
    val_set = ExpertDataset(val_rows, workspace, preprocess, grid, MASK_SIZE, cache=cache)
    captions = row_captions(train_set.frame, train_set)
    vocab = vocabulary([*captions, *(caption(c, None) for c in set(val_rows["category"]))])
    distinct = {c: i for i, c in enumerate(sorted(set(captions)))}
    caption_ids = torch.tensor([distinct[c] for c in captions])

    tower = tiny_tower()
    heads = build_heads(tower.config.hidden_size, len(vocab), cfg.embed_dim)
    trainable = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = max(1, per_epoch * cfg.epochs)
    warmup = max(1, int(0.05 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    generator = torch.Generator().manual_seed(params.train.seed)
    history: list[dict[str, float]] = []
    tower.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_set), generator=generator).tolist()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = collate_expert([train_set[i] for i in idx])
            text_ids, offsets = encode_captions([captions[i] for i in idx], vocab)
            image_emb = heads.embed_images(tower(base_views(batch)).last_hidden_state)
            loss = sigmoid_loss(image_emb, heads.embed_texts(text_ids, offsets), caption_ids[idx],
                                heads.log_scale, heads.bias)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            history.append({"epoch": epoch, "loss": float(loss.detach())})
        log.info("pretrain_tower epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, history[-1]["loss"])
    held_out = held_out_accuracy(tower, heads, val_set, val_set.frame, vocab, cfg.batch_size)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "trained": True,
        "steps": len(history),
        "epochs": cfg.epochs,
        "train_images": len(train_set),
        "distinct_captions": len(distinct),
        "vocabulary": len(vocab),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": round(sum(h["loss"] for h in history[-per_epoch:]) / max(1, len(history[-per_epoch:])), 4)
        if history else None,
        **{f"val_{k}": v for k, v in held_out.items() if k != "images"},
        "train_seconds": round(seconds, 3),
    }
    info = {"trained": True, "vision_config": tower.config.to_dict(), "embed_dim": cfg.embed_dim,
            "vocabulary": vocab, "example_captions": sorted(distinct)[:20]}
    _write_output(out_dir, (tower, heads), info)
    atomic_write_json(report_path, {**summary, "seconds": round(seconds, 3), "held_out": held_out,
                                    "loss_per_epoch": [
                                        round(sum(h["loss"] for h in history if h["epoch"] == e)
                                              / max(1, sum(1 for h in history if h["epoch"] == e)), 4)
                                        for e in range(cfg.epochs)],
                                    "output_dir": cfg.output_dir})
    return summary


def tower_file(params: Params, workspace: Path) -> Path:
    """The pretrained tower's weights file in the workspace (``train.tower.output_dir``)."""
    from anomaly_ov.paths import in_workspace

    return in_workspace(Path(workspace), params.train.tower.output_dir) / TOWER_FILE


def load_pretrained_tower(model: Any, params: Params, workspace: Path) -> bool:
    """Load the ``pretrain_tower`` stage's tower into ``model.expert_tower`` when that stage trained one.

    Returns whether a tower was loaded. A folder without a trained tower (pretrained preset, stage off) leaves the
    model as it is; a missing folder while the stage is on is an error naming the stage to run.
    """
    from safetensors.torch import load_file

    from anomaly_ov.errors import InputError
    from anomaly_ov.paths import in_workspace

    if params.is_pretrained or not params.train.tower.enabled:
        return False
    directory = in_workspace(Path(workspace), params.train.tower.output_dir)
    info_file = directory / INFO_FILE
    if not info_file.is_file():
        raise InputError(f"{info_file} is missing: run `anomaly-ov stage {STAGE}` first (or set "
                         "train.tower.enabled: false to start stage 1 from a random tower)")
    if not json.loads(info_file.read_text()).get("trained"):
        return False
    model.expert_tower.load_state_dict(load_file(str(tower_file(params, workspace))), strict=True)
    log.info("stage 1 starts from the pretrained tower in %s", directory)
    return True
