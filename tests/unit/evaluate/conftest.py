"""Evaluation test doubles: a tiny benchmark on disk, a fake predictor with the Predictor interface."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class FakePrediction:
    score: float
    label: str
    anomaly_map: np.ndarray
    answer: str | None


class FakePredictor:
    """Scores brightness: the synthetic defects are bright squares on a dark, noisy background."""

    def __init__(self, says_yes_above: float = 0.5) -> None:
        self.says_yes_above = says_yes_above
        self.chats: list[tuple[int, list[tuple[str, str]], str]] = []  # each conversation asked, in order
        self.batches: list[int] = []  # conversations per chat_batch call
        self.calls = 0

    def predict(self, images, question=None, generate=False, threshold=0.5, max_new_tokens=64):
        self.calls += 1
        out = []
        for img in images:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            score = float(arr.max())
            answer = None
            if generate:
                answer = "Yes, there is a defect." if score > self.says_yes_above else "No, there is no defect."
            out.append(FakePrediction(score, "anomaly" if score >= threshold else "normal", arr, answer))
        return out

    def chat_batch(self, conversations, max_new_tokens=128, batch_size=8):
        self.batches.append(len(conversations))
        answers = []
        for images, history, question in conversations:
            self.chats.append((len(images), list(history), question))
            answers.append(f"A bright square scratch near the centre (turn {len(history)}).")
        return answers


def make_benchmark(root: Path, categories=("pcb", "cap"), normal=3, anomalous=3, size=40, seed=0):
    """Images + masks under root/images, and root/bench/{test_data.json, visa_dr.json} with relative paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    test, dr = [], []
    for cat in categories:
        for i in range(normal + anomalous):
            anomaly = i >= normal
            img = (rng.random((size, size)) * 90).astype(np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            if anomaly:
                y, x = rng.integers(4, size - 14, 2)
                img[y : y + 8, x : x + 8] = 230
                mask[y : y + 8, x : x + 8] = 255
            if i == 0:
                img[0, 0] = 250  # one bright normal pixel: a false positive of the fake
            rel = f"images/{cat}/{'bad' if anomaly else 'good'}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([img] * 3, -1)).save(root / rel)
            mask_rel = ""
            if anomaly:
                mask_rel = f"images/{cat}/bad_{i}_mask.png"
                Image.fromarray(mask).save(root / mask_rel)
                dr.append({
                    "image": f"Synth/{cat}/bad_{i}.png", "file": rel, "mask": mask_rel, "category": cat,
                    "defect_type": "scratch",
                    "questions": ["What is the defect?", "Where is it?", "What could cause it?"],
                    "answers": ["A bright square scratch.", "Near the centre.", "Rough handling during assembly."],
                    "kinds": ["low_level", "low_level", "complex"],
                })
            test.append({"image": f"Synth/{cat}/{Path(rel).name}", "anomaly": anomaly, "file": rel,
                         "mask": mask_rel, "category": cat})
    bench = root / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "test_data.json").write_text(json.dumps(test))
    (bench / "visa_dr.json").write_text(json.dumps(dr))
    return test, dr


class WordOverlap:
    """Stands in for Sentence-BERT in fast tests: Jaccard overlap of lower-case words."""

    name = "word-overlap (test double)"

    def pairs(self, references, candidates):
        out = []
        for a, b in zip(references, candidates, strict=True):
            wa, wb = set(a.lower().split()), set(b.lower().split())
            out.append(len(wa & wb) / max(len(wa | wb), 1))
        return out



@pytest.fixture
def fake_predictor() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def benchmark(tmp_path: Path):
    """(workspace, test items, reasoning items) of a 2-class benchmark written under tmp_path."""
    test, dr = make_benchmark(tmp_path)
    return tmp_path, test, dr


@pytest.fixture
def word_overlap() -> WordOverlap:
    return WordOverlap()
