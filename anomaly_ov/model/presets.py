"""Model presets and the model-level API the training, evaluation and serving code use.

Presets (``params.model.preset``):

* ``tiny``: SigLIP 128 px / patch 8 (16x16 grid, width 64, 4 layers) + Qwen2 (width 128, 4 layers), expert E = 64,
  random init from config, tokenizer trained by :func:`anomaly_ov.model.tokenizer.train_tokenizer`. AnyRes
  pinpoints up to 2x3 crops of 128 px: a square image is a 1x1 crop grid (base view + 1 crop). Trains on 2 CPU
  cores in minutes.
* ``llava-onevision-0.5b`` / ``-7b``: a local directory of ``llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf``
  (``params.model.checkpoint``; the hub id when online), expert 1152 -> 512, optionally the official
  ``pretrained_expert_*.pth`` (``params.model.expert_checkpoint``). ``build_shapes_only(preset)`` builds the same
  architecture from config with random weights (no download) for benchmarks and tests.

API::

    tok = train_tokenizer(texts, vocab_size=2000)                 # tiny only (anomaly_ov.model.tokenizer)
    model = build_model(params, tokenizer=tok)                    # AnomalyOVForConditionalGeneration
    proc = build_processor(params, tok)                           # AnomalyOVProcessor (or processor_for(model, tok,
                                                                  #   image_processor_for(params)))
    image_processor_for(params)                                   # THE image processor of a preset (all stages)
    save_pretrained(model, proc, d); model, proc = load_pretrained(d)  # whole model, no network
    save_expert_stage(model, d); load_expert_stage(model, d)      # stage-1 artifact (expert .pth + tiny tower)
    stage1 = build_expert_model(params)                           # what stage 1 trains and reads: pretrained
                                                                  # presets load the tower alone, never the LLM

The expert's settings: ``params.model.expert`` holds :class:`~anomaly_ov.model.expert.AnomalyExpert`'s own keyword
arguments (``embed_dim``, ``temperature``, ``eps``, ``predictor_dim``); a null one takes the preset family's value
(:data:`TINY_EXPERT` / :data:`PRETRAINED_EXPERT`). :func:`expert_config` is that dict; it goes unchanged into
``AnomalyOVConfig.expert_config`` and from there into ``AnomalyExpert(**expert_config, hidden_size=..., ...)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.model.tokenizer import (
    ADV_TOKEN,
    ADVERB_WORDS,
    ANOMALY_TOKEN,
    IMAGE_TOKEN,
    RELEASE_SUSPICIOUS_THRESHOLDS,
    VIDEO_TOKEN,
)

if TYPE_CHECKING:
    from anomaly_ov.config import Params
    from anomaly_ov.model.modeling import AnomalyOVForConditionalGeneration
    from anomaly_ov.model.processing import AnomalyOVProcessor

logger = logging.getLogger(__name__)

HUB_IDS = {
    "llava-onevision-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
}
#: Pretrained presets resize an image whose longer side exceeds this to it, as the release's scripts do
#: (``processing.fit_longest_side``); the tiny preset keeps images as they are.
RELEASE_MAX_IMAGE_SIDE = 1024
TINY_IMAGE_SIZE = 128
#: patch 8 (a 16 x 16 grid): at patch 16 the 8 x 8 maps could not outline the small synthetic defects (held-out pixel
#: AUROC 0.70 against 0.83 at patch 8, same data and recipe); width and depth shrink to keep stage 1 CPU-sized.
TINY_PATCH = 8
TINY_PINPOINTS = [[128, 128], [128, 256], [256, 128], [256, 256], [256, 384], [384, 256]]
TINY_VISION: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH,
    "vision_use_head": False,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
#: The expert's settings per preset family (AnomalyExpert keyword arguments; ``params.model.expert`` overrides each).
#: Pretrained presets: the release (E = 512, temperature 100, no eps; an exactly-0 pooled map is guarded in the
#: expert). Tiny: E = 64; temperature 10 (a tower trained from scratch saturates the 2-way softmax at 100, and the
#: mask loss then collapsed the maps); eps 1e-6, since its maps collapse early in training (0 / 0 without it); the
#: self-similarity read by the predictor. Its image score stays the predictor's: ``calibrated_fusion`` gained on pcb /
#: round_part but not on the validation splits (docs/model.md, 'Settings that differ from the release').
TINY_EXPERT: dict[str, Any] = {"embed_dim": 64, "temperature": 10.0, "eps": 1e-6,
                               "image_score": "predictor", "self_similarity": True}
PRETRAINED_EXPERT: dict[str, Any] = {"embed_dim": 512, "temperature": 100.0, "eps": 0.0, "image_score": "predictor",
                                     "self_similarity": False}
#: The suspicious-level phrase's (low, high) per preset family (``params.model.suspicious_thresholds`` overrides).
#: Pretrained: the release's 0.3 / 0.7. Tiny: "slightly" below 0.5, the expert's own verdict threshold
#: (``evaluate.threshold``), "highly" from 0.75. The tiny LLM learns its Yes / No from that word alone (it does not
#: read the anomaly tokens well enough), so the word in the middle goes to whichever answer its training images
#: in that band mostly have: with 0.3 / 0.7 the model said "Yes" only from 0.7, with 0.25 / 0.5 from 0.25. With the
#: middle band above the verdict threshold, its Yes / No is the expert's verdict.
TINY_SUSPICIOUS_THRESHOLDS: tuple[float, float] = (0.5, 0.75)
PRETRAINED_SUSPICIOUS_THRESHOLDS: tuple[float, float] = RELEASE_SUSPICIOUS_THRESHOLDS
#: Qwen2 text configs of the released LLaVA-OneVision checkpoints (for the shapes-only models). The vocabularies are
#: llava-hf's: Qwen2's embedding (151936 / 152064 rows) + <image>/<video>, padded to a multiple of 64.
QWEN2_TEXT: dict[str, dict[str, Any]] = {
    "llava-onevision-0.5b": {
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "vocab_size": 152000, "max_position_embeddings": 32768,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
    },
    "llava-onevision-7b": {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152128, "max_position_embeddings": 32768,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
    },
}
EXPERT_STAGE_FILES = {"expert": "pretrained_expert.pth", "tower": "vision_tower.safetensors", "config": "expert.json"}


# ------------------------------------------------------------------------------------------------ settings
def expert_config(params: Params) -> dict[str, Any]:
    """``AnomalyExpert`` keyword arguments of ``params``: the preset family's, overridden by ``model.expert``'s
    non-null fields. The expert's temperature lives here alone: it is part of the model's maths (training and
    inference use the same one), so no training recipe sets it."""
    defaults = TINY_EXPERT if params.model.preset == "tiny" else PRETRAINED_EXPERT
    return {**defaults, **params.model.expert.model_dump(exclude_none=True)}


def suspicious_thresholds(params: Params) -> tuple[float, float]:
    """(low, high) of the suspicious-level phrase: ``model.suspicious_thresholds``, or the preset family's."""
    if params.model.suspicious_thresholds is not None:
        low, high = params.model.suspicious_thresholds
        return float(low), float(high)
    return TINY_SUSPICIOUS_THRESHOLDS if params.model.preset == "tiny" else PRETRAINED_SUSPICIOUS_THRESHOLDS


