"""The Anomaly-OV anomaly expert: Look-Twice Feature Matching (LTFM), batched over images and crops.

What it computes (docs/model.md, 'The LTFM expert'; the numbers of the public release, without its per-image
Python loop):

* ``features`` ``v`` [N,T,C]: the vision tower's LLM-layer output for N crops (each image's base view first, then
  its AnyRes crops), T = G*G tokens; ``level_features`` ``f_1..f_L`` [N,T,C]: the multi-level tower outputs.
* look-back class embedding from the image's base view (``pooling_layer`` over tokens, ``class_predictor`` MLP),
  normal / abnormal prompts (``positive_embedding`` / ``negative_embedding`` through ``prompt_adaptors[i]``),
  level features through ``siglip_adaptors[i]``, cosine matching at ``temperature`` -> 2-way softmax; channel 1
  (the negative / abnormal prompt) is the anomaly map of that level. Maps and significances are averaged over levels.
* "look twice" selector: the map-weighted mean of ``v`` per 2x2 quadrant queries ``q_former`` (one head,
  Q = ``query_proj(q)``, K = ``key_proj(v)``, V = ``v``) -> 4 anomaly tokens per crop.
* per image: the significance-weighted mean of all its crops' tokens -> global token ``r``; ``final_predictor`` +
  sigmoid -> the image score.
* not in the release, off by default: ``self_similarity`` adds a trained multiple of the base view's
  :func:`self_similarity` (how unlike the rest of the image its most unusual patches are) to the predictor's logit;
  ``image_score="calibrated_fusion"`` adds it again after training, in a fixed proportion (:class:`ScoreCalibration`).

Differences from the release, all settings: ``temperature`` (release 100) and ``eps`` added to the two
significance divisions (release 0), once per crop in the global token's, so an image whose crops repeat its base view
(a 128 px image's one AnyRes crop) gets the global token of its base view alone, the view the tiny recipe's stage 1
trains on. With ``eps=0`` and ``temperature=100`` the outputs equal the release maths
(tests check 1e-5 against a per-image loop); the one case the release cannot compute, a pooled map that is exactly
0 (0 / 0 = NaN), gives a 0 query / global token instead. Pretrained presets use ``eps=0``: an eps is not small next
to the pooled map of a confidently normal crop (mean map 3e-4 -> global weight ~4e-7, so eps 1e-6 shrinks the
global token to 0.26x). The tiny preset, trained from scratch, keeps an eps (its maps collapse early in training).
``image_score`` says what ``scores`` is: the release's ``sigmoid(final_predictor(r))`` (``"predictor"``, every
pretrained preset), read from the base view's anomaly map (``"map_max"``, or ``"fusion"``: the mean of the two), or
``"calibrated_fusion"``: ``sigmoid(w_l * logit + w_s * self_similarity + c)`` with the three numbers of the
``score_calibration`` buffer, fit after stage 1 on its held-out rows (identity ``(1, 0, 0)`` until then: the
predictor). ``score_logits`` stays the predictor's either way (docs/model.md, 'Settings that differ from the
release').
``predictor_dim`` is the hidden width of
``final_predictor`` (release: 512); it defaults to ``embed_dim`` so the full-size expert (E = 512) is the release.

Batching: crops of all images are one batch; per-image quantities (base view, global token) use index tensors
(``index_select`` / ``index_add_``), so no Python loop runs over images or crops.

State dict keys are the release's (``positive_embedding``, ``negative_embedding``, ``pooling_layer.0``,
``class_predictor.{0,2}``, ``siglip_adaptors.{i}``, ``prompt_adaptors.{i}``, ``final_predictor.{0,2}``,
``q_former.{query_proj,key_proj}``), so an official ``pretrained_expert_*.pth`` loads with
:func:`load_expert_weights`, which reports matched / missing / unexpected keys and refuses a file where nothing
matches or a shape differs.

Usage::

    expert = AnomalyExpert(hidden_size=1152, embed_dim=512, grid_size=27)
    out = expert(v, [f7, f13, f19, f25], crops_per_image=[5, 1])   # 6 crops: image 0 has 1 base + 4 crops
    out.maps        # [6,1,27,27]   anomaly map per crop
    out.crop_tokens # [6,4,1152]    anomaly tokens per crop
    out.global_tokens  # [2,1,1152]
    out.scores      # [2,1] in [0,1]; out.score_logits before the sigmoid (use it for BCE)
    out.maps[out.base_index]  # [2,1,27,27] base-view maps, one per image
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_ov.errors import InputError

logger = logging.getLogger(__name__)

#: Prefixes stripped from checkpoint keys before matching (DataParallel / wrappers around the expert).
_KNOWN_PREFIXES = ("module.", "anomaly_expert.", "expert.", "model.anomaly_expert.", "model.expert.")
#: the parameter that names an expert inside a larger state dict: ``<prefix>positive_embedding``
_ANCHOR_KEY = "positive_embedding"
#: state fit after training (``calibrated_fusion``), never in a release checkpoint: a strict load does not need it
_FIT_AFTER_TRAINING = ("score_calibration",)


#: the self-similarity term (``self_similarity=True``): patches within this many cells (Chebyshev) are not compared,
#: and the image reads the mean of its top this fraction of patch scores; both chosen on stage 1's held-out rows of
#: the training families (docs/model.md, 'Settings that differ from the release')
SELF_SIMILARITY_RADIUS = 2
SELF_SIMILARITY_TOP_FRACTION = 0.02
#: the term's trained scale is multiplied by this, so that Adam's steps (about lr each) move the term at the rate the
#: predictor's own weights move its logit
SELF_SIMILARITY_GAIN = 10.0


def self_similarity(features: torch.Tensor, grid_size: int, radius: int = SELF_SIMILARITY_RADIUS,
                    top_fraction: float = SELF_SIMILARITY_TOP_FRACTION) -> torch.Tensor:
    """How unlike the rest of its own image an image's most unusual patches are (training-free).

    Each patch scores 1 - its highest cosine similarity to a patch more than ``radius`` cells away, so a part that
    repeats across the image (a chip, a bolt hole) finds its twin and scores low while a defect finds none; the image
    scores the mean of its top ``top_fraction`` patch scores (at least one).

    Args:
        features: [B, G*G, C] features of B views on the ``grid_size`` grid.
    Returns: [B] scores in [0, 2], higher = more anomalous (differentiable in ``features``).
    """
    f = F.normalize(features.float(), dim=-1)
    cells = torch.cartesian_prod(torch.arange(grid_size, device=f.device), torch.arange(grid_size, device=f.device))
    near = (cells[:, None] - cells[None]).abs().amax(-1) <= radius  # [T,T]
    similarity = (f @ f.transpose(1, 2)).masked_fill(near, -2.0)
    patch = 1 - similarity.amax(-1)  # [B,T]
    return patch.topk(max(1, int(top_fraction * patch.shape[1])), dim=-1).values.mean(-1)


#: what the expert's image score ``scores`` is read from: ``predictor`` (the release: ``sigmoid(final_predictor(r))``
#: of the global token), ``map_max`` (the highest cell of the image's base-view map), ``fusion`` (their mean) or
#: ``calibrated_fusion`` (the predictor's logit and the base view's :func:`self_similarity` in the proportion of
#: the ``score_calibration`` buffer, :class:`ScoreCalibration`)
IMAGE_SCORES = ("predictor", "map_max", "fusion", "calibrated_fusion")
#: the ``score_calibration`` buffer before a calibration is set: (logit weight, self-similarity weight, bias), so
#: ``calibrated_fusion`` scores what ``predictor`` does
IDENTITY_CALIBRATION = (1.0, 0.0, 0.0)
#: a standard deviation below this is taken as this (a constant feature standardises to 0, not to inf)
MIN_CALIBRATION_STD = 1e-6


@dataclass(frozen=True)
class ScoreCalibration:
    """How ``calibrated_fusion`` turns the predictor's logit ``l`` and the self-similarity ``s`` into a probability.

    Each is standardised by the mean and standard deviation of the held-out *normal* images, the two are summed with
    equal weight, and a logistic ``sigmoid(slope * z + bias)`` (fit on held-out normal and anomalous images, the
    classes weighted equally) maps the sum to a probability, so the verdict threshold and the suspicious-level
    phrase keep reading a probability. The equal weight is not fit: a weight fit on the training families leans on
    the predictor, and the self-similarity is the part meant to carry to unseen families (docs/model.md has where
    it did and did not).
    """

    logit_mean: float
    logit_std: float
    similarity_mean: float
    similarity_std: float
    slope: float
    bias: float

    def __post_init__(self) -> None:
        if not self.slope > 0:
            raise ValueError(f"a score calibration's slope must be > 0 (it keeps the ranking), got {self.slope}")
        if min(self.logit_std, self.similarity_std) < MIN_CALIBRATION_STD:
            raise ValueError(f"standard deviations must be >= {MIN_CALIBRATION_STD}, got {self.logit_std}, "
                             f"{self.similarity_std}")

    def fused(self, logits: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        """The standardised sum ``z`` (same shape as the inputs)."""
        return ((logits - self.logit_mean) / self.logit_std
                + (similarity - self.similarity_mean) / self.similarity_std)

    def weights(self) -> tuple[float, float, float]:
        """(logit weight, self-similarity weight, bias) of the calibrated logit ``slope * z + bias``."""
        w_l, w_s = self.slope / self.logit_std, self.slope / self.similarity_std
        return w_l, w_s, self.bias - w_l * self.logit_mean - w_s * self.similarity_mean

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class ExpertWeightsError(InputError):
    """An expert checkpoint that does not fit this expert (nothing matched, or a shape differs)."""


@dataclass
class ExpertOutput:
    """What :class:`AnomalyExpert` returns (N crops over B images)."""

    maps: torch.Tensor  # [N,1,G,G] anomaly map per crop (mean over levels), values in [0,1]
    crop_tokens: torch.Tensor  # [N,4,C] anomaly tokens per crop (q_former output)
    global_tokens: torch.Tensor  # [B,1,C] significance-weighted mean of the image's crop tokens
    scores: torch.Tensor  # [B,1] the image score in [0,1] (``image_score``; the release: sigmoid(score_logits))
    score_logits: torch.Tensor  # [B,1] final_predictor output (+ the self-similarity term when on), pre-sigmoid
    significance: torch.Tensor  # [N] mean anomaly map value per crop (mean over levels)
    level_maps: list[torch.Tensor]  # L tensors [N,1,G,G], one per level
    image_index: torch.Tensor  # [N] long: the image each crop belongs to
    base_index: torch.Tensor  # [B] long: the row of each image's base view
    similarity: torch.Tensor | None = None  # [B,1] the base view's self_similarity, when the expert reads it

    @property
    def base_maps(self) -> torch.Tensor:
        """[B,1,G,G]: the base view's map of every image (what the mask loss compares with the mask)."""
        return self.maps.index_select(0, self.base_index)


