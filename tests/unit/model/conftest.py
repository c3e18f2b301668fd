"""Shared tiny Anomaly-OV model for the model tests (built once per session; tests must not modify it in place)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the machine's 2 cores are shared, and oversubscription makes tiny models crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_parts():
    """(params, tokenizer, model, processor) of the tiny preset, random init, seed 0."""
    from anomaly_ov.config import Params
    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    params = Params()
    tok = train_tokenizer(["Yes, there is a scratch on the left.", "No, the object looks normal."] * 5)
    model = build_model(params, tok).eval()
    return params, tok, model, build_processor(params, tok)


def make_image(height: int, width: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def talkative(model, seed: int = 1):
    """``model`` with its LLM's weights drawn again at a larger scale (in place; returns it). A freshly initialised
    LLM answers the same token (a newline, stripped to "") to every prompt; these weights give each prompt its own
    tokens, so tests can compare answers that say something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "language_model" in name or "lm_head" in name:
                drawn = torch.randn(weight.shape, generator=generator) * (0.3 if weight.dim() > 1 else 1.0)
                weight.copy_(drawn.to(weight.dtype))
    return model