def model_settings(params: Params) -> dict[str, Any]:
    """The fields of ``AnomalyOVConfig`` that come from ``params.model`` (same names there and here)."""
    return {
        "expert_config": expert_config(params),
        "suspicious_thresholds": list(suspicious_thresholds(params)),
    }


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Make sure the placeholders exist (adds <adv>/<anomaly>/<image> to a Qwen tokenizer); returns it."""
    vocab = tokenizer.get_vocab()  # once: a dict of Qwen2's 151k tokens takes most of a second to build
    missing = [t for t in (IMAGE_TOKEN, ADV_TOKEN, ANOMALY_TOKEN) if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_settings(tokenizer: Any) -> dict[str, Any]:
    """Placeholder ids and the adverbs' ids for the config."""
    vocab = tokenizer.get_vocab()
    ids = {name: vocab[name] for name in (IMAGE_TOKEN, VIDEO_TOKEN, ADV_TOKEN, ANOMALY_TOKEN) if name in vocab}
    adverbs = [tokenizer.encode(" " + w, add_special_tokens=False) for w in ADVERB_WORDS]
    for word, toks in zip(ADVERB_WORDS, adverbs, strict=True):
        if len(toks) != 1:
            logger.warning("' %s' is %d tokens; its phrase embedding is their mean", word, len(toks))
    out = {
        "image_token_index": ids[IMAGE_TOKEN],
        "adverb_token_index": ids[ADV_TOKEN],
        "anomaly_token_index": ids[ANOMALY_TOKEN],
        "adverb_token_ids": adverbs,
    }
    if VIDEO_TOKEN in ids:
        out["video_token_index"] = ids[VIDEO_TOKEN]
    return out


