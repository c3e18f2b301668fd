"""The release's image resize (longer side > 1024 -> 1024, other side truncated) for pretrained presets, on the real
384-px image processor with the (1x1)..(6x6) grid pinpoints of a llava-hf-layout checkpoint (tests/real_layout.py);
the tiny preset keeps images as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ov.model.predict import Predictor
from anomaly_ov.model.presets import RELEASE_MAX_IMAGE_SIDE, build_processor
from anomaly_ov.model.processing import AnomalyOVProcessor, fit_longest_side

from .conftest import make_image


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1500, 1000), (1024, 682)), ((1000, 1500), (682, 1024)), ((1025, 1025), (1024, 1024)),
     ((1024, 700), (1024, 700)), ((640, 480), (640, 480))],
)
def test_fit_longest_side_truncates_like_the_release(size, expected):
    image = make_image(size[1], size[0])
    assert fit_longest_side(image, 1024).size == expected
    assert fit_longest_side(image, None) is image


def test_pretrained_processor_resizes_a_visa_image_to_the_release_grid(real_layout_checkpoint, tmp_path):
    from real_layout import PINPOINTS, real_layout_params

    params = real_layout_params(real_layout_checkpoint)
    proc = build_processor(params)
    assert proc.image_processor.image_grid_pinpoints == PINPOINTS and proc.crop_size == 384
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
