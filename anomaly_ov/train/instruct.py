"""Stage 2: instruction tuning of the projector and the LLM on the LLaVA-format conversations.

Cross-entropy on the answer tokens only (the processor sets every other label to -100), averaged per token or per
conversation (``recipe.loss_reduction``, see :func:`answer_loss`); the LM head runs on the answer positions only.
The vision tower and the expert are frozen and come from stage 1 (``models/expert`` through ``load_expert_stage``).
An optional text warm-up (``recipe.text_warmup_epochs``, on for the tiny preset) first trains the LLM alone on
text-only versions of every record, each image reduced to its phrase with the expert's word (see
:func:`warm_up_language`); an optional projector alignment (``recipe.align_epochs``, on for the tiny preset) then
trains the projector alone on the visual records, the LLM frozen (see :func:`align_projector`).
The tiny preset trains its BPE tokenizer on the instruction text at stage start and saves it with the model;
pretrained presets use their checkpoint's tokenizer. Optional LoRA (peft) on the LLM's linear layers (merged back
before saving, so the output directory is a plain model). Gradient accumulation; gradient checkpointing and bf16
autocast only on CUDA; cosine schedule with warmup. What trains is kept in float32 (master weights, as the release's
DeepSpeed keeps them) even when the checkpoint is 16-bit: AdamW at lr 1e-5 on bf16 weights rounds most updates away.
Frozen parts stay in the checkpoint's dtype; the trained parts go back to it before saving.
Conversations longer than ``recipe.max_length`` (the release's model_max_length, 32768) are cut, never inside an
image (see ``AnomalyOVProcessor``); the report counts them (``truncated_records``) and those the cut leaves without
an answer, which train nothing (``answerless_records``; a cut that drops an image drops everything after it).
Output: ``models/anomaly_ov/`` (``save_pretrained``, atomic) and
``reports/train_instruct.json`` with the loss curve's end values, tokens/s, sample answers to the detection
question for one normal and one anomalous training image, and how much the expert's word steers the Yes/No answer
after the text warm-up (``text_warmup.word_margins``, see :func:`word_margins`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ov.errors import ConfigError, StageFailed
from anomaly_ov.train import common

if TYPE_CHECKING:
    from anomaly_ov.config import InstructRecipe, Params
    from anomaly_ov.data.loaders import InstructDataset
    from anomaly_ov.model.modeling import AnomalyOVForConditionalGeneration
    from anomaly_ov.model.processing import AnomalyOVProcessor

Collate = Callable[[list[Any]], Any]

log = logging.getLogger(__name__)

STAGE = "train_instruct"
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
DESCRIBE_PROMPT = "Please describe the anomaly in the image, if there is one."


def conversation_texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every turn's text (the tiny tokenizer is trained on them)."""
    return [turn["value"] for rec in records for turn in rec["conversations"]]


def make_encoder(processor: AnomalyOVProcessor, max_length: int
                 ) -> Callable[[list[Any], list[dict[str, str]]], dict[str, Any]]:
    """(images, conversation) -> one training example (tensors without the batch axis where it is 1)."""

    def encode(images: list[Any], conversation: list[dict[str, str]]) -> dict[str, Any]:
        out = processor(images or None, conversation, max_length=max_length, return_labels=True)
        item: dict[str, Any] = {"input_ids": out["input_ids"][0], "labels": out["labels"][0]}
        if "pixel_values" in out:
            item["pixel_values"] = out["pixel_values"]
            item["image_sizes"] = out["image_sizes"]
            item["batch_num_images"] = out["batch_num_images"]
        return item

    return encode


