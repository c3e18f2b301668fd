"""Anomaly-OV: transformers' LLaVA-OneVision with the LTFM anomaly expert between the vision tower and the LLM.

What transformers gives and is reused as is: the SigLIP tower, the projector, AnyRes crop counting
(``image_size_to_num_patches``), unpadding + ``image_newline`` packing (``LlavaOnevisionModel.pack_image_features``),
the Qwen2 LLM, the loss and ``generate()``. What this module adds (docs/model.md, 'The LTFM expert' and
'The LLM input: token layout'):

* the tower runs once per batch with the hidden states the expert needs: the LLM layer
  (``config.vision_feature_layer``) and four multi-level layers (``config.expert_layers``; for SigLIP so400m with
  the release's 26-layer tower ``hidden_states[7, 13, 19, 25]``, for other towers 4 evenly spaced layers ending
  one below the LLM layer, see :func:`default_expert_layers`);
* :class:`~anomaly_ov.model.expert.AnomalyExpert` (``self.anomaly_expert``) -> maps, anomaly tokens, scores;
* each image's LLM input is, in order (the processor lays out the placeholders, this model fills them):
  ``<image>`` x visual tokens (base view + unpadded crops with newlines, as LLaVA-OV) -> "with" -> ``<adv>``
  (replaced by the embedding of " slightly" / " moderately" / " highly" chosen from the image score with
  ``config.suspicious_thresholds``) -> " suspicious features: " -> ``<anomaly>`` x (1 + 4 + 2h(2w+1)) (projected by
  the same projector: global token, the base view's 4 tokens, the crops' tokens as a (2h) x (2w) grid with
  ``image_newline`` after each row; an image without crops (multi-image input) has 1 + 4 + 1 newline, as the
  release) -> the question.
* :class:`AnomalyExpertModel` is stage 1's model for a pretrained checkpoint: the vision tower and the expert only
  (the LLM is never loaded; :func:`anomaly_ov.model.presets.build_expert_model`).

Public API::

    model = AnomalyOVForConditionalGeneration(AnomalyOVConfig(...))      # or presets.build_model(params)
    out = model(**processor(images, conversation))                       # .loss, .logits, .anomaly_scores
    ids = model.generate(**processor(images, question_only_conversation), max_new_tokens=32)
    exp = model.expert_forward(pixel_values, image_sizes)                # stage 1: tower + expert only
    exp.maps[exp.base_index]  (== exp.base_maps)                         # base-view map per image
    model.save_pretrained(d); AnomalyOVForConditionalGeneration.from_pretrained(d)

``pixel_values`` is [num_images, max_crops, 3, H, W] (crops padded like LLaVA-OV) or already flat
[total_crops, 3, H, W]; ``image_sizes`` [num_images, 2] as (height, width); ``batch_num_images`` [batch] as in
transformers (an entry > 1 = a multi-image sample whose images are not cropped).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, PreTrainedConfig
from transformers import initialization as init
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
)

from anomaly_ov.model.expert import AnomalyExpert, ExpertOutput
from anomaly_ov.model.tokenizer import RELEASE_SUSPICIOUS_THRESHOLDS

logger = logging.getLogger(__name__)

_LEGACY_EXPERT_FIELDS = ("embed_dim", "predictor_dim", "temperature", "eps")


T = TypeVar("T")


def filled(value: T | None, name: str) -> T:
    """A config field that is Optional in a config.json but always set once the config is built (its
    ``__post_init__`` fills it); ``None`` here means a config built some other way, named in the error."""
    if value is None:
        raise ValueError(f"config.{name} is not set: build the config through its class (it fills the default)")
    return value


def sub_config(value: dict[str, Any] | PreTrainedConfig | None, name: str = "vision_config") -> PreTrainedConfig:
    """A LLaVA-OneVision sub-config (``vision_config`` / ``text_config``) as the config object its
    ``__post_init__`` builds from a dict or the default; typed ``dict | config | None`` only before that."""
    if not isinstance(value, PreTrainedConfig):
        raise TypeError(f"config.{name} is a {type(value).__name__}, not a built config")
    return value


def default_expert_layers(llm_layer: int) -> list[int]:
    """Four evenly spaced ``hidden_states`` indices ending one below the LLM layer (26 -> [7, 13, 19, 25]).

    A tower with fewer than 4 layers below the LLM layer cannot give four distinct ones that way; it then uses
    its first four layers, the LLM layer included (4 -> [1, 2, 3, 4]), repeating the last when it has fewer.
    """
    if llm_layer < 2:
        raise ValueError(f"the vision tower needs at least 2 layers for the expert, LLM layer is {llm_layer}")
    if llm_layer - 1 < 4:
        return [min(k + 1, llm_layer) for k in range(4)]
    step = (llm_layer - 1) // 4
    return [llm_layer - 1 - step * (3 - k) for k in range(4)]


@strict
class AnomalyOVConfig(LlavaOnevisionConfig):
    """LLaVA-OneVision config + the expert's settings and the placeholder token ids the model fills."""

    model_type = "anomaly_ov"

    #: keyword arguments of :class:`~anomaly_ov.model.expert.AnomalyExpert` other than the three the tower fixes
    #: (``hidden_size``, ``grid_size``, ``num_levels``): ``embed_dim``, ``temperature``, ``eps``, ``predictor_dim``,
    #: ``num_pooling_tokens``; a missing one takes the constructor's default (the release's value)
    expert_config: dict[str, Any] | None = None
    expert_layers: list[int] | None = None
    anomaly_token_index: int = -1
    adverb_token_index: int = -1
    adverb_token_ids: list[list[int]] | None = None
    suspicious_thresholds: list[float] | None = None

    def __post_init__(self, **kwargs):
        # config.json files saved before the expert's settings became one dict held them as `expert_<argument>`
        legacy = {name: kwargs.pop(f"expert_{name}") for name in _LEGACY_EXPERT_FIELDS if f"expert_{name}" in kwargs}
        super().__post_init__(**kwargs)
        self.expert_config = {**legacy, **(self.expert_config or {})}
        if self.suspicious_thresholds is None:
            self.suspicious_thresholds = list(RELEASE_SUSPICIOUS_THRESHOLDS)
        if self.expert_layers is None:
            self.expert_layers = default_expert_layers(self.llm_layer_index)

    @property
    def llm_layer_index(self) -> int:
        """Positive ``hidden_states`` index of the layer the LLM reads (``hidden_states[0]`` = embeddings)."""
        layer = self.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("the anomaly expert needs a single vision_feature_layer (an int), got a list")
        n = sub_config(self.vision_config).num_hidden_layers
        return layer if layer >= 0 else n + 1 + layer

    @property
    def grid_size(self) -> int:
        vision = sub_config(self.vision_config)
        return vision.image_size // vision.patch_size

    @classmethod
    def from_llava_config(cls, base: LlavaOnevisionConfig, **settings: Any) -> AnomalyOVConfig:
        """An AnomalyOVConfig with everything of a LLaVA-OneVision config plus ``settings`` (fields of this class,
        e.g. ``expert_config`` and the placeholder ids)."""
        data = base.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map"):
            data.pop(key, None)
        data.update(settings)
        return cls(**data)


