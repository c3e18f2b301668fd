"""One image processor per preset: on a llava-hf checkpoint, stage 1 turns an image into the same pixels as evaluation
(the checkpoint's SigLIP mean/std 0.5, not transformers' class defaults, CLIP's; the release's 1024-px resize)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from real_layout import SIGLIP_MEAN, SIGLIP_STD, real_layout_params

from anomaly_ov.data.loaders import ExpertDataset
from anomaly_ov.evaluate.run import load_predictor
from anomaly_ov.model.presets import build_model, build_processor, processor_for, save_pretrained
from anomaly_ov.model.tokenizer import train_tokenizer
from anomaly_ov.train.expert import stage_preprocessor


def test_stage1_pixels_equal_evaluation_pixels_on_a_llava_checkpoint(real_layout_checkpoint, tmp_path):
    params = real_layout_params(real_layout_checkpoint)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1000, 1500, 3), dtype=np.uint8)).save(tmp_path / "part.png")

    # stage 1 as run_train_expert builds it: its tokenizer, the model, the preprocessor, the manifest dataset
    tokenizer = train_tokenizer(())
    model = build_model(params, tokenizer=tokenizer)
    preprocess = stage_preprocessor(params)
    assert list(preprocess.image_processor.image_mean) == SIGLIP_MEAN
    assert list(preprocess.image_processor.image_std) == SIGLIP_STD
    row = {"root": str(tmp_path), "image_path": "part.png", "mask_path": "", "label": "normal", "source": "s",
           "category": "c"}
    stage1 = ExpertDataset(pd.DataFrame([row]), tmp_path, preprocess, model.config.grid_size, 64)[0]

    # stage 2 saves the model with the preset's processor; evaluation loads the directory it wrote
    save_pretrained(model, build_processor(params), tmp_path / "anomaly_ov")
    predictor = load_predictor(tmp_path / "anomaly_ov", device="cpu")
    evaluated = predictor.processor.preprocess_images([tmp_path / "part.png"])

    assert stage1["image_size"] == (682, 1024)  # the release's resize (longer side 1024), as evaluation's
    assert torch.equal(stage1["pixel_values"], evaluated["pixel_values"][0])


def test_a_pretrained_model_needs_its_checkpoints_image_processor(real_layout_checkpoint):
    tokenizer = train_tokenizer(())
    model = build_model(real_layout_params(real_layout_checkpoint), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="image_processor_for"):
        processor_for(model, tokenizer)