def apply_lora(model: nn.Module, params: Params) -> nn.Module:
    """Wrap the LLM's linear layers with LoRA adapters (peft); the projector stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = params.train.instruct.lora
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=LORA_TARGETS,
                      bias="none")
    peft_model: Any = get_peft_model(model, lora)
    for p in peft_model.base_model.model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    peft_model.base_model.model.model.image_newline.requires_grad_(True)
    return peft_model


def sample_records(records: Sequence[Mapping[str, Any]], limit: int | None, seed: int,
                   multi_image_first: bool = False) -> list[Mapping[str, Any]]:
    """At most ``limit`` records, drawn at random (seeded) and kept in file order.

    A random draw rather than the first ``limit``: the instruction file is ordered by manifest row, so its head is
    the first categories only. With ``multi_image_first`` the records with several images (a 3D object's views) are
    all drawn (a random ``limit`` of them when there are more) and single-image records fill the rest; without it
    the draw is the same as before the option existed.
    """
    if limit is None or limit >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    if not multi_image_first:
        keep = rng.choice(len(records), size=limit, replace=False)
    else:
        from anomaly_ov.data.loaders import record_images

        multi = np.array([i for i, rec in enumerate(records) if len(record_images(rec)) > 1], dtype=np.int64)
        single = np.setdiff1d(np.arange(len(records)), multi)
        if len(multi) >= limit:
            keep = multi[rng.choice(len(multi), size=limit, replace=False)]
        else:
            keep = np.concatenate([multi, single[rng.choice(len(single), size=limit - len(multi), replace=False)]])
    return [records[int(i)] for i in np.sort(keep)]


#: exponent p of the per-token weight n^-p, n = the tokens of the token's conversation (InternVL 2.5's token, square
#: and sample averaging)
LOSS_REDUCTIONS = {"token": 0.0, "square": 0.5, "sample": 1.0}


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is an answer token in any row of the batch: the only logits the loss needs.

    Passed to the model as ``logits_to_keep``, so the LM head skips the visual and prompt positions (most of the
    sequence).
    """
    return (labels[:, 1:] != -100).any(dim=0).nonzero()[:, 0]


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "token") -> torch.Tensor:
    """Cross-entropy of ``logits`` [B, K, V] against ``targets`` [B, K] (-100 = not an answer token), weighted per
    ``reduction``.

    Each answer token of a conversation with n answer tokens weighs n^-p: ``token`` (p = 0) is the plain mean over
    the batch's answer tokens (LLaVA's loss), ``sample`` (p = 1) the mean of the conversations' means, ``square``
    (p = 1/2) in between. Under ``token`` a batch's long descriptions drown its one-token Yes/No answers.
    """

    if reduction not in LOSS_REDUCTIONS:
        raise ConfigError(f"unknown loss reduction {reduction!r} (use one of {sorted(LOSS_REDUCTIONS)})")
    answered = targets != -100
    if not bool(answered.any()):
        return logits.sum() * 0.0
    per_token = F.cross_entropy(logits[answered].float(), targets[answered], reduction="none")
    counts = answered.sum(dim=1).to(per_token.dtype)  # >= 1 for every row indexed below
    weights = counts.pow(-LOSS_REDUCTIONS[reduction])[answered.nonzero()[:, 0]]
    return (weights * per_token).sum() / weights.sum()


def conversation_loss(model: nn.Module, inputs: Mapping[str, Any], reduction: str = "token") -> torch.Tensor:
    """Forward ``inputs`` (with ``labels``) through ``model`` and return :func:`answer_loss` on the answer positions."""
    labels = inputs["labels"]
    keep = answer_positions(labels)
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep).logits
    return answer_loss(logits, labels[:, keep + 1], reduction)


def instruction_pool(params: Params, workspace: Path) -> list[Mapping[str, Any]]:
    """Every record stage 2 may train on: the synthesized ``instruct.train_json`` (when ``instruct.use_synthesized``)
    and the released sets of ``instruct.sources`` (validated first, report in
    ``reports/instruct_sources_validation.json``; their image paths made absolute; see ``instruct.sources``)."""
    from anomaly_ov.data.loaders import DataError, read_instruct_records
    from anomaly_ov.instruct.sources import load_sources
    from anomaly_ov.paths import in_workspace

    workspace = Path(workspace)
    records: list[Mapping[str, Any]] = []
    if params.instruct.use_synthesized:
        records += read_instruct_records(in_workspace(workspace, params.instruct.train_json))
    report = in_workspace(workspace, params.instruct.validation_json).with_name("instruct_sources_validation.json")
    records += load_sources(params, workspace, report)
    if not records:
        raise DataError("no instruction records for stage 2: set instruct.use_synthesized: true or list released "
                        "sets under instruct.sources")
    return records


def training_records(params: Params, workspace: Path, text_warmup: bool = False,
                     pool: Sequence[Mapping[str, Any]] | None = None) -> list[Mapping[str, Any]]:
    """The records stage 2 trains on: :func:`instruction_pool` (or ``pool``), capped by the recipe's and the global
    ``max_records`` (the smaller applies) with a draw seeded by ``train.seed`` (multi-image records first with the
    recipe's ``multi_image_first``). The text warm-up's records
    (``text_warmup=True``) skip the recipe's cap: text examples are cheap, so the warm-up reads the whole pool
    (global cap only); the tiny tokenizer is trained on them too."""
    caps = [params.train.instruct.max_records] + ([] if text_warmup else [params.instruct_recipe.max_records])
    records = list(pool) if pool is not None else instruction_pool(params, workspace)
    return sample_records(records, min([n for n in caps if n is not None], default=None), params.train.seed,
                          params.instruct_recipe.multi_image_first)


