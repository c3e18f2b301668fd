"""anomaly_ov.serving with a stand-in predictor: JSON rows, overlay files, the chat loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.serving import chat_loop, load_predictor, overlay, predict_files


@dataclass
class Pred:
    score: float
    label: str
    anomaly_map: np.ndarray
    answer: str | None = None


class StubPredictor:
    """Scores by mean brightness; the map is the grey level, so overlays are checkable."""

    def predict(self, images, question=None, generate=False, threshold=0.5):
        out = []
        for img in images:
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            score = float(grey.mean())
            out.append(Pred(score, "anomaly" if score >= threshold else "normal", grey,
                            f"answer to {question}" if generate else None))
        return out

    def chat(self, images, history, question):
        return f"{len(history)}:{question}"


def _image(path, value):
    Image.new("RGB", (12, 8), (value, value, value)).save(path)
    return path


def test_predict_files_rows_and_overlays(tmp_path):
    bright, dark = _image(tmp_path / "b.png", 230), _image(tmp_path / "d.png", 20)
    rows = predict_files(StubPredictor(), [bright, dark], question="defect?", overlay_dir=tmp_path / "ov")
    assert [r["label"] for r in rows] == ["anomaly", "normal"]
    assert rows[0]["answer"] == "answer to defect?"
    with Image.open(rows[0]["overlay"]) as img:
        pixel = img.getpixel((3, 3))
    assert img.size == (12, 8) and pixel[0] > pixel[1]  # red where the map is high


def test_predict_files_names_missing_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        predict_files(StubPredictor(), [tmp_path / "nope.png"])


def test_overlay_leaves_zero_map_regions_unchanged():
    img = Image.new("RGB", (4, 4), (10, 20, 30))
    assert np.array_equal(np.asarray(overlay(img, np.zeros((2, 2)))), np.asarray(img))


def test_chat_loop_keeps_history_and_stops_on_quit(tmp_path):
    said: list[str] = []
    history = chat_loop(StubPredictor(), [tmp_path / "x.png"], ["Is it broken?\n", "\n", "Where?\n", "quit\n", "x"],
                        said.append)
    assert said == ["0:Is it broken?", "1:Where?"]
    assert history == [("Is it broken?", "0:Is it broken?"), ("Where?", "1:Where?")]


def test_load_predictor_names_the_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="anomaly-ov run"):
        load_predictor("models/anomaly_ov", workspace=tmp_path)
