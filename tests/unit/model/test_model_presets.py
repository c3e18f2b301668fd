"""Presets: the pretrained path on a local llava-hf style checkpoint (legacy key layout), shapes-only builds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from anomaly_ov.config import Params
from anomaly_ov.model.expert import AnomalyExpert, count_parameters
from anomaly_ov.model.presets import (
    TINY_EXPERT,
    TINY_PINPOINTS,
    TINY_SUSPICIOUS_THRESHOLDS,
    TINY_TEXT,
    TINY_VISION,
    build_model,
    build_processor,
    build_shapes_only,
    expert_config,
    model_settings,
    suspicious_thresholds,
    tiny_image_processor,
)

from .conftest import make_image

LEGACY = [  # transformers' current key prefixes -> the layout of the llava-hf checkpoints on the hub
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
]


def _legacy_checkpoint(directory, tok):
    """A small plain LLaVA-OneVision saved like llava-hf/llava-onevision-qwen2-*-ov-hf (old key names)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    vocab = tok.get_vocab()
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**TINY_VISION),
        text_config=Qwen2Config(**{**TINY_TEXT, "tie_word_embeddings": False}, vocab_size=len(tok)),
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        image_grid_pinpoints=[list(p) for p in TINY_PINPOINTS],
    )
    torch.manual_seed(3)
    plain = LlavaOnevisionForConditionalGeneration(config)
    plain.save_pretrained(directory)
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    renamed = {}
    for key, value in state.items():
        for new, old in LEGACY:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        renamed[key] = value
    assert any(k.startswith("language_model.model.") for k in renamed)
    save_file(renamed, str(weights), metadata={"format": "pt"})
    tok.save_pretrained(directory)
    tiny_image_processor().save_pretrained(directory)
    return plain