def _set_generation_ids(model: AnomalyOVForConditionalGeneration, tokenizer: Any) -> None:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = im_end if im_end is not None and im_end != tokenizer.unk_token_id else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False


# ------------------------------------------------------------------------------------------------ tiny
def tiny_config(tokenizer: Any, params: Params | None = None):
    """The tiny preset's AnomalyOVConfig sized to ``tokenizer``."""
    from transformers import Qwen2Config, SiglipVisionConfig

    from anomaly_ov.config import Params
    from anomaly_ov.model.modeling import AnomalyOVConfig

    params = params or Params()
    vision = SiglipVisionConfig(**TINY_VISION)
    text = Qwen2Config(
        **TINY_TEXT,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        bos_token_id=None,
    )
    return AnomalyOVConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=[list(p) for p in TINY_PINPOINTS],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=True,
        **token_settings(tokenizer),
        **model_settings(params),
    )


def tiny_image_processor():
    """The tiny preset's image processor: 128 px crops, its pinpoints, transformers' class defaults otherwise."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    return LlavaOnevisionImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_grid_pinpoints=[list(p) for p in TINY_PINPOINTS],
    )


# --------------------------------------------------------------------------------------------- pretrained
def _checkpoint(params: Params) -> str:
    return params.model.checkpoint or HUB_IDS[params.model.preset]


def _load_pretrained_base(params: Params):
    """(model, tokenizer, image_processor) from a llava-hf LLaVA-OneVision checkpoint + a fresh expert."""
    from transformers import AutoTokenizer, LlavaOnevisionConfig

    from anomaly_ov.model.expert import load_expert_weights
    from anomaly_ov.model.modeling import AnomalyOVConfig, AnomalyOVForConditionalGeneration

    source = _checkpoint(params)
    try:
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        base_cfg = LlavaOnevisionConfig.from_pretrained(source)
        image_processor = image_processor_for(params)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load LLaVA-OneVision checkpoint {source!r} ({exc}). Set model.checkpoint to a local copy of "
            f"{HUB_IDS[params.model.preset]} (offline runs cannot reach the hub)."
        ) from exc
    config = AnomalyOVConfig.from_llava_config(base_cfg, **token_settings(tokenizer), **model_settings(params))
    model = AnomalyOVForConditionalGeneration.from_pretrained(source, config=config, dtype="auto")
    if len(tokenizer) > next(model.get_input_embeddings().parameters()).shape[0]:  # (the embedding matrix's rows)
        model.resize_token_embeddings(len(tokenizer))
    model.reset_expert()
    if params.model.expert_checkpoint:
        load_expert_weights(model.anomaly_expert, params.model.expert_checkpoint)
    _set_generation_ids(model, tokenizer)
    return model, tokenizer, image_processor


VISION_TOWER_PREFIXES = ("vision_tower.", "model.vision_tower.")


def _checkpoint_file(source: str, filename: str) -> Path | None:
    """``filename`` of a local checkpoint directory or a hub id (from the cache offline); None when absent."""
    if Path(source).is_dir():
        path = Path(source) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename))
    except EntryNotFoundError:
        return None


def read_vision_tower_state(source: str) -> dict[str, Any]:
    """The vision tower's tensors of a llava-hf checkpoint, read selectively from its safetensors (no other key is
    read), named as ``SiglipVisionModel`` names them (``vision_model.*``). Both key layouts: the hub's
    ``vision_tower.*`` and ``save_pretrained``'s ``model.vision_tower.*``."""
    from safetensors import safe_open

    index = _checkpoint_file(source, "model.safetensors.index.json")
    if index is not None:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    else:
        single = _checkpoint_file(source, "model.safetensors")
        if single is None:
            raise FileNotFoundError(f"{source}: neither model.safetensors nor model.safetensors.index.json found")
        with safe_open(str(single), framework="pt") as handle:
            weight_map = {key: "model.safetensors" for key in handle.keys()}  # noqa: SIM118 (not a dict)
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        if key.startswith(VISION_TOWER_PREFIXES):
            shards.setdefault(shard, []).append(key)
    if not shards:
        raise FileNotFoundError(f"{source}: the checkpoint has no vision tower weights (keys {VISION_TOWER_PREFIXES})")
    state: dict[str, Any] = {}
    for shard, keys in shards.items():
        path = _checkpoint_file(source, shard)
        if path is None:
            raise FileNotFoundError(f"{source}: shard {shard} named by the index is missing")
        with safe_open(str(path), framework="pt") as handle:
            for key in keys:
                name = next(key[len(p) :] for p in VISION_TOWER_PREFIXES if key.startswith(p))
                state[name] = handle.get_tensor(key)
    return state


