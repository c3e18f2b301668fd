"""The release's image resize (longer side > 1024 -> 1024, other side truncated) for pretrained presets, on the real
384-px image processor with the (1x1)..(6x6) grid pinpoints; the tiny preset keeps images as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ov.config import Params
from anomaly_ov.model.predict import Predictor
from anomaly_ov.model.presets import RELEASE_MAX_IMAGE_SIDE, build_processor
from anomaly_ov.model.processing import AnomalyOVProcessor, fit_longest_side

from .conftest import make_image

RELEASE_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]


def _release_like_checkpoint(directory, tok):
    """Config, tokenizer and the real 384-px SigLIP image processor of a llava-hf LLaVA-OneVision checkpoint
    (no weights: the processor alone is built from it)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    vocab = tok.get_vocab()
    LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64),
        text_config=Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                intermediate_size=64, vocab_size=len(tok)),
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        image_grid_pinpoints=RELEASE_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
    ).save_pretrained(directory)
    tok.save_pretrained(directory)
    LlavaOnevisionImageProcessorPil(
        size={"height": 384, "width": 384}, image_grid_pinpoints=RELEASE_PINPOINTS,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(directory)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1500, 1000), (1024, 682)), ((1000, 1500), (682, 1024)), ((1025, 1025), (1024, 1024)),
     ((1024, 700), (1024, 700)), ((640, 480), (640, 480))],
)
def test_fit_longest_side_truncates_like_the_release(size, expected):
    image = make_image(size[1], size[0])
    assert fit_longest_side(image, 1024).size == expected
    assert fit_longest_side(image, None) is image


def test_pretrained_processor_resizes_a_visa_image_to_the_release_grid(tiny_parts, tmp_path):
    _, tok, _, _ = tiny_parts
    _release_like_checkpoint(tmp_path / "llava", tok)
    params = Params(model={"preset": "llava-onevision-0.5b", "checkpoint": str(tmp_path / "llava")})
    proc = build_processor(params)
    assert proc.max_image_side == RELEASE_MAX_IMAGE_SIDE
    visa = make_image(1000, 1500)  # a VisA-sized image, width 1500, height 1000
    assert proc.crop_grid(1000, 1500) == (3, 4)  # what the full-size image would get
    pix = proc.preprocess_images([visa])
    assert pix["image_sizes"].tolist() == [[682, 1024]]
    assert proc.crop_grid(682, 1024) == (2, 3)
    assert pix["pixel_values"].shape[:3] == (1, 1 + 2 * 3, 3)  # base view + the 2 x 3 crops
    inputs = proc([visa], [{"from": "human", "value": "<image>\nAny defect?"}])
    layout = proc.layout(682, 1024)
    assert int((inputs["input_ids"] == proc.anomaly_token_id).sum()) == layout.anomaly == 1 + 4 + 4 * 7
    # the setting travels with a saved model directory (evaluation, predict and serving load it from there)
    proc.save_pretrained(tmp_path / "saved")
    assert AnomalyOVProcessor.from_pretrained(tmp_path / "saved").max_image_side == RELEASE_MAX_IMAGE_SIDE


def test_tiny_processor_does_not_resize(tiny_parts):
    _, _, _, proc = tiny_parts
    assert proc.max_image_side is None
    assert proc.preprocess_images([make_image(300, 1100)])["image_sizes"].tolist() == [[300, 1100]]


def test_predictor_feeds_the_resized_image_and_maps_back_to_the_original_size(tiny_parts):
    """predict() (detection, serving) and chat() (reasoning) share the processor's resize; maps keep the image size."""
    _, tok, model, proc = tiny_parts
    small = AnomalyOVProcessor(tok, proc.image_processor, num_image_tokens=proc.num_image_tokens, max_image_side=96)
    seen: list[list[int]] = []
    original = small.preprocess_images

    def spy(images):
        out = original(images)
        seen.append(out["image_sizes"].tolist())
        return out

    small.preprocess_images = spy
    predictor = Predictor(model, small)
    image = make_image(120, 240)
    with torch.no_grad():
        pred = predictor.predict([image], generate=True, max_new_tokens=1)[0]
        predictor.chat([image], [], "Any defect?", max_new_tokens=1)
    assert seen == [[[48, 96]], [[48, 96]]]
    assert pred.anomaly_map.shape == (120, 240) and np.isfinite(pred.anomaly_map).all()
