"""`anomaly-ov data validate` on datasets full of broken, oversized and escaping files: ONE report names every fault.

Each layout (MVTec, VisA, meta.json) is built in ``tmp_path`` with many different faults side by side; before
this hardening the first of them stopped the reader (exit 2, no report) or raised a traceback (a PNG declaring
100000 x 100000 pixels, a non-UTF-8 file name), and paths leaving the dataset passed unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hostile import (
    write_declared,
    write_empty,
    write_mask,
    write_png,
    write_random,
    write_real_large,
    write_truncated,
)
from typer.testing import CliRunner

from anomaly_ov.validate.report import read_report

# the 15000 px PNG is written once: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("hostile_dataset")

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes: not a valid UTF-8 file name


@pytest.fixture(scope="module")
def real_large(tmp_path_factory) -> Path:
    """A genuine 15000 x 15000 PNG (~120 KB), written once: decoding it would take seconds and 225 MB+."""
    return write_real_large(tmp_path_factory.mktemp("large") / "large.png", 15000)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    from anomaly_ov.cli import app

    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults (validate.max_image_side 8192)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["data", "validate", *args])


def _failing(report, name: str) -> str:
    check = report.check(name)
    assert not check.passed and check.severity == "critical", (name, check.message)
    return json.dumps(check.failing)


def _outside(tmp_path: Path) -> Path:
    return write_png(tmp_path / "elsewhere" / "secret.png")


def test_mvtec_dataset_with_every_fault_gets_one_report_naming_each(tmp_path, cli, real_large):
    cdir = tmp_path / "ds" / "widget"
    for i in range(3):
        write_png(cdir / "train" / "good" / f"{i:03d}.png")
    write_random(cdir / "train" / "good" / "random.png")
    write_empty(cdir / "train" / "good" / "zero.png")
    write_declared(cdir / "train" / "good" / "bomb.png", 100_000, 100_000)
    write_declared(cdir / "train" / "good" / "declared9k.png", 9000, 9000)
    shutil.copy(real_large, cdir / "train" / "good" / "large.png")
    write_truncated(cdir / "train" / "good" / "truncated.png")
    (cdir / "train" / "good" / "link.png").symlink_to(_outside(tmp_path))
    write_png(cdir / "train" / "good" / NON_UTF8)
    write_png(cdir / "test" / "good" / "000.png")
    for stem in ("000", "001", "003"):
        write_png(cdir / "test" / "crack" / f"{stem}.png")
    write_mask(cdir / "ground_truth" / "crack" / "000_mask.png")
    write_mask(cdir / "ground_truth" / "crack" / "001_mask.png", (20, 20))  # wrong size
    write_mask(cdir / "ground_truth" / "crack" / "002_mask.png")  # orphan
    write_png(cdir / "test" / "crack" / "004.png")  # no mask

    result = cli("ds", "--format", "mvtec")

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    report = read_report(tmp_path / "reports" / "validation.json")
    assert (tmp_path / "reports" / "validation.md").exists()
    opens = _failing(report, "image_opens")
    for name in ("random.png", "zero.png", "bomb.png", "declared9k.png", "large.png"):
        assert name in opens, name
    assert "100000" in opens and "9000 x 9000" in opens
    assert "truncated.png" in _failing(report, "image_readable")
    assert "link.png" in _failing(report, "path_inside_dataset")
    assert "caf\\\\xe9.png" in _failing(report, "file_name_utf8")
    assert "001_mask.png" in _failing(report, "mask_size_matches_image")
    assert "002_mask.png" in _failing(report, "mask_has_image")
    assert "004.png" in _failing(report, "mask_present")
    # the good files were read and checked too: nothing hid them
    assert report.summary["files_checked"] == 3 + 1 + 1 + 2  # train good, truncated, test good, 000 + 001


def test_visa_dataset_with_every_fault_gets_one_report_naming_each(tmp_path, cli, real_large):
    root = tmp_path / "visa"
    images, masks = root / "pcb" / "Data" / "Images", root / "pcb" / "Data" / "Masks" / "Anomaly"
    lines = ["object,split,label,image,mask"]

    def add(split: str, label: str, image: str, mask: str = "") -> None:
        lines.append(f"pcb,{split},{label},{image},{mask}")

    for i in range(3):
        write_png(images / "Normal" / f"{i}.png")
        add("train" if i < 2 else "test", "normal", f"pcb/Data/Images/Normal/{i}.png")
    write_png(images / "Anomaly" / "a0.png")
    write_mask(masks / "a0.png")
    add("test", "anomaly", "pcb/Data/Images/Anomaly/a0.png", "pcb/Data/Masks/Anomaly/a0.png")
    outside = _outside(tmp_path)
    add("test", "normal", "../elsewhere/secret.png")
    add("test", "normal", str(outside))
    (images / "Normal" / "link.png").symlink_to(outside)
    add("test", "normal", "pcb/Data/Images/Normal/link.png")
    write_random(images / "Normal" / "random.png")
    add("test", "normal", "pcb/Data/Images/Normal/random.png")
    write_declared(images / "Normal" / "bomb.png", 100_000, 100_000)
    add("test", "normal", "pcb/Data/Images/Normal/bomb.png")
    shutil.copy(real_large, images / "Normal" / "large.png")
    add("test", "normal", "pcb/Data/Images/Normal/large.png")
    write_truncated(images / "Normal" / "truncated.png")
    add("test", "normal", "pcb/Data/Images/Normal/truncated.png")
    add("test", "normal", "pcb/Data/Images/Normal/missing.png")
    write_png(images / "Anomaly" / "a1.png")
    write_mask(masks / "a1.png", (10, 10))
    add("test", "anomaly", "pcb/Data/Images/Anomaly/a1.png", "pcb/Data/Masks/Anomaly/a1.png")
    write_png(images / "Anomaly" / "a2.png")
    add("test", "anomaly", "pcb/Data/Images/Anomaly/a2.png", "pcb/Data/Masks/Anomaly/nope.png")
    write_png(images / "Anomaly" / "a3.png")
    add("test", "anomaly", "pcb/Data/Images/Anomaly/a3.png", "../elsewhere/secret.png")
    add("test", "broken", "pcb/Data/Images/Normal/0.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")

    result = cli("visa", "--format", "visa")

    assert result.exit_code == 1, result.output
    report = read_report(tmp_path / "reports" / "validation.json")
    outside_text = _failing(report, "path_inside_dataset")
    assert report.check("path_inside_dataset").n_failing == 4
    assert "../elsewhere/secret.png" in outside_text or "elsewhere/secret.png" in outside_text
    assert "absolute path" in outside_text and "link.png" in outside_text
    opens = _failing(report, "image_opens")
    for name in ("random.png", "bomb.png", "large.png", "missing.png"):
        assert name in opens, name
    assert "truncated.png" in _failing(report, "image_readable")
    assert "a1.png" in _failing(report, "mask_size_matches_image")
    assert "nope.png" in _failing(report, "mask_present")
    assert "line 17" in _failing(report, "index_rows_valid")  # label 'broken'
    assert report.summary["files_checked"] == 3 + 1 + 1 + 1  # normals, a0, truncated, a1


def test_meta_json_paths_out_of_the_dataset_are_refused_unless_allowed(tmp_path, cli):
    root = tmp_path / "meta"
    outside = _outside(tmp_path)
    items = [{"img_path": f"bottle/{i}.png", "mask_path": "", "cls_name": "bottle", "anomaly": 0} for i in range(2)]
    for i in range(2):
        write_png(root / "bottle" / f"{i}.png")
    write_png(root / "bottle" / "bad.png")
    write_mask(root / "bottle" / "bad_mask.png")
    items.append({"img_path": "bottle/bad.png", "mask_path": "bottle/bad_mask.png", "cls_name": "bottle",
                  "anomaly": 1})
    items.append({"img_path": "../elsewhere/secret.png", "mask_path": "", "cls_name": "bottle", "anomaly": 0})
    items.append({"img_path": str(outside), "mask_path": "", "cls_name": "bottle", "anomaly": 0})
    root.mkdir(exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"test": {"bottle": items}}))

    result = cli("meta", "--format", "meta_json")
    assert result.exit_code == 1, result.output
    report = read_report(tmp_path / "reports" / "validation.json")
    text = _failing(report, "path_inside_dataset")
    assert report.check("path_inside_dataset").n_failing == 2 and "[3]" in text and "[4]" in text

    result = cli("meta", "--format", "meta_json", "--allow-external-paths")  # the documented opt-in
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path / "reports" / "validation.json")
    assert report.check("path_inside_dataset").passed and report.summary["files_checked"] == 5


@pytest.mark.parametrize("index", ["meta", "visa"])
def test_an_index_file_that_is_not_utf8_is_named_and_the_report_written(tmp_path, cli, index):
    if index == "meta":
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "meta.json").write_bytes(b'{"test": {"caf\xe9": []}}')
        bad, fmt = tmp_path / "ds" / "meta.json", "meta_json"
    else:
        (tmp_path / "ds" / "split_csv").mkdir(parents=True)
        (tmp_path / "ds" / "split_csv" / "1cls.csv").write_bytes(
            b"object,split,label,image,mask\ncaf\xe9,train,normal,a.png,\n"
        )
        bad, fmt = tmp_path / "ds" / "split_csv" / "1cls.csv", "visa"
    result = cli("ds", "--format", fmt)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(bad) in result.output and "not UTF-8" in result.output
    report = read_report(tmp_path / "reports" / "validation.json")
    assert not report.ok and "not UTF-8" in report.check("dataset_layout").message


def test_validate_stage_flags_manifest_paths_out_of_their_root_and_oversized_images(tmp_path, kit):
    from anomaly_ov.data.manifest import from_rows, write_manifest
    from anomaly_ov.stages import StageFailed
    from anomaly_ov.validate.run import run_validate

    for i in range(2):
        kit.noise_image(tmp_path / "ds" / "widget" / f"good_{i}.png", i)
    kit.noise_image(tmp_path / "ds" / "widget" / "bad.png", 9)
    kit.mask_image(tmp_path / "ds" / "widget" / "bad_mask.png")
    write_png(tmp_path / "elsewhere" / "secret.png", (kit.SIDE, kit.SIDE))
    write_declared(tmp_path / "ds" / "widget" / "huge.png", 9000, 9000)
    rows = [kit.row(f"widget/good_{i}.png", "ds") for i in range(2)]
    rows += [kit.row("widget/bad.png", "ds", label="anomaly", mask_path="widget/bad_mask.png"),
             kit.row("../elsewhere/secret.png", "ds"), kit.row(str(tmp_path / "elsewhere" / "secret.png"), "ds"),
             kit.row("widget/huge.png", "ds")]
    write_manifest(from_rows(rows), tmp_path / "data" / "manifest.parquet")

    with pytest.raises(StageFailed, match="path_inside_dataset"):
        run_validate(kit.toy_params(), tmp_path)
    report = read_report(tmp_path / "reports" / "validation.json")
    assert report.check("path_inside_dataset").n_failing == 2 and report.summary["files_checked"] == 4
    refused = report.check("decoded_size_in_bounds")
    refused_text = json.dumps(refused.failing)
    assert not refused.passed and "huge.png" in refused_text and "9000 x 9000" in refused_text

    allowed = {"name": "toy", "format": "mvtec", "path": "ds", "role": "eval", "allow_external_paths": True}
    with pytest.raises(StageFailed) as caught:  # still fails: huge.png
        run_validate(kit.toy_params(allowed), tmp_path)
    assert "path_inside_dataset" not in str(caught.value)
    assert read_report(tmp_path / "reports" / "validation.json").check("path_inside_dataset").passed