def _tower_names(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """Checkpoint tower keys under the tower's own names: the hub stores ``vision_model.embeddings...`` while
    transformers 5's ``SiglipVisionModel`` says ``embeddings...`` (its loader maps one to the other; so does this)."""
    inner = "vision_model."
    renamed = {}
    for key, value in state.items():
        if key not in expected and key.startswith(inner) and key[len(inner) :] in expected:
            key = key[len(inner) :]
        elif key not in expected and inner + key in expected:
            key = inner + key
        renamed[key] = value
    return renamed


def load_vision_tower(source: str, vision_config: Any):
    """``SiglipVisionModel`` (``AutoModel`` of ``vision_config``) with the checkpoint's tower weights, in the
    checkpoint's dtype, frozen and in eval mode."""
    from transformers import AutoModel
    from transformers.initialization import no_init_weights

    state = read_vision_tower_state(source)
    with no_init_weights():
        tower = AutoModel.from_config(vision_config)
    state = _tower_names(state, set(tower.state_dict()))
    result = tower.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"{source}: the vision tower lacks weights {result.missing_keys[:5]} "
                         f"({len(result.missing_keys)} missing); is this a LLaVA-OneVision checkpoint?")
    if result.unexpected_keys:
        logger.info("%s: vision tower keys not used by the tower: %s", source, result.unexpected_keys[:5])
    tower.to(next(iter(state.values())).dtype)
    return tower.eval().requires_grad_(False)


