"""The promotion rule and the pyfunc's input decoding, without an MLflow store."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from anomaly_ov.config import RegistryParams
from anomaly_ov.registry import Evidence, decide, decode_image

REG = RegistryParams(thresholds={"zero_shot.image_auroc": 0.7, "detection.macro_f1": 0.5}, margin=0.01)
BENCH = Evidence("m" * 64, "b" * 64, images=100, anomalous=40, normal=60)


def test_first_model_that_passes_goes_to_production():
    decision = decide({"zero_shot.image_auroc": 0.8, "detection.macro_f1": 0.6}, REG, None, BENCH)
    assert decision.verdict == "production"
    assert "no production" in decision.reason


def test_below_threshold_stays_candidate_and_names_the_metric():
    decision = decide({"zero_shot.image_auroc": 0.65, "detection.macro_f1": 0.6}, REG, None, BENCH)
    assert decision.verdict == "candidate"
    assert "zero_shot.image_auroc=0.6500 < 0.7" in decision.reason


def test_missing_metric_is_a_failure_not_a_pass():
    decision = decide({"zero_shot.image_auroc": 0.9}, REG, None, BENCH)
    assert decision.verdict == "candidate"
    assert "detection.macro_f1 missing" in decision.reason


def test_better_by_margin_replaces_production_worse_or_equal_does_not():
    prod = {"zero_shot.image_auroc": 0.80}
    better = decide({"zero_shot.image_auroc": 0.82, "detection.macro_f1": 0.6}, REG, prod, BENCH, BENCH)
    slightly = decide({"zero_shot.image_auroc": 0.805, "detection.macro_f1": 0.6}, REG, prod, BENCH, BENCH)
    equal = decide({"zero_shot.image_auroc": 0.80, "detection.macro_f1": 0.6}, REG, prod, BENCH, BENCH)
    worse = decide({"zero_shot.image_auroc": 0.75, "detection.macro_f1": 0.6}, REG, prod, BENCH, BENCH)
    assert better.verdict == "production" and better.production_primary == pytest.approx(0.80)
    assert [slightly.verdict, equal.verdict, worse.verdict] == ["staging", "staging", "staging"]
    assert "does not beat production" in worse.reason


GOOD = {"zero_shot.image_auroc": 0.9, "detection.macro_f1": 0.6}


def test_metrics_from_a_handful_of_images_never_pass():
    tiny = Evidence("m" * 64, "b" * 64, images=4, anomalous=2, normal=2)
    decision = decide({"zero_shot.image_auroc": 1.0, "detection.macro_f1": 1.0}, REG, None, tiny)
    assert decision.verdict == "candidate"
    assert "evaluated on 4 images; registry.min_images is 30" in decision.reason
    assert "2 anomalous images; registry.min_per_label is 5" in decision.reason
    unknown = decide(GOOD, REG, None, Evidence())
    assert unknown.verdict == "candidate" and "counts.images" in unknown.reason


def test_production_without_the_primary_metric_is_not_replaced_automatically():
    for production in ({}, {"detection.macro_f1": 0.9}):  # changed primary_metric, null AUROC, hand-promoted
        decision = decide(GOOD, REG, production, BENCH, BENCH)
        assert decision.verdict == "staging"
        assert "production has no zero_shot.image_auroc recorded: automatic promotion refused" in decision.reason


def test_a_different_or_unknown_benchmark_is_not_a_comparison():
    other = Evidence("n" * 64, "c" * 64, images=100, anomalous=40, normal=60)
    for before in (other, Evidence()):
        decision = decide(GOOD, REG, {"zero_shot.image_auroc": 0.8}, BENCH, before)
        assert decision.verdict == "staging" and "is not a comparison" in decision.reason


def test_a_version_without_the_primary_metric_never_reaches_production():
    thresholds_without_primary = RegistryParams(thresholds={"detection.macro_f1": 0.5})
    decision = decide({"detection.macro_f1": 0.9}, thresholds_without_primary, None, BENCH)
    assert decision.verdict == "staging" and "zero_shot.image_auroc missing" in decision.reason


def test_a_null_metric_named_in_the_thresholds_fails_the_gate():
    from anomaly_ov.tracking import numeric_metrics

    raw = {"zero_shot.image_auroc": 0.9, "detection.macro_f1": None, "counts.images": 100}
    decision = decide(numeric_metrics(raw), REG, None, BENCH)
    assert decision.verdict == "candidate" and "detection.macro_f1 missing" in decision.reason


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


# ------------------------------------------------------------------------------------- extension thresholds
def _registered_workspace(tmp_path, extension_report: dict | None):
    """A workspace with a saved model (any files), its evaluation and, optionally, the medical extension's report."""
    import json

    from anomaly_ov.config import load_params
    from anomaly_ov.fingerprint import dir_sha256

    model = tmp_path / "models/anomaly_ov"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"weights")
    sha = dir_sha256(model)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps({
        "zero_shot.image_auroc": 0.9, "detection.macro_f1": 0.8, "provenance.model_sha256": sha,
        "provenance.benchmark_sha256": "b" * 64, "counts.images": 100, "counts.anomalous": 40, "counts.normal": 60}))
    if extension_report is not None:
        (tmp_path / "reports/extensions").mkdir()
        report = {key: (sha if value == "this model" else value) for key, value in extension_report.items()}
        (tmp_path / "reports/extensions/medical.json").write_text(json.dumps(report))
    params = load_params(None, ["tracking.enabled=false", "extensions.report_dir=reports/extensions",
                                "registry.thresholds={zero_shot.image_auroc: 0.7, "
                                "extensions.medical.zero_shot.image_auroc: 0.75}"])
    return params, sha


def test_a_threshold_on_an_extension_metric_reads_the_extension_report(tmp_path):
    import json

    from anomaly_ov.registry import extension_metrics, run_register

    params, sha = _registered_workspace(tmp_path, {"zero_shot.image_auroc": 0.8, "detection.macro_f1": 0.3,
                                                   "provenance.model_sha256": "this model"})
    values, notes = extension_metrics(params, tmp_path, sha)
    assert values == {"extensions.medical.zero_shot.image_auroc": 0.8}  # only what the params name
    assert notes["medical"].startswith("read from")
    decision = decide({"zero_shot.image_auroc": 0.9, **values}, params.registry, None, BENCH)
    assert decision.verdict == "production", decision.reason
    # the register stage passes it to the gate with the evaluation's metrics
    run_register(params, tmp_path)
    report = json.loads((tmp_path / params.registry.report).read_text())
    assert report["metrics"]["extensions.medical.zero_shot.image_auroc"] == 0.8


@pytest.mark.parametrize(("report", "why"), [
    (None, "not found: run `anomaly-ov stage extend_medical`"),
    ({"zero_shot.image_auroc": 0.8, "provenance.model_sha256": "0" * 64}, "measured another model"),
    ({"zero_shot.image_auroc": 0.8}, "measured an unknown model"),
])
def test_a_missing_or_stale_extension_report_fails_the_threshold_safe(tmp_path, report, why):
    from anomaly_ov.registry import extension_metrics

    params, sha = _registered_workspace(tmp_path, report)
    values, notes = extension_metrics(params, tmp_path, sha)
    assert values == {} and why in notes["medical"]
    decision = decide({"zero_shot.image_auroc": 0.9, **values}, params.registry, None, BENCH)
    assert decision.verdict == "candidate"
    assert "extensions.medical.zero_shot.image_auroc missing" in decision.reason
