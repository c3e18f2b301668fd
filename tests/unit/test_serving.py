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

    def predict(self, images, question=None, generate=False, threshold=0.5, batch_size=8):
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


# ---------------------------------------------------------------------------------------- the served pyfunc
def _png_b64(value: int = 128, size: tuple[int, int] = (12, 8)) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class CountingPredictor(StubPredictor):
    """Records, for each predict call, how many images it got and how many had been decoded by then."""

    def __init__(self, decoded: list[int]) -> None:
        self.decoded = decoded
        self.calls: list[tuple[int, int]] = []

    def predict(self, images, question=None, generate=False, threshold=0.5, batch_size=8):
        self.calls.append((len(images), len(self.decoded)))
        return super().predict(images, question, generate, threshold, batch_size)


def _pyfunc(monkeypatch, env: dict[str, str] | None = None, predictor=None):
    from anomaly_ov import registry, serving

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    model = registry.AnomalyOVPyfunc()
    model.limits = serving.ServeLimits.from_env()
    model.predictor = predictor or StubPredictor()
    return model


def test_pyfunc_refuses_paths_unless_a_root_is_allowed(tmp_path, monkeypatch):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    picture = _image(tmp_path / "p.png", 200)
    with pytest.raises(MlflowException, match="does not read file paths") as refused:
        _pyfunc(monkeypatch).predict(None, pd.DataFrame({"image": [str(picture)]}))
    assert refused.value.get_http_status_code() == 400
    allowed = _pyfunc(monkeypatch, {"ANOMALY_OV_SERVE_ALLOWED_ROOTS": str(tmp_path)})
    out = allowed.predict(None, pd.DataFrame({"image": [str(picture)]}))
    assert out["label"].tolist() == ["anomaly"]


def test_pyfunc_decodes_one_batch_at_a_time(monkeypatch):
    import pandas as pd

    from anomaly_ov import serving

    decoded: list[int] = []
    real_open = serving.open_image
    monkeypatch.setattr(serving, "open_image", lambda *a, **k: decoded.append(1) or real_open(*a, **k))
    predictor = CountingPredictor(decoded)
    model = _pyfunc(monkeypatch, {"ANOMALY_OV_SERVE_BATCH_SIZE": "2"}, predictor)
    out = model.predict(None, pd.DataFrame({"image": [_png_b64(v) for v in (10, 250, 10, 250, 10)]}))
    assert out["label"].tolist() == ["normal", "anomaly", "normal", "anomaly", "normal"]
    assert predictor.calls == [(2, 2), (2, 4), (1, 5)]  # never more than one batch decoded ahead


def test_pyfunc_internal_errors_reach_the_client_without_traceback(monkeypatch, caplog):
    import pandas as pd
    from mlflow.exceptions import MlflowException

    class Broken(StubPredictor):
        def predict(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory at /opt/secret/path.py")

    with pytest.raises(MlflowException) as failed:
        _pyfunc(monkeypatch, predictor=Broken()).predict(None, pd.DataFrame({"image": [_png_b64()]}))
    body = failed.value.serialize_as_json()
    assert failed.value.get_http_status_code() == 500
    assert "/opt/secret" not in body and "Traceback" not in body and "ref " in body
    assert "/opt/secret" in caplog.text  # the operator still has it


def test_serve_limits_from_env_name_the_bad_variable(tmp_path):
    from anomaly_ov.serving import ServeLimits

    with pytest.raises(ValueError, match="ANOMALY_OV_SERVE_MAX_ROWS='lots'"):
        ServeLimits.from_env({"ANOMALY_OV_SERVE_MAX_ROWS": "lots"})
    with pytest.raises(ValueError, match="ALLOWED_ROOTS: 'relative'"):
        ServeLimits.from_env({"ANOMALY_OV_SERVE_ALLOWED_ROOTS": "relative"})
    limits = ServeLimits.from_env({"ANOMALY_OV_SERVE_ALLOWED_ROOTS": str(tmp_path), "ANOMALY_OV_SERVE_MAX_ROWS": "3"})
    assert limits.max_rows == 3 and limits.allowed_roots == (tmp_path.resolve(),)


def test_default_limits_refuse_a_60_mb_request():
    from anomaly_ov.serving import RequestError, ServeLimits, check_request

    with pytest.raises(RequestError, match="the limit is 33,554,432"):
        check_request(["A" * (60 * 1024 * 1024)], [None], ServeLimits())


def test_limit_body_answers_413_before_the_app_reads_a_large_body():
    import asyncio
    import json

    from anomaly_ov.serving import limit_body

    seen: list[bytes] = []

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = limit_body(inner, 10)

    def call(headers, chunks):
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return queue.pop(0)

        async def send(message):
            sent.append(message)

        asyncio.run(app({"type": "http", "headers": headers}, receive, send))
        return sent[0]["status"], json.loads(sent[1]["body"]) if sent[0]["status"] != 200 else sent[1]["body"]

    assert call([(b"content-length", b"100")], [b"x" * 100]) == (
        413, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "the request body has 100 bytes; this server takes "
                                                                 "at most 10"})
    assert call([], [b"x" * 6, b"x" * 6])[0] == 413  # chunked, no Content-Length: counted as it arrives
    assert seen == []  # the app never ran for either
    assert call([], [b"12", b"345"]) == (200, b"ok") and seen == [b"12345"]
