"""The promotion rule and the pyfunc's input decoding, without an MLflow store."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from anomaly_ov.config import RegistryParams
from anomaly_ov.registry import decide, decode_image

REG = RegistryParams(thresholds={"zero_shot.image_auroc": 0.7, "detection.macro_f1": 0.5}, margin=0.01)


def test_first_model_that_passes_goes_to_production():
    decision = decide({"zero_shot.image_auroc": 0.8, "detection.macro_f1": 0.6}, REG, None)
    assert decision.verdict == "production"
    assert "no production" in decision.reason


def test_below_threshold_stays_candidate_and_names_the_metric():
    decision = decide({"zero_shot.image_auroc": 0.65, "detection.macro_f1": 0.6}, REG, None)
    assert decision.verdict == "candidate"
    assert "zero_shot.image_auroc=0.6500 < 0.7" in decision.reason


def test_missing_metric_is_a_failure_not_a_pass():
    decision = decide({"zero_shot.image_auroc": 0.9}, REG, None)
    assert decision.verdict == "candidate"
    assert "detection.macro_f1 missing" in decision.reason


def test_better_by_margin_replaces_production_worse_or_equal_does_not():
    prod = {"zero_shot.image_auroc": 0.80}
    better = decide({"zero_shot.image_auroc": 0.82, "detection.macro_f1": 0.6}, REG, prod)
    slightly = decide({"zero_shot.image_auroc": 0.805, "detection.macro_f1": 0.6}, REG, prod)
    equal = decide({"zero_shot.image_auroc": 0.80, "detection.macro_f1": 0.6}, REG, prod)
    worse = decide({"zero_shot.image_auroc": 0.75, "detection.macro_f1": 0.6}, REG, prod)
    assert better.verdict == "production" and better.production_primary == pytest.approx(0.80)
    assert [slightly.verdict, equal.verdict, worse.verdict] == ["staging", "staging", "staging"]
    assert "does not beat production" in worse.reason


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 6), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_image_accepts_base64_and_data_uris_but_no_paths_by_default(tmp_path):
    raw = _png_bytes()
    path = tmp_path / "x.png"
    path.write_bytes(raw)
    b64 = base64.b64encode(raw).decode()
    for value in (b64, "data:image/png;base64," + b64):
        img = decode_image(value)
        assert img.mode == "RGB" and img.size == (8, 6)
    with pytest.raises(ValueError, match="does not read file paths"):
        decode_image(str(path))


def test_decode_image_error_names_the_row():
    with pytest.raises(ValueError, match="row 0: not an image"):
        decode_image(base64.b64encode(b"plain text").decode())