def test_pretrained_preset_loads_a_local_llava_checkpoint(tiny_parts, tmp_path):
    _, tok, _, _ = tiny_parts
    plain = _legacy_checkpoint(tmp_path / "llava", tok)
    expert_file = tmp_path / "pretrained_expert_tiny.pth"
    reference_expert = AnomalyExpert(hidden_size=64, embed_dim=512, grid_size=16)
    torch.save(reference_expert.state_dict(), expert_file)
    params = Params(
        model={"preset": "llava-onevision-0.5b", "checkpoint": str(tmp_path / "llava"),
               "expert_checkpoint": str(expert_file)}
    )
    model = build_model(params).eval()
    assert model.config.expert_config["temperature"] == 100.0  # the pretrained presets' (the release)
    assert model.config.suspicious_thresholds == [0.3, 0.7]  # the release's phrase
    assert model.config.expert_layers == [1, 2, 3, 4]
    for (name, a), (_, b) in zip(plain.model.language_model.state_dict().items(),
                                 model.model.language_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    torch.testing.assert_close(plain.model.image_newline, model.model.image_newline)
    for key, value in reference_expert.state_dict().items():
        assert torch.equal(model.anomaly_expert.state_dict()[key], value), key
    proc = build_processor(params)
    inputs = proc([make_image(128, 256)], [{"from": "human", "value": "<image>\nAny defect?"}])
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all() and out.anomaly_scores.shape == (1, 1)


def test_missing_checkpoint_names_the_setting(tmp_path):
    params = Params(model={"preset": "llava-onevision-0.5b", "checkpoint": str(tmp_path / "nowhere")})
    with pytest.raises((FileNotFoundError, OSError), match="nowhere"):
        build_model(params)


def test_shapes_only_half_billion_on_meta():
    with torch.device("meta"):
        model = build_shapes_only("llava-onevision-0.5b")
    cfg = model.config
    assert cfg.expert_layers == [7, 13, 19, 25] and cfg.llm_layer_index == 26 and cfg.grid_size == 27
    assert model.anomaly_expert.temperature == 100.0
    assert model.anomaly_expert.eps == 0.0 and cfg.expert_config["eps"] == 0.0  # the release maths
    assert 7.0e6 < count_parameters(model.anomaly_expert) < 7.2e6
    assert 0.85e9 < count_parameters(model) < 0.95e9


@pytest.mark.parametrize(("llm_layer", "levels"), [
    (26, [7, 13, 19, 25]),  # SigLIP so400m as the release taps it
    (6, [2, 3, 4, 5]),
    (5, [1, 2, 3, 4]),
    (4, [1, 2, 3, 4]),  # the tiny preset: too shallow for four layers below the LLM one, so that one joins
    (2, [1, 2, 2, 2]),
])
def test_default_expert_layers_are_distinct_where_the_tower_allows(llm_layer, levels):
    from anomaly_ov.model.modeling import default_expert_layers

    assert default_expert_layers(llm_layer) == levels
    with pytest.raises(ValueError, match="at least 2 layers"):
        default_expert_layers(1)


def test_model_expert_params_are_the_expert_constructor_arguments():
    """params.model.expert's fields are AnomalyExpert's keyword arguments: the model config holds them as they are
    and the model's expert is AnomalyExpert(**them); the expert's temperature has one owner (model.expert, else the
    preset's), at training and at inference alike."""
    import inspect

    arguments = set(inspect.signature(AnomalyExpert).parameters)
    assert set(Params().model.expert.model_dump()) <= arguments
    params = Params(model={"expert": {"embed_dim": 32, "temperature": 7.0}})
    assert expert_config(params) == {"embed_dim": 32, "temperature": 7.0, "eps": 1e-6,
                                     "image_score": TINY_EXPERT["image_score"],
                                     "self_similarity": TINY_EXPERT["self_similarity"]}
    assert expert_config(Params())["temperature"] == 10.0
    assert expert_config(Params(model={"preset": "llava-onevision-7b"}))["temperature"] == 100.0
    with torch.device("meta"):
        model = build_shapes_only("llava-onevision-0.5b", params, text_overrides={"num_hidden_layers": 1})
    assert model.config.expert_config == expert_config(params)
    expert = model.anomaly_expert
    assert (expert.embed_dim, expert.temperature, expert.eps) == (32, 7.0, 1e-6)
    assert expert.config_dict() == {**expert_config(params), "hidden_size": 1152, "grid_size": 27, "num_levels": 4,
                                    "predictor_dim": 32, "num_pooling_tokens": 2}


def test_suspicious_thresholds_resolve_per_preset_and_refuse_unordered_pairs():
    """The phrase's (low, high): the release's 0.3 / 0.7 for pretrained presets; below the tiny preset's low is below
    the expert's verdict threshold (evaluate.threshold), since its LLM learns Yes / No from the word; an explicit pair
    wins; an unordered or out-of-range pair is refused with the key named."""
    from anomaly_ov.errors import ConfigError
    from anomaly_ov.model.processing import adverb_for_score

    tiny = Params()
    assert suspicious_thresholds(tiny) == TINY_SUSPICIOUS_THRESHOLDS
    assert TINY_SUSPICIOUS_THRESHOLDS[0] == tiny.evaluate.threshold
    assert suspicious_thresholds(Params(model={"preset": "llava-onevision-7b"})) == (0.3, 0.7)
    explicit = Params(model={"suspicious_thresholds": [0.2, 0.6]})
    assert suspicious_thresholds(explicit) == (0.2, 0.6)
    assert model_settings(explicit)["suspicious_thresholds"] == [0.2, 0.6]
    with torch.device("meta"):
        model = build_shapes_only("llava-onevision-0.5b", explicit, text_overrides={"num_hidden_layers": 1})
    assert model.config.suspicious_thresholds == [0.2, 0.6]
    assert model.adverb_index(torch.tensor([0.1, 0.2, 0.59, 0.6])).tolist() == [0, 1, 1, 2]
    assert [adverb_for_score(s, TINY_SUSPICIOUS_THRESHOLDS) for s in (0.49, 0.5, 0.75)] == [
        "slightly", "moderately", "highly"]
    for bad in ([0.7, 0.3], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises((ConfigError, ValueError), match="suspicious_thresholds"):
            Params.model_validate({"model": {"suspicious_thresholds": bad}})


def test_config_json_saved_with_the_old_expert_field_names_still_loads():
    """Models saved before the expert's settings became one dict (``expert_embed_dim``...) rebuild the same expert."""
    from anomaly_ov.model.modeling import AnomalyOVConfig

    old = AnomalyOVConfig(expert_embed_dim=64, expert_temperature=10.0, expert_eps=1e-6)
    assert old.expert_config == {"embed_dim": 64, "temperature": 10.0, "eps": 1e-6}
    again = AnomalyOVConfig.from_dict(old.to_dict())
    assert again.expert_config == old.expert_config and not hasattr(again, "expert_embed_dim")
