"""Every manifest and file check fails on a crafted bad input, with a message that names the file.

One "bad" workspace holds every problem in its own file (so a single validation run serves all the tests);
a clean workspace checks that nothing fires on good data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_ov.data.manifest import from_rows
from anomaly_ov.validate.report import ValidationReport
from anomaly_ov.validate.run import validate_manifest

# the clean and bad workspaces are validated once: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("validate_checks")

ROOT = "ds"
SIDE = 32  # the side of the images written by conftest.noise_image


K = None  # the conftest helpers (``kit`` fixture), set before any fixture of this module builds files


@pytest.fixture(scope="module", autouse=True)
def _kit(kit):
    global K
    K = kit


def noise_image(*args, **kwargs):
    return K.noise_image(*args, **kwargs)


def mask_image(*args, **kwargs):
    return K.mask_image(*args, **kwargs)


def row(*args, **kwargs):
    return K.row(*args, **kwargs)


def toy_params(*args, **kwargs):
    return K.toy_params(*args, **kwargs)


def _corrupt_png(path: Path, seed: int) -> Path:
    """A PNG whose header is intact but whose pixel data (IDAT) is damaged: the CRC check fails."""
    noise_image(path, seed)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    for i in range(start, start + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _truncated_jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _sixteen_bit(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.linspace(0, 65535, SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint16)
    Image.fromarray(values).save(path)  # uint16 -> mode I;16, a 16-bit grey PNG
    return path


def _grey_mask(path: Path) -> Path:
    """A soft mask: several non-zero grey levels (as an anti-aliased or JPEG-compressed mask has)."""
    pixels = np.zeros((SIDE, SIDE), dtype=np.uint8)
    pixels[8:16, 8:16] = 255
    pixels[7, 8:16] = 128
    pixels[16, 8:16] = 64
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path)
    return path


def _base_rows(base: Path, category: str, seed: int) -> list[dict]:
    """A healthy category: 3 normals and 1 anomaly with its mask."""
    rows = []
    for i in range(3):
        noise_image(base / category / f"good_{i}.png", seed + i)
        rows.append(row(f"{category}/good_{i}.png", ROOT, category))
    noise_image(base / category / "bad_0.png", seed + 9)
    mask_image(base / category / "bad_0_mask.png")
    rows.append(row(f"{category}/bad_0.png", ROOT, category, "anomaly", f"{category}/bad_0_mask.png"))
    return rows


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, pd.DataFrame, ValidationReport]:
    workspace = tmp_path_factory.mktemp("clean")
    base = workspace / ROOT
    rows = _base_rows(base, "widget", 0) + _base_rows(base, "gizmo", 100)
    # 0/1 masks are as good as 0/255 ones
    mask_image(base / "gizmo" / "bad_0_mask.png", value=1)
    frame = from_rows(rows)
    report = validate_manifest(frame, toy_params(), workspace)
    return workspace, frame, report


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, ValidationReport]:
    """Every problem once, each in its own file, in one workspace validated once."""
    workspace = tmp_path_factory.mktemp("bad")
    base = workspace / ROOT
    rows = _base_rows(base, "widget", 0)
    w = "widget"
    _corrupt_png(base / w / "corrupt.png", 1000)
    rows.append(row(f"{w}/corrupt.png", ROOT))
    _truncated_jpeg(base / w / "truncated.jpg", 1001)
    rows.append(row(f"{w}/truncated.jpg", ROOT))
    rows.append(row(f"{w}/missing.png", ROOT))  # never written
    noise_image(base / w / "cmyk.jpg", 1002, mode="CMYK")
    rows.append(row(f"{w}/cmyk.jpg", ROOT))
    _sixteen_bit(base / w / "deep.png")
    rows.append(row(f"{w}/deep.png", ROOT))
    noise_image(base / w / "small_mask.png", 1003)
    mask_image(base / w / "small_mask_mask.png", size=(SIDE // 2, SIDE // 2))
    rows.append(row(f"{w}/small_mask.png", ROOT, w, "anomaly", f"{w}/small_mask_mask.png"))
    noise_image(base / w / "soft.png", 1004)
    _grey_mask(base / w / "soft_mask.png")
    rows.append(row(f"{w}/soft.png", ROOT, w, "anomaly", f"{w}/soft_mask.png"))
    noise_image(base / w / "blank.png", 1005)
    mask_image(base / w / "blank_mask.png", empty=True)
    rows.append(row(f"{w}/blank.png", ROOT, w, "anomaly", f"{w}/blank_mask.png"))
    noise_image(base / w / "nomask.png", 1006)
    rows.append(row(f"{w}/nomask.png", ROOT, w, "anomaly", ""))
    noise_image(base / w / "masked_normal.png", 1007)
    mask_image(base / w / "masked_normal_mask.png")
    rows.append(row(f"{w}/masked_normal.png", ROOT, w, "normal", f"{w}/masked_normal_mask.png"))
    shutil.copy(base / w / "good_0.png", base / w / "copy_of_good_0.png")
    rows.append(row(f"{w}/copy_of_good_0.png", ROOT))
    noise_image(base / w / "mislabelled.png", 1008)
    rows.append(row(f"{w}/mislabelled.png", ROOT, label="defective"))
    noise_image(base / w / "nocat.png", 1009)
    rows.append(row(f"{w}/nocat.png", ROOT, category=None))
    noise_image(base / "leak" / "train_copy.png", 1010)
    rows.append(row("leak/train_copy.png", ROOT, "leak", role="train", source="aux"))
    rows.append(row("leak/train_copy_again.png", ROOT, "leak", role="train", source="aux"))
    shutil.copy(base / "leak" / "train_copy.png", base / "leak" / "train_copy_again.png")
    rows.append(row(f"{w}/good_1.png", ROOT))  # the same path listed twice
    # a category without any normal image (anomalies only)
    for i in range(2):
        noise_image(base / "lonely" / f"bad_{i}.png", 1020 + i)
        mask_image(base / "lonely" / f"bad_{i}_mask.png")
        rows.append(row(f"lonely/bad_{i}.png", ROOT, "lonely", "anomaly", f"lonely/bad_{i}_mask.png"))
    # an evaluation category without any anomaly image
    for i in range(2):
        noise_image(base / "calm" / f"good_{i}.png", 1030 + i)
        rows.append(row(f"calm/good_{i}.png", ROOT, "calm"))
    frame = pd.DataFrame(rows)  # not normalised: the null category must reach the checks
    # the copied eval image also appears in a training source: a zero-shot leak
    shutil.copy(base / w / "good_2.png", base / "leak" / "eval_copy.png")
    frame = pd.concat([frame, pd.DataFrame([row("leak/eval_copy.png", ROOT, "leak", role="train", source="aux")])])
    params = toy_params(
        {"name": "toy", "format": "mvtec", "path": "ds", "role": "eval", "categories": ["widget", "absent"]},
        {"name": "aux", "format": "mvtec", "path": "ds", "role": "train"},
    )
    return workspace, validate_manifest(frame.reset_index(drop=True), params, workspace)


def _failed(report: ValidationReport, name: str, severity: str) -> str:
    check = report.check(name)
    assert not check.passed, f"{name} should fail: {check.message}"
    assert check.severity == severity
    assert check.n_failing >= len(check.failing) >= 1
    return check.message + " " + str(check.failing)


# ------------------------------------------------------------------------------------------------ clean data
def test_clean_dataset_passes_every_check(clean):
    _, frame, report = clean
    failed = [(c.name, c.message) for c in report.checks if not c.passed]
    assert failed == []
    assert report.ok
    assert report.summary["rows"] == len(frame) == 8
    assert report.summary["files_checked"] == 8
    assert report.summary["critical_checks"] > 20 and report.summary["warning_checks"] >= 5


# ------------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize(
    ("file", "reason"),
    [("widget/corrupt.png", "corrupt data"), ("widget/truncated.jpg", "cannot decode"),
     ("widget/missing.png", "file not found")],
)
def test_unreadable_images_are_critical_and_named(bad, file, reason):
    workspace, report = bad
    text = _failed(report, "image_readable", "critical")
    assert file in text
    entry = next(e for e in report.check("image_readable").failing if e["file"].endswith(file))
    assert reason in entry["error"]
    assert report.check("image_readable").n_failing == 3


def test_cmyk_and_16_bit_images_are_converted_with_a_warning(bad):
    _, report = bad
    text = _failed(report, "image_mode", "warning")
    assert "CMYK" in text and "I;16" in text
    assert "widget/cmyk.jpg" in text and "widget/deep.png" in text
    assert any("CMYK" in n for n in report.notes) and any("I;16" in n for n in report.notes)


def test_mask_of_wrong_size_is_critical(bad):
    _, report = bad
    text = _failed(report, "mask_size_matches_image", "critical")
    assert "widget/small_mask_mask.png" in text
    assert report.check("mask_size_matches_image").failing[0]["mask_size"] == [SIDE // 2, SIDE // 2]


def test_non_binary_mask_is_a_warning(bad):
    _, report = bad
    text = _failed(report, "mask_binary", "warning")
    assert "widget/soft_mask.png" in text
    assert report.check("mask_binary").failing[0]["nonzero_levels"] == 3


def test_empty_anomaly_mask_is_critical(bad):
    _, report = bad
    assert "widget/blank_mask.png" in _failed(report, "anomaly_mask_not_empty", "critical")


def test_duplicate_images_are_found_by_pixels(bad):
    _, report = bad
    text = _failed(report, "duplicate_content", "warning")
    assert "copy_of_good_0.png" in text and "leak/train_copy_again.png" in text
    leak = _failed(report, "duplicate_across_roles", "critical")
    assert "leak/eval_copy.png" in leak and "widget/good_2.png" in leak
    assert "train_copy_again" not in leak  # both copies are in training sources: no leak


# ------------------------------------------------------------------------------------------------ table
def test_anomaly_without_mask_is_critical(bad):
    _, report = bad
    text = _failed(report, "anomaly_has_mask", "critical")
    assert "widget/nomask.png" in text
    assert report.check("anomaly_has_mask").n_failing == 1


def test_normal_with_mask_is_critical(bad):
    _, report = bad
    assert "widget/masked_normal.png" in _failed(report, "normal_has_no_mask", "critical")


def test_null_in_required_column_is_critical(bad):
    _, report = bad
    text = _failed(report, "not_null:category", "critical")
    assert "widget/nocat.png" in text


def test_bad_label_value_is_critical(bad):
    _, report = bad
    text = _failed(report, "values_in_set:label", "critical")
    assert "widget/mislabelled.png" in text and "defective" in text


def test_duplicate_path_is_critical(bad):
    _, report = bad
    assert "widget/good_1.png" in _failed(report, "unique_image_path", "critical")


def test_category_without_normal_and_eval_category_without_anomaly(bad):
    _, report = bad
    assert "toy/lonely" in _failed(report, "category_has_normal", "critical")
    no_anomaly = _failed(report, "eval_category_has_anomaly", "critical")
    assert "toy/calm" in no_anomaly
    assert "aux/leak" not in no_anomaly  # a training source needs no anomaly


def test_declared_but_empty_category_is_critical(bad):
    _, report = bad
    assert "toy/absent" in _failed(report, "declared_categories_present", "critical")


def test_bad_report_is_not_ok_and_names_files_in_its_summary(bad):
    _, report = bad
    assert not report.ok
    line = report.failure_summary()
    assert line.startswith(f"{len(report.critical_failures)} critical check(s) failed")
    assert "not_null:category" in line and "widget/nocat.png" in line
    assert report.summary["critical_failed"] == len(report.critical_failures) >= 10


def test_image_sides_out_of_bounds(tmp_path):
    base = tmp_path / ROOT
    frame = from_rows(_base_rows(base, "widget", 0))
    report = validate_manifest(frame, toy_params(min_image_side=40), tmp_path)
    assert "widget/good_0.png" in _failed(report, "width_in_bounds", "critical")
    assert "widget/good_0.png" in _failed(report, "decoded_size_in_bounds", "critical")


def test_missing_column_and_files_switch(tmp_path):
    frame = from_rows(_base_rows(tmp_path / ROOT, "widget", 0)).drop(columns=["label"])
    report = validate_manifest(frame, toy_params(check_files=False), tmp_path)
    assert "label" in _failed(report, "columns_present", "critical")
    assert report.summary["files_checked"] == 0
    assert not any(c.origin == "files" for c in report.checks)


def test_empty_manifest_is_critical(tmp_path):
    from anomaly_ov.data.manifest import empty_manifest

    report = validate_manifest(empty_manifest(), toy_params(), tmp_path)
    check = report.check("manifest_not_empty")
    assert not check.passed and check.severity == "critical" and "no image" in check.message
    assert not report.ok


def test_wrong_types_are_critical_and_named(tmp_path):
    frame = from_rows([row(f"widget/{i}.png", ROOT) for i in range(3)])
    frame["category"] = frame["category"].astype(object)
    frame.loc[1, "category"] = 7
    frame["width"] = frame["width"].astype(object)
    frame.loc[2, "width"] = "wide"
    report = validate_manifest(frame, toy_params(check_files=False), tmp_path)
    text = _failed(report, "column_types", "critical")
    assert "ds/widget/1.png" in text and "ds/widget/2.png" in text and "'category'" in text
    assert report.check("column_types").n_failing == 2
    bounds = report.check("width_in_bounds")  # GX cannot compare "wide" with numbers: reported, not raised
    assert not bounds.passed and "could not be evaluated" in bounds.message