def build_expert_model(params: Params):
    """Stage 1's model: the tiny preset's whole model (its tower trains with the expert, from scratch); for a
    pretrained preset an :class:`~anomaly_ov.model.modeling.AnomalyExpertModel` with the checkpoint's vision tower
    alone (read selectively: the LLM is never loaded) and the expert, from ``model.expert_checkpoint`` when set.
    Its stage-1 artifact (:func:`save_expert_stage`) loads into the whole model."""
    if params.model.preset == "tiny":
        from anomaly_ov.model.tokenizer import train_tokenizer

        return build_model(params, tokenizer=train_tokenizer(()))
    from transformers import LlavaOnevisionConfig

    from anomaly_ov.model.expert import load_expert_weights
    from anomaly_ov.model.modeling import AnomalyExpertModel, AnomalyOVConfig

    source = _checkpoint(params)
    try:
        base_cfg = LlavaOnevisionConfig.from_pretrained(source)
    except OSError as exc:
        raise FileNotFoundError(
            f"cannot load LLaVA-OneVision checkpoint {source!r} ({exc}). Set model.checkpoint to a local copy of "
            f"{HUB_IDS[params.model.preset]} (offline runs cannot reach the hub)."
        ) from exc
    config = AnomalyOVConfig.from_llava_config(base_cfg, **model_settings(params))
    model = AnomalyExpertModel(config, load_vision_tower(source, config.vision_config))
    if params.model.expert_checkpoint:
        load_expert_weights(model.anomaly_expert, params.model.expert_checkpoint)
    return model


def build_shapes_only(
    preset: str = "llava-onevision-0.5b",
    params: Params | None = None,
    text_overrides: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
):
    """The preset's architecture from config with random weights (no download, no tokenizer).

    Placeholder ids are the llava-hf ones (<image> 151646) plus 151648 (<anomaly>) and 151649 (<adv>); the adverb
    ids are arbitrary (shapes only). The vision tower is LLaVA-OneVision's default (SigLIP so400m at 384 px / patch
    14, 26 layers) with the release's grid pinpoints. ``text_overrides`` / ``vision_overrides`` change config fields
    (e.g. fewer layers for a CPU smoke run of a benchmark).
    """
    from transformers import Qwen2Config, SiglipVisionConfig

    from anomaly_ov.config import Params
    from anomaly_ov.model.modeling import AnomalyOVConfig, AnomalyOVForConditionalGeneration, sub_config

    if preset not in QWEN2_TEXT:
        raise ValueError(f"no shapes-only build for preset {preset!r}; choose one of {sorted(QWEN2_TEXT)}")
    params = params or Params.model_validate({"model": {"preset": preset}})
    vision = None
    if vision_overrides:
        vision = SiglipVisionConfig(**{**sub_config(AnomalyOVConfig().vision_config).to_dict(), **vision_overrides})
    config = AnomalyOVConfig(
        text_config=Qwen2Config(**{**QWEN2_TEXT[preset], **(text_overrides or {})}),
        vision_config=vision,
        image_token_index=151646,
        video_token_index=151647,
        anomaly_token_index=151648,
        adverb_token_index=151649,
        adverb_token_ids=[[1], [2], [3]],
        **model_settings(params),
    )
    return AnomalyOVForConditionalGeneration(config)


# --------------------------------------------------------------------------------------------------- API
def build_model(params: Params, tokenizer: Any = None, config_only: bool = False) -> AnomalyOVForConditionalGeneration:
    """The model for ``params.model.preset`` (tiny: random init sized to ``tokenizer``; else the checkpoint).

    ``config_only=True`` with a pretrained preset builds its architecture with random weights (no download, see
    :func:`build_shapes_only`).
    """
    from anomaly_ov.model.modeling import AnomalyOVForConditionalGeneration
    from anomaly_ov.model.tokenizer import train_tokenizer

    if config_only and params.model.preset != "tiny":
        return build_shapes_only(params.model.preset, params)

    if params.model.preset == "tiny":
        tokenizer = tokenizer or train_tokenizer(())
        model = AnomalyOVForConditionalGeneration(tiny_config(tokenizer, params))
        _set_generation_ids(model, tokenizer)
        if params.model.expert_checkpoint:
            from anomaly_ov.model.expert import load_expert_weights

            load_expert_weights(model.anomaly_expert, params.model.expert_checkpoint)
        return model
    model, _, _ = _load_pretrained_base(params)
    return model