def expert_adverbs(model: AnomalyOVForConditionalGeneration, processor: AnomalyOVProcessor,
                   records: Sequence[Mapping[str, Any]], workspace: Path, device: torch.device,
                   batch_size: int = 32) -> dict[tuple[str, ...], list[str]]:
    """The frozen expert's suspicious-level word ("slightly" / "moderately" / "highly") for every image of
    ``records``, keyed by the record's image list (its images are scored together, uncropped when there are
    several, as the visual phase sees them). Under torchrun each rank scores every world-size-th image list and
    the ranks exchange their words, so all of them return the same dict."""

    from anomaly_ov.data.loaders import load_image, record_images
    from anomaly_ov.model.processing import adverb_for_score

    info = common.init_distributed(device)
    groups = list(dict.fromkeys(tuple(record_images(rec)) for rec in records if record_images(rec)))
    groups = groups[info.rank :: info.world_size]
    thresholds = tuple(model.config.suspicious_thresholds or ())
    words: dict[tuple[str, ...], list[str]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(groups), batch_size):
            chunk = groups[start : start + batch_size]
            images = [[load_image(Path(workspace) / p, f" (instruction image {p})")  # an absolute p stays as it is
                       for p in group] for group in chunk]
            pix = processor.preprocess_images(images)
            scores = model.expert_forward(pix["pixel_values"].to(device), pix["image_sizes"].to(device),
                                          pix["batch_num_images"].to(device)).scores.reshape(-1).tolist()
            k = 0
            for group in chunk:
                words[group] = [adverb_for_score(s, thresholds) for s in scores[k : k + len(group)]]
                k += len(group)
    model.train(was_training)
    return common.gather_dicts(words)


def text_warmup_items(records: Sequence[Mapping[str, Any]], processor: AnomalyOVProcessor,
                      adverbs: Mapping[tuple[str, ...], list[str]], max_length: int) -> list[dict[str, Any]]:
    """Text-only training examples: each conversation with its images reduced to their phrases (see
    ``AnomalyOVProcessor.encode_text_only``); labels on the answers as in the visual phase."""

    from anomaly_ov.data.loaders import record_images

    items = []
    for index, rec in enumerate(records):
        words = adverbs.get(tuple(record_images(rec)), [])
        ids, labels = processor.encode_text_only(list(rec["conversations"]), words, add_generation_prompt=False)
        ids, labels = ids[:max_length], labels[:max_length]
        items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "index": index})
    return items