class SingleHeadAttention(nn.Module):
    """The release's ``q_former``: one head, projected queries and keys, unprojected values, no residual/FFN."""

    def __init__(self, query_dim: int, key_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.query_proj = nn.Linear(query_dim, embed_dim)
        self.key_proj = nn.Linear(key_dim, embed_dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        # softmax(Q (K W^T + b)^T) = softmax((Q W) K^T): the bias term Q.b is the same for every key of a query and
        # cancels in the softmax. Projecting the 4 queries back (Q W, [N,4,C]) instead of the T keys ([N,T,E]) gives
        # the release's numbers with T/4 times less work and no [N,T,E] tensor.
        q = self.query_proj(queries)  # [N,Q,E]
        scores = torch.matmul(torch.matmul(q, self.key_proj.weight), keys.transpose(-2, -1))  # [N,Q,T]
        return torch.matmul((scores / math.sqrt(self.embed_dim)).softmax(dim=-1), values)  # [N,Q,C]


def crop_index(crops_per_image: Sequence[int] | torch.Tensor, device: torch.device | None = None):
    """(image_index [N], base_index [B]) for images with the given crop counts (base view first in each image)."""
    counts = torch.as_tensor(crops_per_image, dtype=torch.long, device=device).reshape(-1)
    if counts.numel() == 0 or bool((counts < 1).any()):
        raise ValueError(f"crops_per_image must hold at least one crop per image, got {counts.tolist()}")
    image_index = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    base_index = torch.cumsum(counts, 0) - counts
    return image_index, base_index


class AnomalyExpert(nn.Module):
    """LTFM anomaly expert for a G x G token grid of width C (tower hidden) and expert width E.

    Args:
        hidden_size: C, the vision tower width (1152 for SigLIP so400m).
        embed_dim: E, the matching width (512 in the release; also the class embedding width).
        grid_size: G; T = G*G tokens per crop (27 for SigLIP at 384 px, patch 14).
        num_levels: number of multi-level feature maps (4).
        temperature: matching temperature (release 100).
        eps: added to the two significance divisions, the global token's once per crop of the image (release 0;
            an exactly-0 denominator is guarded either way).
        predictor_dim: hidden width of ``final_predictor`` (release 512); ``None`` = ``embed_dim``.
        num_pooling_tokens: quadrant grid side of the selector (release 2 -> 4 tokens per crop).
        image_score: what ``scores`` is (see :data:`IMAGE_SCORES`); release ``"predictor"``:
            ``sigmoid(final_predictor(r))``. ``score_logits`` is always the predictor's (stage 1's BCE trains it).
            ``"calibrated_fusion"`` adds the ``score_calibration`` buffer [3] (set with
            :meth:`set_score_calibration`; the predictor until then).
        self_similarity: the predictor's logit also reads the base view's :func:`self_similarity` ``s``:
            ``final_predictor(r) + GAIN * self_similarity_scale * (s - self_similarity_shift)``, both trained with
            the predictor (scale from 0, so training starts at the release's predictor). Off in the release; its two
            parameters exist only when on, so a release checkpoint's keys are unchanged.
    """

    def __init__(
        self,
        hidden_size: int = 1152,
        embed_dim: int = 512,
        grid_size: int = 27,
        num_levels: int = 4,
        temperature: float = 100.0,
        eps: float = 0.0,
        predictor_dim: int | None = None,
        num_pooling_tokens: int = 2,
        image_score: str = "predictor",
        self_similarity: bool = False,
    ) -> None:
        super().__init__()
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {list(IMAGE_SCORES)}, got {image_score!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.hidden_size = hidden_size
        self.embed_dim = embed_dim
        self.grid_size = grid_size
        self.num_levels = num_levels
        self.temperature = float(temperature)
        self.eps = float(eps)
        self.predictor_dim = predictor_dim or embed_dim
        self.num_pooling_tokens = num_pooling_tokens
        self.image_score = image_score
        self.self_similarity = bool(self_similarity)
        num_patches = grid_size * grid_size

        self.positive_embedding = nn.Parameter(torch.randn(1, embed_dim))
        self.negative_embedding = nn.Parameter(torch.randn(1, embed_dim))
        self.pooling_layer = nn.Sequential(nn.Linear(num_patches, 1))
        self.class_predictor = nn.Sequential(
            nn.Linear(hidden_size, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
        )
        self.siglip_adaptors = nn.ModuleList([nn.Linear(hidden_size, embed_dim) for _ in range(num_levels)])
        self.prompt_adaptors = nn.ModuleList([nn.Linear(2 * embed_dim, embed_dim) for _ in range(num_levels)])
        self.final_predictor = nn.Sequential(
            nn.Linear(hidden_size, self.predictor_dim), nn.GELU(), nn.Linear(self.predictor_dim, 1)
        )
        self.q_former = SingleHeadAttention(hidden_size, hidden_size, embed_dim)
        if self.self_similarity:
            self.self_similarity_scale = nn.Parameter(torch.zeros(1))
            self.self_similarity_shift = nn.Parameter(torch.full((1,), 0.3))
        if image_score == "calibrated_fusion":  # saved with the weights; a release checkpoint has no such key
            self.register_buffer("score_calibration", torch.tensor(IDENTITY_CALIBRATION))

    @property
    def reads_similarity(self) -> bool:
        """Whether the forward computes the base view's :func:`self_similarity` (``ExpertOutput.similarity``)."""
        return self.self_similarity or self.image_score == "calibrated_fusion"

    def set_score_calibration(self, calibration: ScoreCalibration) -> None:
        """Make ``scores`` the calibrated fusion of ``calibration`` (``image_score="calibrated_fusion"`` only)."""
        if self.image_score != "calibrated_fusion":
            raise ValueError(f"a score calibration needs image_score='calibrated_fusion', not {self.image_score!r}")
        buffer: torch.Tensor = self.score_calibration  # type: ignore[assignment]
        buffer.copy_(torch.tensor(calibration.weights(), dtype=buffer.dtype))

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments (saved beside the weights so the expert can be rebuilt)."""
        return {
            "hidden_size": self.hidden_size,
            "embed_dim": self.embed_dim,
            "grid_size": self.grid_size,
            "num_levels": self.num_levels,
            "temperature": self.temperature,
            "eps": self.eps,
            "predictor_dim": self.predictor_dim,
            "num_pooling_tokens": self.num_pooling_tokens,
            "image_score": self.image_score,
            "self_similarity": self.self_similarity,
        }

    # ------------------------------------------------------------------------------------------ maths
    def pooling_matrix(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[p*p, G*G]: row q averages the tokens of quadrant q exactly as ``AdaptiveAvgPool2d(p)`` (row-major q)."""
        g, p = self.grid_size, self.num_pooling_tokens
        matrix = torch.zeros(p * p, g, g, dtype=torch.float64)
        for i in range(p):
            r0, r1 = (i * g) // p, -(-((i + 1) * g) // p)
            for j in range(p):
                c0, c1 = (j * g) // p, -(-((j + 1) * g) // p)
                matrix[i * p + j, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
        return matrix.reshape(p * p, g * g).to(device=device, dtype=dtype)

    def anomaly_maps(
        self, level_features: Sequence[torch.Tensor], base_features: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Maps [N,1,G,G], significance [N] and per-level maps, from level features and each image's base view.

        ``base_features`` [B,T,C] holds the LLM-layer features of each image's base view; the class embedding is
        computed once per image and gathered for its crops (the release repeats the base view per crop: same numbers).
        """
        n = level_features[0].shape[0]
        g = self.grid_size
        pooled = self.pooling_layer(base_features.transpose(1, 2)).squeeze(-1)  # [B,C]
        cls = self.class_predictor(pooled).index_select(0, image_index)  # [N,E]
        pos = self.positive_embedding.expand(n, -1)
        neg = self.negative_embedding.expand(n, -1)
        level_maps: list[torch.Tensor] = []
        for i in range(self.num_levels):
            d_pos = F.normalize(self.prompt_adaptors[i](torch.cat([pos, cls], dim=-1)), dim=-1)
            d_neg = F.normalize(self.prompt_adaptors[i](torch.cat([neg, cls], dim=-1)), dim=-1)
            prompts = torch.stack([d_pos, d_neg], dim=-1)  # [N,E,2]
            # temperature * cos(f_hat, d): normalise the [N,T,2] products, not the [N,T,E] features (same numbers,
            # two fewer passes over the largest tensor of the expert)
            feats = self.siglip_adaptors[i](level_features[i])  # [N,T,E]
            scale = self.temperature / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [N,T,1]
            logits = torch.matmul(feats, prompts) * scale  # [N,T,2]
            probs = logits.transpose(1, 2).reshape(n, 2, g, g).softmax(dim=1)
            level_maps.append(probs[:, 1:])
        maps = torch.stack(level_maps, 0).mean(0)  # [N,1,G,G]
        significance = torch.stack([m.mean(dim=(1, 2, 3)) for m in level_maps], 0).mean(0)  # [N]
        return maps, significance, level_maps

    def image_scores(self, score_logits: torch.Tensor, base_maps: torch.Tensor | None = None,
                     similarity: torch.Tensor | None = None) -> torch.Tensor:
        """[B,1] image scores (``image_score``) from the predictor's logits [B,1] and what the setting also reads:
        the base views' maps [B,1,G,G] (``map_max``, ``fusion``) or their self-similarity [B,1]
        (``calibrated_fusion``)."""
        if self.image_score == "calibrated_fusion":
            if similarity is None:
                raise ValueError("image_score 'calibrated_fusion' needs the base views' self-similarity [B,1]")
            calibration: torch.Tensor = self.score_calibration  # type: ignore[assignment]
            w_l, w_s, bias = calibration.to(device=score_logits.device, dtype=score_logits.dtype)
            return torch.sigmoid(w_l * score_logits + w_s * similarity.to(score_logits) + bias)
        predictor = torch.sigmoid(score_logits)
        if self.image_score == "predictor":
            return predictor
        if base_maps is None:
            raise ValueError(f"image_score {self.image_score!r} needs the base views' maps [B,1,G,G]")
        peak = base_maps.flatten(1).amax(dim=1, keepdim=True)  # [B,1]
        return peak if self.image_score == "map_max" else 0.5 * (predictor + peak)

    def _denominator(self, pooled: torch.Tensor, eps_terms: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled + eps`` (``eps * eps_terms`` when given, broadcast), with an exactly-0 entry replaced by 1: its
        numerator is 0 too (all its weights are 0), so the quotient is 0 where the release's division gives NaN, and
        unchanged everywhere else."""
        if self.eps:
            pooled = pooled + (self.eps if eps_terms is None else self.eps * eps_terms)
        return torch.where(pooled == 0, torch.ones_like(pooled), pooled)

    def forward(
        self,
        features: torch.Tensor,
        level_features: Sequence[torch.Tensor],
        crops_per_image: Sequence[int] | torch.Tensor,
        detach_selector: bool = False,
    ) -> ExpertOutput:
        """Run the expert on N crops of B images (``crops_per_image`` sums to N; each image's base view first).

        ``detach_selector``: the look-twice selector reads the features, maps and significances without their
        gradients, so a loss on the image score trains only ``q_former`` and ``final_predictor`` (the outputs' values
        are the same either way). The release trains with it off: its image-score BCE is its only loss and shapes
        the maps through the selector.
        """
        n, t, c = features.shape
        g = self.grid_size
        if t != g * g or c != self.hidden_size:
            raise ValueError(
                f"features must be [N,{g * g},{self.hidden_size}] (grid {g}x{g}, hidden {self.hidden_size}); "
                f"got {list(features.shape)}"
            )
        if len(level_features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} level feature tensors, got {len(level_features)}")
        for i, f in enumerate(level_features):
            if f.shape != features.shape:
                raise ValueError(f"level_features[{i}] has shape {list(f.shape)}, expected {list(features.shape)}")
        image_index, base_index = crop_index(crops_per_image, device=features.device)
        if image_index.numel() != n:
            raise ValueError(f"crops_per_image sums to {image_index.numel()} but {n} crops were given")
        num_images = base_index.numel()

        maps, significance, level_maps = self.anomaly_maps(
            level_features, features.index_select(0, base_index), image_index
        )

        # what the selector reads: the same tensors, without their gradients when detach_selector
        v, m, sig = (features.detach(), maps.detach(), significance.detach()) if detach_selector else (
            features, maps, significance)
        # look twice: map-weighted quadrant means of v query the crop's tokens. AdaptiveAvgPool2d(p) over the G x G
        # grid is a fixed [p*p, T] averaging matrix, so P(v * m) is one batched matmul (no [N,C,G,G] copy).
        pool = self.pooling_matrix(v.device, v.dtype)  # [p*p,T]
        weights = pool.unsqueeze(0) * m.reshape(n, 1, t)  # [N,p*p,T]
        in_significance = weights.sum(-1, keepdim=True)  # [N,4,1] = P(m)
        queries = torch.bmm(weights, v) / self._denominator(in_significance)  # [N,4,C] = P(v*m) / P(m)
        crop_tokens = self.q_former(queries, v, v)  # [N,4,C]

        # global token per image: significance-weighted mean over the image's crops and quadrants. The sums take
        # their terms' dtype, not v's: under CUDA autocast the maps (a softmax) are float32 while v is bf16.
        weight = in_significance * sig[:, None, None]  # [N,4,1]
        weighted = (crop_tokens * weight).sum(1)  # [N,C]
        weight = weight.sum(1)  # [N,1]
        numerator = weighted.new_zeros(num_images, c).index_add_(0, image_index, weighted)
        denominator = weight.new_zeros(num_images, 1).index_add_(0, image_index, weight)
        # eps once per crop: repeating a crop (a 128 px image's AnyRes crop is its base view) leaves the token as is
        crops = torch.diff(base_index, append=base_index.new_tensor([n])).to(denominator.dtype)[:, None]  # [B,1]
        global_tokens = (numerator / self._denominator(denominator, crops)).unsqueeze(1)  # [B,1,C]
        score_logits = self.final_predictor(global_tokens.squeeze(1))  # [B,1]
        # [B,1], read from the base views' features (without their gradients when detached)
        s = (self_similarity(v.index_select(0, base_index), g)[:, None].to(score_logits.dtype)
             if self.reads_similarity else None)
        if s is not None and self.self_similarity:
            score_logits = score_logits + SELF_SIMILARITY_GAIN * self.self_similarity_scale * (
                s - self.self_similarity_shift)
        return ExpertOutput(
            maps=maps,
            crop_tokens=crop_tokens,
            global_tokens=global_tokens,
            scores=self.image_scores(score_logits, maps.index_select(0, base_index), s),
            score_logits=score_logits,
            significance=significance,
            level_maps=level_maps,
            image_index=image_index,
            base_index=base_index,
            similarity=s,
        )


# ------------------------------------------------------------------------------------------------ loading
def _strip_prefix(key: str) -> str:
    for prefix in _KNOWN_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _expert_entries(state: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The expert's entries of ``state`` under their bare names.

    The release saves the expert on its own (bare names, ``pretrained_expert_*.pth``); a whole-model state dict
    holds it under a prefix (the release's LLaVA model: ``anomaly_encoder.`` / ``model.anomaly_encoder.``; this
    package: ``anomaly_expert.``; DDP adds ``module.``). The prefix is read off the key that ends in
    ``positive_embedding``; only the keys under it are the expert's (the rest of a whole-model file is ignored).
    """
    anchors = sorted(k[: -len(_ANCHOR_KEY)] for k in state
                     if k.endswith(_ANCHOR_KEY) and (k == _ANCHOR_KEY or k.endswith("." + _ANCHOR_KEY)))
    if len(anchors) == 1:
        prefix = anchors[0]
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if len(anchors) > 1:
        raise ExpertWeightsError(f"{name}: holds {len(anchors)} experts (prefixes {anchors}); save one of them")
    return {_strip_prefix(k): v for k, v in state.items()}


def load_expert_weights(
    expert: AnomalyExpert, source: str | Path | Mapping[str, torch.Tensor], strict: bool = False
) -> dict[str, list[str]]:
    """Load an expert state dict with the release key names (a ``.pth`` path or a mapping).

    Logs and returns ``{"matched": [...], "missing": [...], "unexpected": [...]}``. Raises
    :class:`ExpertWeightsError` when no key matches (a wrong file), when a matched key has another shape (an
    expert of another size), or, with ``strict=True``, when any key is missing (but ``score_calibration``, which
    stage 1 fits after loading) or unexpected.
    """
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"expert checkpoint {path} does not exist (set model.expert_checkpoint)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
    else:
        state = source
    if not isinstance(state, Mapping):
        raise ExpertWeightsError(f"{name}: expected a state dict (mapping of tensors), got {type(state).__name__}")
    incoming = _expert_entries(state, name)
    own = expert.state_dict()
    matched = sorted(k for k in own if k in incoming)
    missing = sorted(k for k in own if k not in incoming)
    unexpected = sorted(k for k in incoming if k not in own)
    if not matched:
        raise ExpertWeightsError(
            f"{name}: no key matches the expert (expected e.g. {sorted(own)[:4]}; the file has "
            f"{sorted(incoming)[:4]}). Is this an Anomaly-OV expert checkpoint?"
        )
    wrong = [f"{k}: file {tuple(incoming[k].shape)} vs expert {tuple(own[k].shape)}"
             for k in matched if tuple(incoming[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ExpertWeightsError(
            f"{name}: {len(wrong)} key(s) have another shape (expert sized for another tower?): " + "; ".join(wrong[:5])
        )
    required = [k for k in missing if k not in _FIT_AFTER_TRAINING]
    if strict and (required or unexpected):
        hint = (" (the file's expert has a calibrated image score: build this one with image_score "
                "'calibrated_fusion', model.expert.image_score)" if set(_FIT_AFTER_TRAINING) & set(unexpected) else "")
        raise ExpertWeightsError(f"{name}: missing keys {required}, unexpected keys {unexpected}{hint}")
    with torch.no_grad():
        for key in matched:
            own_tensor = own[key]
            own_tensor.copy_(incoming[key].to(dtype=own_tensor.dtype, device=own_tensor.device))
    logger.info("expert weights from %s: %d matched keys %s", name, len(matched), matched)
    if required:
        logger.warning("expert weights from %s: %d missing keys (left as initialised): %s", name, len(required),
                       required)
    if len(required) < len(missing):
        logger.info("expert weights from %s: no %s (fit after training; the identity until then)", name,
                    sorted(set(missing) - set(required)))
    if unexpected:
        logger.warning("expert weights from %s: %d unexpected keys ignored: %s", name, len(unexpected), unexpected)
    return {"matched": matched, "missing": missing, "unexpected": unexpected}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
