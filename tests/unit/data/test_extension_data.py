"""Extension data: the medical / 3D manifests from params, and joining training through ``prepare``."""

from __future__ import annotations

from anomaly_ov.config import load_params
from anomaly_ov.data.extensions import extension_sources, medical_manifest, threed_manifest

SMALL = [
    "extensions.medical.image_size=32", "extensions.medical.normal_per_modality=1",
    "extensions.medical.anomaly_per_modality=2", "extensions.threed.image_size=32", "extensions.threed.views=2",
    "extensions.threed.shapes=[box]", "extensions.threed.normal_per_shape=1", "extensions.threed.anomaly_per_shape=1",
    "extensions.threed.points_per_object=600",
]


def test_manifests_follow_params(tmp_path):
    params = load_params(None, SMALL)
    med = medical_manifest(params, tmp_path)
    assert len(med) == 2 * (1 + 1 + 2) and set(med["category"]) == {"brain_mri", "liver_ct"}
    assert set(med["role"]) == {"eval"} and set(med["root"]) == {"data/raw/medical"}
    three = threed_manifest(params, tmp_path, role="train")
    # 2 training templates + 1 normal + 1 anomalous object, 2 views each.
    assert len(three) == 4 * 2 and set(three["role"]) == {"train"} and set(three["modality"]) == {"3d"}
    assert three.groupby("group").size().tolist() == [2, 2, 2, 2]
    assert (tmp_path / "data/raw/3d/clouds/box/test").is_dir()


def test_extension_sources_only_when_joining(tmp_path):
    assert extension_sources(load_params(None, SMALL), tmp_path) == []
    frames = extension_sources(load_params(None, [*SMALL, "extensions.medical.join_training=true"]), tmp_path)
    assert len(frames) == 1 and set(frames[0]["role"]) == {"train"}


def test_prepare_adds_joined_sets(tmp_path):
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.data.prepare import run_prepare

    params = load_params(None, [
        *SMALL, "extensions.medical.join_training=true", "extensions.threed.join_training=true",
        "data.synthetic.image_size=32", "data.synthetic.train_categories=[wood]",
        "data.synthetic.eval_categories=[pcb]", "data.synthetic.train_normal_per_category=1",
        "data.synthetic.test_normal_per_category=1", "data.synthetic.test_anomaly_per_category=1",
    ])
    summary = run_prepare(params, tmp_path)
    manifest = read_manifest(tmp_path / "data/manifest.parquet")
    assert summary["per_source"]["synthetic_medical"] == 8 and summary["per_source"]["synthetic_3d"] == 8
    assert set(manifest.loc[manifest["modality"] != "industrial", "role"]) == {"train"}
    assert set(manifest["modality"]) == {"industrial", "medical", "3d"}