def image_processor_for(params: Params):
    """The image processor of ``params.model.preset``: the one place the pipeline makes one for a preset.

    tiny: :func:`tiny_image_processor`; a pretrained preset: the checkpoint's own ``preprocessor_config.json``
    (``params.model.checkpoint``; SigLIP mean/std 0.5 for llava-hf LLaVA-OneVision), never class defaults. Stage 1,
    stage 2 (which saves it beside the model, where evaluation, predict and serving read it back) take it from here.
    """
    if params.model.preset == "tiny":
        return tiny_image_processor()
    from anomaly_ov.model.processing import load_image_processor

    return load_image_processor(_checkpoint(params))


def _is_tiny_architecture(cfg: Any) -> bool:
    return (
        cfg.vision_config.image_size == TINY_IMAGE_SIZE
        and cfg.vision_config.patch_size == TINY_PATCH
        and [list(p) for p in cfg.image_grid_pinpoints] == TINY_PINPOINTS
    )


def processor_for(model: AnomalyOVForConditionalGeneration, tokenizer: Any, image_processor: Any = None):
    """An AnomalyOVProcessor matching ``model``'s tower grid and AnyRes settings.

    ``image_processor``: :func:`image_processor_for` (params) of the model's preset; it may be left out only for a
    tiny-preset model (then the tiny one). A pretrained model's image processor is read from its checkpoint, so
    leaving it out there is an error rather than a silent fall-back to class defaults (CLIP's mean/std).
    """
    from anomaly_ov.model.processing import AnomalyOVProcessor

    cfg = model.config
    if image_processor is None:
        if not _is_tiny_architecture(cfg):
            raise ValueError(
                "processor_for(model, tokenizer) without image_processor works only for the tiny preset; pass "
                "image_processor=image_processor_for(params) (the checkpoint's preprocessor_config.json)"
            )
        image_processor = tiny_image_processor()
    return AnomalyOVProcessor(
        prepare_tokenizer(tokenizer),
        image_processor,
        num_image_tokens=cfg.grid_size**2,
        vision_aspect_ratio=cfg.vision_aspect_ratio,
        num_pooling_tokens=model.anomaly_expert.num_pooling_tokens,
        max_image_side=None if _is_tiny_architecture(cfg) else RELEASE_MAX_IMAGE_SIDE,
    )


def build_processor(params: Params, tokenizer: Any = None) -> AnomalyOVProcessor:
    """The processor for ``params.model.preset`` (tiny: needs the tokenizer the model was built with)."""
    from anomaly_ov.model.modeling import sub_config
    from anomaly_ov.model.processing import AnomalyOVProcessor

    if params.model.preset == "tiny":
        if tokenizer is None:
            raise ValueError("the tiny preset's processor needs the tokenizer its model was built with")
        g = TINY_IMAGE_SIZE // TINY_PATCH
        return AnomalyOVProcessor(prepare_tokenizer(tokenizer), image_processor_for(params), num_image_tokens=g * g)
    from transformers import AutoTokenizer, LlavaOnevisionConfig

    source = _checkpoint(params)
    tokenizer = prepare_tokenizer(tokenizer or AutoTokenizer.from_pretrained(source))
    image_processor = image_processor_for(params)
    cfg = LlavaOnevisionConfig.from_pretrained(source)
    vision = sub_config(cfg.vision_config)
    grid = vision.image_size // vision.patch_size
    return AnomalyOVProcessor(
        tokenizer, image_processor, num_image_tokens=grid * grid, vision_aspect_ratio=cfg.vision_aspect_ratio,
        max_image_side=RELEASE_MAX_IMAGE_SIDE,
    )


