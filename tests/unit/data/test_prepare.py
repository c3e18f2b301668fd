"""The prepare stage end to end on a tiny synthetic config, plus its failure modes."""

from __future__ import annotations

import pytest

from anomaly_ov.config import DataParams, Params, SourceParams, SyntheticParams
from anomaly_ov.data.manifest import read_manifest, resolve
from anomaly_ov.data.prepare import run_prepare
from anomaly_ov.data.synthetic import DEFECT_TYPES
from anomaly_ov.stages import StageFailed


def tiny_params(**data) -> Params:
    synthetic = SyntheticParams(
        image_size=48,
        train_categories=["tiles", "pill"],
        eval_categories=["pcb"],
        train_normal_per_category=2,
        test_normal_per_category=1,
        test_anomaly_per_category=2,
    )
    # joining medical / 3D sets to training is tested in test_extension_data.py
    no_joined = {"medical": {"join_training": False}, "threed": {"join_training": False}}
    return Params(data=DataParams(synthetic=synthetic, **data), extensions=no_joined)


def test_prepare_writes_a_valid_manifest(tmp_path):
    summary = run_prepare(tiny_params(), tmp_path)
    manifest = read_manifest(tmp_path / "data" / "manifest.parquet")
    assert summary["rows"] == len(manifest) == 3 * 5
    assert summary["per_role_label"] == {"eval/anomaly": 2, "eval/normal": 3, "train/anomaly": 4, "train/normal": 6}
    assert summary["categories"] == {"train": ["pill", "tiles"], "eval": ["pcb"]}
    assert summary["generated"]["synthetic"]["images"] == 15
    assert set(manifest["root"]) == {"data/raw/synthetic/mvtec", "data/raw/synthetic/visa"}
    assert set(manifest["width"]) == {48} and set(manifest["height"]) == {48}
    for row in manifest.itertuples():
        assert resolve(row._asdict(), "image_path", tmp_path).is_file()
        if row.label == "anomaly":
            assert resolve(row._asdict(), "mask_path", tmp_path).is_file()
            assert row.defect_type != "good"
        else:
            assert row.mask_path == "" and row.defect_type == "good"
    eval_rows = manifest[manifest["role"] == "eval"]
    assert set(eval_rows["source"]) == {"synthetic_visa"} and set(eval_rows["category"]) == {"pcb"}
    # VisA defect types come from the generator's image_anno.csv, not the generic "anomaly"
    assert set(eval_rows.loc[eval_rows["label"] == "anomaly", "defect_type"]) <= set(DEFECT_TYPES)
    assert set(eval_rows["split"]) == {"train", "test"}


def test_same_images_listed_twice_stop_the_stage(tmp_path):
    sources = [
        SourceParams(name="a", format="mvtec", path="data/raw/synthetic/mvtec", role="train"),
        SourceParams(name="b", format="mvtec", path="data/raw/synthetic/mvtec", role="eval"),
    ]
    with pytest.raises(StageFailed, match=r"repeat an image .* from sources \['a', 'b'\]"):
        run_prepare(tiny_params(sources=sources), tmp_path)
    assert not (tmp_path / "data" / "manifest.parquet").exists()


def test_layout_errors_name_the_source(tmp_path):
    params = Params(
        data=DataParams(
            synthetic=SyntheticParams(enabled=False),
            sources=[SourceParams(name="mine", format="visa", path="nowhere", role="eval")],
        )
    )
    with pytest.raises(StageFailed, match=r"source 'mine' \(visa at nowhere\): .*nowhere: VisA dataset root"):
        run_prepare(params, tmp_path)
    # generator off: no file written (prepare leaves its declared output folders, empty, for DVC)
    assert [path for path in (tmp_path / "data").rglob("*") if path.is_file()] == []


def test_sources_stage_hashes_external_data_and_is_prepares_dependency(tmp_path):
    """dvc.yaml and the code agree on the fingerprint file; external data is hashed by content, generated data
    (prepare's own DVC output) is not."""
    from pathlib import Path

    import yaml

    from anomaly_ov.data.prepare import SOURCES_FINGERPRINT, run_sources
    from anomaly_ov.io import read_json

    stages = yaml.safe_load((Path(__file__).resolve().parents[3] / "dvc.yaml").read_text())["stages"]
    assert stages["sources"]["always_changed"] is True
    assert stages["sources"]["outs"] == [SOURCES_FINGERPRINT]
    assert SOURCES_FINGERPRINT in stages["prepare"]["deps"]
    assert list(stages)[0] == "sources"

    external = tmp_path / "ext"
    (external / "a" / "good").mkdir(parents=True)
    (external / "a" / "good" / "0.png").write_bytes(b"x" * 10)
    sources = [SourceParams(name="mine", format="folder", path=str(external), role="train"),
               SourceParams(name="synthetic_mvtec", format="mvtec", path="data/raw/synthetic/mvtec", role="train")]
    summary = run_sources(tiny_params(sources=sources), tmp_path / "ws")
    first = read_json(tmp_path / "ws" / SOURCES_FINGERPRINT)["sources"]
    assert summary["files"] == 1 and first["mine"]["files"] == 1 and first["mine"]["bytes"] == 10
    assert first["synthetic_mvtec"] == {"path": "data/raw/synthetic/mvtec", "generated_by_prepare": True}
    (external / "a" / "good" / "0.png").write_bytes(b"y" * 10)
    run_sources(tiny_params(sources=sources), tmp_path / "ws")
    assert read_json(tmp_path / "ws" / SOURCES_FINGERPRINT)["sources"]["mine"]["sha256"] != first["mine"]["sha256"]