def _register_weight_renaming() -> None:
    """Load llava-hf checkpoints (legacy key layout) into this model type like transformers does for llava_onevision."""
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )

        mapping = get_checkpoint_conversion_mapping("llava_onevision")
        mapping = mapping or get_checkpoint_conversion_mapping("llava_next")
        if mapping:
            register_checkpoint_conversion_mapping("anomaly_ov", mapping, overwrite=True)
    except Exception as exc:  # pragma: no cover - depends on the transformers version
        logger.warning("could not register the llava_onevision weight renaming for anomaly_ov: %s", exc)


_register_weight_renaming()


@dataclass
class AnomalyOVCausalLMOutput(LlavaOnevisionCausalLMOutputWithPast):
    """LLaVA-OV output + the expert's image scores [num_images,1] and per-crop maps (when images were given)."""

    anomaly_scores: torch.Tensor | None = None
    anomaly_maps: torch.Tensor | None = None


@dataclass
class EncodedImages:
    """Everything the images contribute to the LLM input (flattened over the batch's images, in order)."""

    visual: torch.Tensor  # [sum visual tokens, D]
    anomaly: torch.Tensor  # [sum anomaly tokens, D]
    adverb_index: torch.Tensor  # [num_images] long: 0 slightly, 1 moderately, 2 highly
    expert: ExpertOutput