def save_pretrained(model: AnomalyOVForConditionalGeneration, processor: AnomalyOVProcessor, directory) -> Path:
    """Whole model (config with expert settings, safetensors) + processor files, atomically, into ``directory``."""
    from anomaly_ov.io import atomic_dir

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return directory


def load_pretrained(directory, device: str = "cpu", dtype: Any = None):
    """(model, processor) from a directory written by :func:`save_pretrained` (no network)."""
    from anomaly_ov.model.modeling import AnomalyOVForConditionalGeneration
    from anomaly_ov.model.processing import AnomalyOVProcessor

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json: not a saved Anomaly-OV model directory")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AnomalyOVForConditionalGeneration.from_pretrained(directory, **kwargs)
    # transformers wraps PreTrainedModel.to in a decorator whose stub mypy reads as taking the model twice
    model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, AnomalyOVProcessor.from_pretrained(directory)


# -------------------------------------------------------------------------------------------- stage 1 I/O
def save_expert_stage(model: Any, directory, include_tower: bool | None = None) -> Path:
    """Stage-1 artifact: the expert state dict (release key names, ``pretrained_expert.pth``), the vision tower
    (``vision_tower.safetensors``; default: only for the tiny preset, whose tower is trained) and ``expert.json``."""
    import torch
    from safetensors.torch import save_file

    from anomaly_ov.io import atomic_dir

    directory = Path(directory)
    cfg = model.config
    if include_tower is None:
        include_tower = cfg.vision_config.hidden_size != 1152
    info = {
        "expert": model.anomaly_expert.config_dict(),
        "expert_layers": list(cfg.expert_layers),
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_config": cfg.vision_config.to_dict(),
        "includes_vision_tower": bool(include_tower),
    }
    with atomic_dir(directory) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.anomaly_expert.state_dict().items()}
        torch.save(state, tmp / EXPERT_STAGE_FILES["expert"])
        if include_tower:
            tower = {k: v.detach().cpu().contiguous() for k, v in model.expert_tower.state_dict().items()}
            save_file(tower, str(tmp / EXPERT_STAGE_FILES["tower"]))
        (tmp / EXPERT_STAGE_FILES["config"]).write_text(json.dumps(info, indent=2, default=str))
    return directory


def load_expert_stage(model: Any, directory) -> dict[str, Any]:
    """Load a stage-1 artifact into ``model`` (expert strictly; the tower too when saved). Returns expert.json."""
    from safetensors.torch import load_file

    from anomaly_ov.model.expert import ExpertWeightsError, load_expert_weights

    directory = Path(directory)
    info_file = directory / EXPERT_STAGE_FILES["config"]
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file} is missing: {directory} is not a stage-1 expert artifact")
    info = json.loads(info_file.read_text())
    if list(info.get("expert_layers", [])) != list(model.config.expert_layers):
        raise ExpertWeightsError(
            f"{directory}: trained on tower layers {info.get('expert_layers')} but the model uses "
            f"{model.config.expert_layers}"
        )
    load_expert_weights(model.anomaly_expert, directory / EXPERT_STAGE_FILES["expert"], strict=True)
    saved_temperature = info.get("expert", {}).get("temperature")
    if saved_temperature is not None and saved_temperature != model.anomaly_expert.temperature:
        logger.warning(
            "expert trained at temperature %s, model configured with %s; using the trained one",
            saved_temperature, model.anomaly_expert.temperature,
        )
        model.anomaly_expert.temperature = float(saved_temperature)
        model.config.expert_config = {**model.config.expert_config, "temperature": float(saved_temperature)}
    if info.get("includes_vision_tower"):
        tower_file = directory / EXPERT_STAGE_FILES["tower"]
        state = load_file(str(tower_file))
        result = model.expert_tower.load_state_dict(state, strict=True)
        logger.info("vision tower loaded from %s (%s)", tower_file, result)
    return info