def word_margins(model: nn.Module, processor: AnomalyOVProcessor, device: torch.device) -> dict[str, float]:
    """How much the expert's word steers the detection answer: for each suspicious-level word, the logit of "Yes"
    minus that of "No" as the first answer token, for the detection question about an image reduced to its phrase
    ("with highly suspicious features: ", no visual tokens; the text warm-up's input).

    After the text warm-up, whose inputs are exactly these, a LLM that answers from the word gives "slightly" a
    negative margin and "highly" a positive one; equal margins mean it ignores the word (the tiny default with
    warm-up batches of 32 did in one of seven runs: -0.07 for all three, and that pipeline answered "No" to every
    benchmark image). After the visual phases the margins say less: the LLM may answer from the image's tokens
    instead, and runs whose text-only margins had flattened still agreed with the expert for 90 % of the benchmark
    (``benchmarks/stage2_seeds.py``). The first token of each answer is compared (one token for the tiny tokenizer
    and for Qwen2's).
    """
    from anomaly_ov.model.tokenizer import ADVERB_WORDS, DETECTION_PROMPT, IMAGE_TOKEN

    yes, no = (processor.tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
    conversation = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{DETECTION_PROMPT}"}]
    was_training = model.training
    model.eval()
    margins = {}
    # on CUDA as in training: bf16 autocast over the checkpoint's 16-bit frozen and float32 trained weights
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        for word in ADVERB_WORDS:
            ids, _ = processor.encode_text_only(conversation, [word], add_generation_prompt=True)
            logits = model(input_ids=torch.tensor([ids], device=device), logits_to_keep=1).logits[0, -1].float()
            margins[word] = round(float(logits[yes] - logits[no]), 3)
    model.train(was_training)
    return margins


#: below this gap between the "highly" and "slightly" margins (logits) the LLM is said to ignore the expert's word
WORD_GAP_WARNING = 1.0


def warn_if_word_ignored(margins: Mapping[str, float], when: str) -> None:
    """Log a warning when the Yes/No answer barely depends on the expert's word (see :func:`word_margins`)."""
    gap = margins["highly"] - margins["slightly"]
    if gap < WORD_GAP_WARNING:
        log.warning("stage 2 (%s): the LLM's Yes/No hardly depends on the expert's word (Yes-No logit margins %s; "
                    "'highly' - 'slightly' = %.2f < %.1f): its detection answers will not follow the expert. Give "
                    "the text warm-up more steps (a smaller train.instruct.tiny.text_warmup_batch_size or more "
                    "text_warmup_epochs)", when, margins, gap, WORD_GAP_WARNING)


def _projector_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters outside the LLM that stage 2 trains: the projector's and image_newline (under DDP or peft)."""
    base: Any = common.unwrap(model)
    if hasattr(base, "base_model") and hasattr(base.base_model, "model"):  # peft wrapper
        base = base.base_model.model
    return [*base.model.multi_modal_projector.parameters(), base.model.image_newline]


def _freeze(parameters: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze the trainable ones of ``parameters``; returns them to restore."""
    frozen = [p for p in parameters if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def _language_only(model: nn.Module) -> list[nn.Parameter]:
    """Freeze the trainable parameters outside the LLM (the projector, image_newline); returns them to restore."""
    return _freeze(_projector_parameters(model))


def warm_up_language(
    model: nn.Module,
    items: Sequence[Mapping[str, Any]],
    collate: Collate,
    recipe: InstructRecipe,
    *,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path,
    checkpoint_every: int,
    fingerprint: str = "",
    bf16: bool = False,
    max_grad_norm: float | None = 1.0,
    progress: bool = True,
    group_by_length: bool = True,
    strategy: str = "ddp",
    zero_stage: int = 2,
) -> common.LoopResult:
    """Text warm-up (``recipe.text_warmup_epochs``): the LLM alone learns the answers' language on text-only
    conversations, before the visual phase.

    Why: the tiny preset's LLM starts random, and with 500+ visual tokens per example the visual phase affords
    too few steps to learn language (it answered "The image." to every description request). A text example is
    a few dozen tokens, so many more conversations fit the budget. The image's phrase keeps the expert's word, so
    the LLM also learns that "highly suspicious" goes with "Yes". A pretrained LLM needs none of this (0 epochs).

    Under fsdp the projector stays trainable (it gets no gradient from text, so AdamW leaves it as it is): FSDP2
    fixes which parameters train when it first gathers them, so it must not change between the two phases.
    """
    sharding = strategy == "fsdp" and common.dist_info().distributed
    restore = [] if sharding else _language_only(model)
    try:
        text_recipe = recipe.model_copy(update={
            "epochs": recipe.text_warmup_epochs, "batch_size": recipe.text_warmup_batch_size,
            "lr": recipe.text_warmup_lr or recipe.lr, "grad_accum": 1,
        })
        return fit_instruct(
            model, items, collate, text_recipe, seed=seed + 1, device=device, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, fingerprint=fingerprint, bf16=bf16, max_grad_norm=max_grad_norm,
            progress=progress, lengths=[len(it["input_ids"]) for it in items] if group_by_length else None,
            desc="stage 2 (text warm-up)", log_prefix="text_warmup", strategy=strategy, zero_stage=zero_stage,
        )
    finally:
        for p in restore:
            p.requires_grad_(True)


def _projector_only(model: nn.Module) -> list[nn.Parameter]:
    """Freeze the trainable parameters of the LLM (its weights or LoRA adapters, the LM head), so that only the
    projector and image_newline train; returns the frozen ones to restore."""
    keep = {id(p) for p in _projector_parameters(model)}
    return _freeze([p for p in model.parameters() if id(p) not in keep])


def align_projector(
    model: nn.Module,
    dataset: InstructDataset,
    collate: Collate,
    recipe: InstructRecipe,
    *,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path,
    checkpoint_every: int,
    fingerprint: str = "",
    bf16: bool = False,
    max_grad_norm: float | None = 1.0,
    progress: bool = True,
    lengths: Sequence[int] | None = None,
    num_workers: int = 0,
    strategy: str = "ddp",
    zero_stage: int = 2,
) -> common.LoopResult | None:
    """Feature alignment (``recipe.align_epochs``): the projector alone trains on the visual records while the LLM
    stays frozen, between the text warm-up and the joint visual phase.

    Why: after the text warm-up the tiny LLM answers from the expert's word, but a randomly initialised projector
    feeds it tokens it has never seen; trained jointly from there, the visual phase's loss jumped from 0.9 to 3.3
    and the LLM relearned its answers around the noise (its Yes / No agreed with the expert's verdict for 83 % of
    unseen images). LLaVA trains its projector alone first for the same reason. Returns None (and logs why) under
    fsdp, where the set of trained parameters cannot change between phases (see :func:`warm_up_language`).
    """
    if strategy == "fsdp" and common.dist_info().distributed:
        log.warning("stage 2: the projector alignment (align_epochs=%d) is skipped under fsdp, which cannot freeze "
                    "the LLM for one phase; the joint visual phase starts directly", recipe.align_epochs)
        return None
    restore = _projector_only(model)
    try:
        align_recipe = recipe.model_copy(update={"epochs": recipe.align_epochs, "lr": recipe.align_lr or recipe.lr})
        return fit_instruct(
            model, dataset, collate, align_recipe, seed=seed + 2, device=device, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, num_workers=num_workers, fingerprint=fingerprint, bf16=bf16,
            max_grad_norm=max_grad_norm, progress=progress, lengths=lengths, desc="stage 2 (projector alignment)",
            log_prefix="align", strategy=strategy, zero_stage=zero_stage,
        )
    finally:
        for p in restore:
            p.requires_grad_(True)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fp32_master_weights(model: nn.Module) -> dict[int, torch.dtype]:
    """Put every trainable 16-bit parameter of ``model`` in float32, in place (the optimiser then updates fp32
    master weights; bf16 autocast keeps the compute in 16 bits on CUDA). Returns ``{id(param): old dtype}`` for
    :func:`restore_dtypes`. Frozen parameters keep their dtype."""

    changed: dict[int, torch.dtype] = {}
    for p in trainable_parameters(model):
        if p.dtype in (torch.float16, torch.bfloat16):
            changed[id(p)] = p.dtype
            p.data = p.data.float()
    return changed


def restore_dtypes(model: nn.Module, dtypes: Mapping[int, torch.dtype]) -> None:
    """Cast the parameters :func:`fp32_master_weights` upcast back to their checkpoint dtype (before saving)."""
    for p in model.parameters():
        if id(p) in dtypes:
            p.data = p.data.to(dtypes[id(p)])


def record_lengths(records: Sequence[Mapping[str, Any]], processor: AnomalyOVProcessor, workspace: Path
                   ) -> list[int]:
    """Each record's token count, its images' tokens included (image sizes read from the files' headers, no
    decoding): the key of the visual phases' length-grouped batches and of :func:`count_truncated`. The images
    count: every image adds hundreds of tokens, so a 3D object's four views are about twice as long as a
    single-image record with the same text, and grouped by text alone they padded single-image batches to their
    length."""
    from PIL import Image

    from anomaly_ov.data.loaders import record_images
    from anomaly_ov.paths import in_workspace

    lengths = []
    for rec in records:
        sizes = []
        for rel in record_images(rec):
            with Image.open(in_workspace(workspace, rel)) as img:
                sizes.append((img.height, img.width))
        lengths.append(processor.conversation_length(list(rec["conversations"]), sizes))
    return lengths


def count_truncated(records: Sequence[Mapping[str, Any]], processor: AnomalyOVProcessor, workspace: Path,
                    max_length: int, lengths: Sequence[int] | None = None) -> dict[str, Any]:
    """How many ``records`` are longer than ``max_length`` tokens, hence cut, how many of those the cut leaves
    without any answer token (a cut that drops an image drops the question and answers after it: such a record
    trains nothing; only these are encoded), and the longest one's length. ``lengths``: the records'
    :func:`record_lengths` when already known."""
    from anomaly_ov.data.loaders import load_image, record_images
    from anomaly_ov.paths import in_workspace

    if lengths is None:
        lengths = record_lengths(records, processor, workspace)
    truncated, answerless = 0, 0
    for rec, n in zip(records, lengths, strict=True):
        if n > max_length:
            truncated += 1
            images = [load_image(in_workspace(workspace, rel)) for rel in record_images(rec)]
            labels = processor(images or None, list(rec["conversations"]), max_length=max_length,
                               return_labels=True)["labels"]
            answerless += not bool((labels != -100).any())
    return {"truncated_records": truncated, "answerless_records": answerless, "max_length": max_length,
            "longest_record_tokens": max(lengths, default=0)}


def frozen_snapshot(model: nn.Module, part_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the parameters under ``part_names`` (used by tests to check they stay unchanged)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if any(k in n for k in part_names)}


def sample_answers(model: AnomalyOVForConditionalGeneration, processor: AnomalyOVProcessor,
                   records: Sequence[Mapping[str, Any]], workspace: Path, device: torch.device,
                   max_new_tokens: int = 40) -> list[dict[str, Any]]:
    """Greedy answers to the detection question (and a description request) for one normal and one anomalous
    single-image training record."""
    from anomaly_ov.data.loaders import record_images
    from anomaly_ov.model.predict import Predictor

    picks: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        imgs = record_images(rec)
        label = rec.get("label")
        if len(imgs) == 1 and label in ("normal", "anomaly") and label not in picks:
            picks[label] = rec
        if len(picks) == 2:
            break
    predictor = Predictor(model, processor, device=str(device))
    samples = []
    for label in ("normal", "anomaly"):
        if label not in picks:
            continue
        rec = picks[label]
        path = Path(workspace) / record_images(rec)[0]
        pred = predictor.predict([str(path)], generate=True, max_new_tokens=max_new_tokens)[0]
        describe = predictor.predict([str(path)], question=DESCRIBE_PROMPT, generate=True,
                                     max_new_tokens=max_new_tokens)[0]
        samples.append({"image": record_images(rec)[0], "label": label, "category": rec.get("category"),
                        "expert_score": round(pred.score, 4), "detection_answer": pred.answer,
                        "describe_answer": describe.answer})
    return samples


#: every parameter stage 2 trains gets a gradient in every step (DDP need not search for unused ones)
FIND_UNUSED_PARAMETERS = False


def fit_instruct(
    model: nn.Module,
    dataset: InstructDataset | Sequence[Mapping[str, Any]],
    collate: Collate,
    recipe: InstructRecipe,
    *,
    seed: int,
    device: torch.device,
    checkpoint_dir: Path,
    checkpoint_every: int,
    num_workers: int = 0,
    fingerprint: str = "",
    bf16: bool = False,
    max_grad_norm: float | None = 1.0,
    progress: bool = True,
    on_step_end: common.StepHook | None = None,
    lengths: Sequence[int] | None = None,
    desc: str = "stage 2 (instruct)",
    log_prefix: str = "train",
    strategy: str = "ddp",
    zero_stage: int = 2,
) -> common.LoopResult:
    """Train the parameters of ``model`` that require grad on ``dataset`` (cross-entropy on answer tokens);
    with ``lengths`` (one per record) batches hold records of similar length (see ``common.epoch_batches``).
    Under torchrun the model is wrapped for ``strategy`` first (fsdp shards it in place, once) and the optimiser
    built over what the wrapper trains."""
    import contextlib

    from transformers import get_cosine_schedule_with_warmup

    info = common.dist_info()
    if not trainable_parameters(model):
        raise StageFailed(STAGE, "no trainable parameter")
    wrapped = (common.wrap_distributed(model, device, strategy, find_unused_parameters=FIND_UNUSED_PARAMETERS)
               if strategy != "deepspeed" else model)
    optimizer = torch.optim.AdamW(trainable_parameters(wrapped), lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = common.steps_per_epoch(len(dataset), recipe.batch_size, recipe.grad_accum,
                                       world_size=info.world_size)
    total = per_epoch * recipe.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(recipe.warmup_ratio * total), total)
    use_bf16 = bf16 and device.type == "cuda" and strategy != "deepspeed"  # DeepSpeed runs its own bf16

    def step(m: nn.Module, batch: Mapping[str, Any]) -> common.StepOutput:
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels", "pixel_values",
                                                   "image_sizes", "batch_num_images") if k in batch}
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        with ctx:
            loss = conversation_loss(m, inputs, recipe.loss_reduction)
        answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
        return common.StepOutput(loss=loss.float(), items=int(batch["attention_mask"].sum()),
                                 metrics={"answer_tokens": float(answer_tokens)})

    settings = common.LoopSettings(
        epochs=recipe.epochs, batch_size=recipe.batch_size, seed=seed, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, grad_accum=recipe.grad_accum, max_grad_norm=max_grad_norm,
        num_workers=num_workers, desc=desc, items_name="tokens", fingerprint=fingerprint, progress=progress,
        lengths=lengths, log_prefix=log_prefix, strategy=strategy, zero_stage=zero_stage, bf16=bf16,
    )
    torch.manual_seed(seed)
    return common.run_loop(wrapped, optimizer, scheduler, dataset, collate, step, settings,
                           on_step_end=on_step_end)


def _weights_split(result: common.LoopResult) -> bool:
    """Whether the trained weights are spread over the ranks (fsdp, DeepSpeed ZeRO-3) rather than whole here."""
    trained = result.model
    if trained is None:
        return False
    partitioned = getattr(trained, "zero_optimization_partition_weights", None)
    return common.is_sharded(trained) or (callable(partitioned) and bool(partitioned()))


def run_train_instruct(params: Params, workspace: Path) -> dict[str, Any]:
    """Stage ``train_instruct``: data/instruct/train.json + models/expert -> models/anomaly_ov/ + report."""
    from functools import partial

    from anomaly_ov import tracking
    from anomaly_ov.data.loaders import InstructDataset, collate_instruct, record_images
    from anomaly_ov.instruct.sources import source_paths
    from anomaly_ov.io import atomic_write_json
    from anomaly_ov.model.presets import (
        build_model,
        build_processor,
        image_processor_for,
        load_expert_stage,
        processor_for,
        save_pretrained,
    )
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.plots import write_stage_plots

    cfg = params.train.instruct
    workspace = Path(workspace)
    info = common.dist_info()
    common.require_strategy(cfg.strategy, "train.instruct.strategy")
    if (cfg.num_processes > 1 or params.train.launch.nnodes > 1) and not info.distributed:
        from anomaly_ov.train.launch import relaunch

        return relaunch(STAGE, params, workspace, cfg.num_processes)

    started = time.perf_counter()
    recipe = params.instruct_recipe
    device = common.select_device(cfg.device)
    common.seed_everything(params.train.seed)
    train_json = in_workspace(workspace, params.instruct.train_json)
    pool = instruction_pool(params, workspace)
    records = training_records(params, workspace, pool=pool)
    all_records = training_records(params, workspace, text_warmup=True, pool=pool)
    expert_dir = in_workspace(workspace, params.train.expert.output_dir)

    if params.is_pretrained:
        processor = build_processor(params)
        tokenizer = processor.tokenizer
        model = build_model(params, tokenizer=tokenizer)
    else:
        from anomaly_ov.model.tokenizer import train_tokenizer

        tokenizer = train_tokenizer(conversation_texts(all_records), vocab_size=cfg.tokenizer_vocab_size)
        model = build_model(params, tokenizer=tokenizer)
        processor = processor_for(model, tokenizer, image_processor_for(params))
    expert_info = load_expert_stage(model, expert_dir)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    model.to(device)  # type: ignore[arg-type]
    if device.type == "cuda" and cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    train_model = apply_lora(model, params) if cfg.lora.enabled else model
    upcast = fp32_master_weights(train_model)

    dataset = InstructDataset(records, workspace, make_encoder(processor, recipe.max_length))
    collate = partial(collate_instruct, pad_token_id=processor.pad_token_id)
    n_trainable = sum(p.numel() for p in trainable_parameters(train_model))
    full_lengths = record_lengths(records, processor, workspace)
    truncation = count_truncated(records, processor, workspace, recipe.max_length, full_lengths)
    if truncation["truncated_records"] and info.is_main:
        answerless = (f"; {truncation['answerless_records']} of them lose every answer and train nothing: raise "
                      f"train.instruct.{params.recipe_family}.max_length to at least "
                      f"{truncation['longest_record_tokens']}"
                      if truncation["answerless_records"] else "")
        log.warning("stage 2: %d of %d conversations exceed max_length=%d tokens and are cut (longest: %d)%s",
                    truncation["truncated_records"], len(records), recipe.max_length,
                    truncation["longest_record_tokens"], answerless)
    if info.is_main:
        tracking.set_tags({"lora": cfg.lora.enabled, "stage1_temperature": expert_info.get("expert", {}).get(
            "temperature")})
        tracking.log_params({"recipe": recipe.model_dump(), "lora": cfg.lora.model_dump(), "records": len(records),
                             "text_warmup_records": len(all_records) if recipe.text_warmup_epochs else 0,
                             "trainable_parameters": n_trainable, "device": str(device),
                             "truncated_records": truncation["truncated_records"],
                             "answerless_records": truncation["answerless_records"],
                             "master_weights": "float32", "upcast_parameters": len(upcast),
                             "vocab_size": len(tokenizer), "num_processes": info.world_size,
                             "strategy": cfg.strategy})
    images = {dataset.image_path(p) for rec in all_records for p in record_images(rec)}
    fp = common.fingerprint(  # params + the content of every file the stage reads
        params.to_dict()["model"], params.to_dict()["train"]["instruct"], params.train.seed,
        common.file_signature(train_json), info.world_size,
        [common.file_signature(source_paths(s, params, workspace).json_path) for s in params.instruct.sources],
        common.data_fingerprint([f for f in expert_dir.rglob("*") if f.is_file()], workspace),
        common.data_fingerprint(images, workspace),
    )
    checkpoint_dir = in_workspace(workspace, cfg.checkpoint_dir)
    warmup, warmup_margins = None, None
    if recipe.text_warmup_epochs:
        adverbs = expert_adverbs(model, processor, all_records, workspace, device)
        expert_words = dict(sorted(Counter(w for ws in adverbs.values() for w in ws).items()))
        items = text_warmup_items(all_records, processor, adverbs, recipe.max_length)
        warmup = warm_up_language(
            train_model, items, collate, recipe, seed=params.train.seed, device=device,
            checkpoint_dir=checkpoint_dir / "text_warmup", checkpoint_every=cfg.checkpoint_every, fingerprint=fp,
            bf16=cfg.bf16, max_grad_norm=cfg.max_grad_norm, group_by_length=cfg.group_by_length,
            strategy=cfg.strategy, zero_stage=cfg.zero_stage,
        )
        if not info.distributed:  # under torchrun the weights may be sharded here: the check is single-process
            warmup_margins = word_margins(train_model, processor, device)
            warn_if_word_ignored(warmup_margins, "after the text warm-up")
            tracking.log_metrics({f"text_warmup_word_margin_{word}": m for word, m in warmup_margins.items()})
    # the visual phases group by the encoded length (images included; a record is cut at max_length)
    lengths = [min(n, recipe.max_length) for n in full_lengths] if cfg.group_by_length else None
    align = None
    if recipe.align_epochs:
        align = align_projector(
            train_model, dataset, collate, recipe, seed=params.train.seed, device=device,
            checkpoint_dir=checkpoint_dir / "align", checkpoint_every=cfg.checkpoint_every, fingerprint=fp,
            bf16=cfg.bf16, max_grad_norm=cfg.max_grad_norm, lengths=lengths, num_workers=cfg.num_workers,
            strategy=cfg.strategy, zero_stage=cfg.zero_stage,
        )
    result = fit_instruct(
        train_model, dataset, collate, recipe, seed=params.train.seed, device=device,
        checkpoint_dir=checkpoint_dir, checkpoint_every=cfg.checkpoint_every, num_workers=cfg.num_workers,
        fingerprint=fp, bf16=cfg.bf16, max_grad_norm=cfg.max_grad_norm, lengths=lengths,
        strategy=cfg.strategy, zero_stage=cfg.zero_stage,
    )
    if _weights_split(result):
        # fsdp / ZeRO-3: the weights are spread over the ranks; rank 0 gathers them into a fresh model
        state = common.consolidated_state(result, train_model)
        if info.is_main:
            model = build_model(params, tokenizer=tokenizer)
            load_expert_stage(model, expert_dir)  # the expert's settings (temperature) travel outside the weights
            whole = apply_lora(model, params) if cfg.lora.enabled else model
            whole.load_state_dict(state, strict=True)
            model = whole.merge_and_unload() if cfg.lora.enabled else model  # type: ignore[operator]
            model.to(device)  # type: ignore[arg-type]
        upcast = {}  # the fresh model is in the checkpoint's dtypes already
    elif cfg.lora.enabled:
        model = train_model.merge_and_unload()  # type: ignore[operator]
    if device.type == "cuda" and cfg.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    restore_dtypes(model, upcast)
    model.eval()
    summary: dict[str, Any] = {
        "records": len(records),
        "steps": result.step,
        "epochs": recipe.epochs,
        **common.summarise_history(result),
        "train_seconds": round(result.seconds, 3),
        "tokens_per_s": round(result.items_per_s, 1),
        "trainable_parameters": n_trainable,
        "resumed_from_step": result.resumed_from_step,
        **truncation,
    }
    if warmup is not None:
        summary["text_warmup"] = {
            "records": len(all_records), "steps": warmup.step, "epochs": recipe.text_warmup_epochs,
            **common.summarise_history(warmup), "train_seconds": round(warmup.seconds, 3),
            "tokens_per_s": round(warmup.items_per_s, 1), "resumed_from_step": warmup.resumed_from_step,
            "expert_words": expert_words, **({"word_margins": warmup_margins} if warmup_margins else {}),
        }
    if recipe.align_epochs:
        summary["align"] = ({"skipped": "fsdp"} if align is None else {
            "steps": align.step, "epochs": recipe.align_epochs, **common.summarise_history(align),
            "train_seconds": round(align.seconds, 3), "resumed_from_step": align.resumed_from_step,
        })
    if info.is_main:
        samples = sample_answers(model, processor, records, workspace, device)
        out_dir = in_workspace(workspace, cfg.output_dir)
        save_pretrained(model, processor, out_dir)
        report_path = in_workspace(workspace, cfg.report)
        curves = [common.plot_curves(result, report_path.with_name(report_path.stem + "_curves.png"),
                                     "stage 2 (instruction tuning)")]
        if warmup is not None:
            warmup_png = report_path.with_name(report_path.stem + "_text_warmup_curves.png")
            curves.append(common.plot_curves(warmup, warmup_png, "stage 2 (text warm-up)"))
        if align is not None:
            align_png = report_path.with_name(report_path.stem + "_align_curves.png")
            curves.append(common.plot_curves(align, align_png, "stage 2 (projector alignment)"))
        write_stage_plots("train_instruct", workspace, result.history)  # DVC plots
        atomic_write_json(report_path, {
            **summary, "seconds": round(time.perf_counter() - started, 3), "recipe": recipe.model_dump(),
            "lora": cfg.lora.model_dump(), "device": str(device), "num_processes": info.world_size,
            "strategy": cfg.strategy, "samples": samples, "output_dir": cfg.output_dir,
            "loss_curve": [[int(h["step"]), round(h["loss"], 5)] for h in result.history],
            **({"text_warmup_loss_curve": [[int(h["step"]), round(h["loss"], 5)] for h in warmup.history]}
               if warmup is not None else {}),
            **({"align_loss_curve": [[int(h["step"]), round(h["loss"], 5)] for h in align.history]}
               if align is not None else {}),
        })
        tracking.log_artifact(out_dir, "model")
        tracking.log_artifact(report_path)
        for png in curves:
            if png is not None:
                tracking.log_artifact(png)
        common.remove_checkpoints(checkpoint_dir)  # every phase's resume state: the outputs are the result now
        summary["samples"] = {s["label"]: s["detection_answer"] for s in samples}
    common.barrier()
    return summary