class ExpertPathMixin:
    """Stage 1's path, shared by the whole model and :class:`AnomalyExpertModel`: the vision tower
    (``self.expert_tower``) once per batch of crops -> the expert (``self.anomaly_expert``); needs ``self.config``."""

    if TYPE_CHECKING:  # what the model classes that mix it in provide
        config: AnomalyOVConfig
        anomaly_expert: AnomalyExpert

        @property
        def expert_tower(self) -> nn.Module: ...

    def crops_per_image(self, image_sizes: torch.Tensor, batch_num_images: torch.Tensor | None = None) -> list[int]:
        """Number of crops (base view included) of each image, as LLaVA-OV counts them."""
        if batch_num_images is None:
            need_patching = [True] * len(image_sizes)
        else:
            need_patching = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
        if len(need_patching) != len(image_sizes):
            raise ValueError(f"batch_num_images sums to {len(need_patching)} but {len(image_sizes)} image sizes given")
        return [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=self.config.image_grid_pinpoints,
                patch_size=sub_config(self.config.vision_config).image_size,
            )
            if patch
            else 1
            for size, patch in zip(image_sizes, need_patching, strict=True)
        ]

    def _flat_crops(self, pixel_values: torch.Tensor, counts: list[int]) -> torch.Tensor:
        if pixel_values.dim() == 5:
            if pixel_values.shape[0] != len(counts):
                raise ValueError(f"pixel_values holds {pixel_values.shape[0]} images but {len(counts)} sizes given")
            if max(counts) > pixel_values.shape[1]:
                raise ValueError(
                    f"an image needs {max(counts)} crops but pixel_values has room for {pixel_values.shape[1]}; "
                    "was it made with another image_grid_pinpoints?"
                )
            return torch.cat([pv[:n] for pv, n in zip(pixel_values, counts, strict=True)], dim=0)
        if pixel_values.dim() == 4:
            if pixel_values.shape[0] != sum(counts):
                raise ValueError(f"flat pixel_values has {pixel_values.shape[0]} crops, expected {sum(counts)}")
            return pixel_values
        raise ValueError(f"pixel_values must be 4-D or 5-D, got shape {tuple(pixel_values.shape)}")

    def tower_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Vision tower on flat crops -> (LLM-layer features [N,T,C], multi-level features list of [N,T,C])."""
        llm_layer = self.config.llm_layer_index
        layers = list(filled(self.config.expert_layers, "expert_layers"))
        wanted = sorted({llm_layer, *layers})
        tower = self.expert_tower
        dtype = next(tower.parameters()).dtype  # the tower's weights (bf16 on a GPU)
        out = tower(pixel_values.to(dtype), output_hidden_states=wanted, return_dict=True)
        hidden = out.hidden_states
        features = hidden[llm_layer]
        levels = [hidden[i] for i in layers]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
            levels = [f[:, 1:] for f in levels]
        return features, levels

    def _run_expert(self, features: torch.Tensor, levels: list[torch.Tensor], counts: list[int],
                    detach_selector: bool = False) -> ExpertOutput:
        dtype = self.anomaly_expert.positive_embedding.dtype
        return self.anomaly_expert(features.to(dtype), [f.to(dtype) for f in levels], counts,
                                   detach_selector=detach_selector)

    def expert_forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        batch_num_images: torch.Tensor | None = None,
        detach_selector: bool = False,
    ) -> ExpertOutput:
        """Stage 1: vision tower + expert only (gradients flow into the tower when it is trainable;
        ``detach_selector``: see :meth:`AnomalyExpert.forward`)."""
        counts = self.crops_per_image(image_sizes, batch_num_images)
        features, levels = self.tower_features(self._flat_crops(pixel_values, counts))
        return self._run_expert(features, levels, counts, detach_selector)


class AnomalyOVForConditionalGeneration(ExpertPathMixin, LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision + the LTFM anomaly expert (``self.anomaly_expert``, release key names under that prefix)."""

    config: AnomalyOVConfig
    config_class = AnomalyOVConfig

    def __init__(self, config: AnomalyOVConfig) -> None:
        super().__init__(config)
        self.anomaly_expert = self._new_expert(config)
        self.post_init()

    @staticmethod
    def _new_expert(config: AnomalyOVConfig) -> AnomalyExpert:
        expert = AnomalyExpert(
            hidden_size=sub_config(config.vision_config).hidden_size,
            grid_size=config.grid_size,
            num_levels=len(filled(config.expert_layers, "expert_layers")),
            **(config.expert_config or {}),
        )
        for module in expert.modules():
            # nn.Module's stubs type every attribute as Tensor | Module; this one is a plain flag
            module._anomaly_expert_part = True  # type: ignore[assignment]
        return expert

    def reset_expert(self) -> None:
        """Replace the expert by a freshly initialised one (after loading a checkpoint that has none)."""
        param = next(self.model.parameters())
        self.anomaly_expert = self._new_expert(self.config).to(device=param.device)

    def _init_weights(self, module: nn.Module) -> None:
        # The expert keeps PyTorch's default init (and N(0,1) prompts, as the release); the rest is LLaVA-OV's.
        if getattr(module, "_anomaly_expert_part", False):
            if isinstance(module, AnomalyExpert):
                init.normal_(module.positive_embedding)
                init.normal_(module.negative_embedding)
            elif isinstance(module, nn.Linear):
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)

    # ---------------------------------------------------------------------------------------------- images
    @property
    def expert_tower(self) -> nn.Module:
        """The SigLIP tower the expert reads."""
        return self.model.vision_tower

    def adverb_index(self, scores: torch.Tensor) -> torch.Tensor:
        """0 / 1 / 2 (slightly / moderately / highly) for image scores [B] or [B,1]."""
        low, high = filled(self.config.suspicious_thresholds, "suspicious_thresholds")
        thresholds = torch.tensor([low, high], dtype=scores.dtype, device=scores.device)
        return torch.bucketize(scores.reshape(-1).detach(), thresholds, right=True)

    def anomaly_token_layout(
        self,
        expert: ExpertOutput,
        counts: list[int],
        image_sizes: torch.Tensor,
        project: Any = None,
        newline: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Per image: [global (1), base view's 4, crops' tokens as (2h)x(2w) grid + newline per row]; an image
        without crops (several images in one sample) ends with one newline instead, as its visual tokens do (the
        release's layout: 1 + 4 + 1).

        ``project`` defaults to the model's projector and ``newline`` to ``image_newline`` (tests pass identities).
        """
        if project is None:
            project = self.model.multi_modal_projector
            dtype = self.model.multi_modal_projector.linear_1.weight.dtype
        else:
            dtype = expert.crop_tokens.dtype
        tokens = project(expert.crop_tokens.to(dtype))  # [N,4,D]
        globals_ = project(expert.global_tokens.to(dtype))  # [B,1,D]
        newline = (self.model.image_newline if newline is None else newline).to(tokens.dtype)
        width = tokens.shape[-1]
        p = self.anomaly_expert.num_pooling_tokens
        per_image = []
        for b, (start, count) in enumerate(zip(expert.base_index.tolist(), counts, strict=True)):
            parts = [globals_[b], tokens[start]]
            if count > 1:
                h, w = get_anyres_image_grid_shape(
                    image_sizes[b], self.config.image_grid_pinpoints, sub_config(self.config.vision_config).image_size
                )
                if h * w != count - 1:
                    raise ValueError(f"image {b}: {count - 1} crops do not form the {h}x{w} grid of its size")
                grid = tokens[start + 1 : start + count].reshape(h, w, p, p, width)
                grid = grid.permute(0, 2, 1, 3, 4).reshape(h * p, w * p, width)
                grid = torch.cat([grid, newline.expand(h * p, 1, width)], dim=1)
                parts.append(grid.reshape(-1, width))
            else:
                parts.append(newline.reshape(1, width))
            per_image.append(torch.cat(parts, dim=0))
        return per_image

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        batch_num_images: torch.Tensor | None = None,
    ) -> EncodedImages:
        """Tower once -> visual tokens (LLaVA-OV packing), expert, projected anomaly tokens, adverb choice."""
        image_sizes = torch.as_tensor(image_sizes)
        counts = self.crops_per_image(image_sizes, batch_num_images)
        features, levels = self.tower_features(self._flat_crops(pixel_values, counts))
        expert = self._run_expert(features, levels, counts)
        projector = self.model.multi_modal_projector
        projected = projector(features.to(projector.linear_1.weight.dtype))  # fp32 when it trains, 16-bit tower
        packed, _ = self.model.pack_image_features(
            torch.split(projected, counts, dim=0),
            image_sizes,
            image_newline=self.model.image_newline,
            vision_aspect_ratio=self.config.vision_aspect_ratio,
        )
        anomaly = self.anomaly_token_layout(expert, counts, image_sizes)
        return EncodedImages(
            visual=torch.cat(packed, dim=0),
            anomaly=torch.cat(anomaly, dim=0),
            adverb_index=self.adverb_index(expert.scores),
            expert=expert,
        )

    def adverb_embeddings(self) -> torch.Tensor:
        """[3, D]: the LLM embedding of " slightly", " moderately", " highly" (mean over sub-tokens if split)."""
        ids = self.config.adverb_token_ids
        if not ids or len(ids) != 3:
            raise ValueError("config.adverb_token_ids must hold the token ids of the 3 adverbs (set by the preset)")
        embed = self.get_input_embeddings()
        device = next(embed.parameters()).device  # (its one parameter, the embedding matrix)
        return torch.stack([embed(torch.tensor(i, device=device)).mean(0) for i in ids])

    def _scatter(self, embeds: torch.Tensor, mask: torch.Tensor, values: torch.Tensor, what: str) -> torch.Tensor:
        n = int(mask.sum())
        if n != values.shape[0]:
            raise ValueError(
                f"{what}: the prompt has {n} placeholder tokens but the images give {values.shape[0]} "
                "(was the prompt built by AnomalyOVProcessor with the same image sizes and settings?)"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))

    def build_inputs_embeds(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        batch_num_images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EncodedImages]:
        """Token embeddings with visual tokens, adverbs and anomaly tokens put at their placeholders."""
        cfg = self.config
        if cfg.anomaly_token_index < 0 or cfg.adverb_token_index < 0:
            raise ValueError("config.anomaly_token_index / adverb_token_index are unset: build the model via presets")
        encoded = self.encode_images(pixel_values, image_sizes, batch_num_images)
        embeds = self.get_input_embeddings()(input_ids)
        embeds = self._scatter(embeds, input_ids == cfg.image_token_id, encoded.visual, "visual tokens")
        embeds = self._scatter(embeds, input_ids == cfg.anomaly_token_index, encoded.anomaly, "anomaly tokens")
        adverbs = self.adverb_embeddings()[encoded.adverb_index]
        embeds = self._scatter(embeds, input_ids == cfg.adverb_token_index, adverbs, "suspicious-level phrases")
        return embeds, encoded

    # --------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> AnomalyOVCausalLMOutput:
        """LLaVA-OV forward; when ``pixel_values`` come with ``input_ids`` the placeholders are filled first."""
        encoded = None
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("pixel_values need input_ids with the image placeholders (use AnomalyOVProcessor)")
            if image_sizes is None:
                raise ValueError("pixel_values need image_sizes ([num_images, 2] as height, width)")
            inputs_embeds, encoded = self.build_inputs_embeds(input_ids, pixel_values, image_sizes, batch_num_images)
            input_ids = None
        kwargs.pop("pixel_values_videos", None)
        kwargs.pop("image_sizes_videos", None)
        out = super().forward(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return AnomalyOVCausalLMOutput(
            loss=out.loss,
            logits=out.logits,
            cache=out.cache,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            anomaly_scores=None if encoded is None else encoded.expert.scores,
            anomaly_maps=None if encoded is None else encoded.expert.maps,
        )

    # ------------------------------------------------------------------------------------------- freezing
    def set_trainable(self, *, vision_tower: bool, expert: bool, projector: bool, language_model: bool) -> None:
        """requires_grad per part (stage 1: expert (+ tiny tower); stage 2: projector + LLM)."""
        parts = {
            "vision_tower": (self.model.vision_tower, vision_tower),
            "expert": (self.anomaly_expert, expert),
            "projector": (self.model.multi_modal_projector, projector),
            "language_model": (self.model.language_model, language_model),
        }
        for _, (module, flag) in parts.items():
            module.requires_grad_(flag)
        self.model.image_newline.requires_grad_(projector)
        self.lm_head.requires_grad_(language_model)


class AnomalyExpertModel(ExpertPathMixin, nn.Module):
    """The vision tower + the anomaly expert, nothing of the LLM: what stage 1 trains and reads.

    ``config`` is the whole model's :class:`AnomalyOVConfig` (the tower layers the expert taps, the AnyRes pinpoints),
    so the stage-1 artifact saved from it (``presets.save_expert_stage``) loads into the whole model afterwards.
    """

    def __init__(self, config: AnomalyOVConfig, vision_tower: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import AutoModel

        self.config = config
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.anomaly_expert = AnomalyOVForConditionalGeneration._new_expert(config)

    @property
    def expert_tower(self) -> nn.Module:
        return self.vision_tower


def _register_auto_classes() -> None:
    """So ``AutoConfig`` / ``AutoModelForImageTextToText.from_pretrained(saved_dir)`` know ``anomaly_ov``."""
    try:
        from transformers import AutoConfig, AutoModelForImageTextToText

        AutoConfig.register("anomaly_ov", AnomalyOVConfig, exist_ok=True)
        AutoModelForImageTextToText.register(AnomalyOVConfig, AnomalyOVForConditionalGeneration, exist_ok=True)
    except Exception as exc:  # pragma: no cover - depends on the transformers version
        logger.warning("could not register anomaly_ov with the transformers Auto classes: %s", exc)


_register_auto_classes()
