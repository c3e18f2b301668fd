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


SMALL_TRAIN = ["extensions.medical.train_normal_per_modality=1", "extensions.medical.train_anomaly_per_modality=2",
               "extensions.threed.train_normal_per_shape=1", "extensions.threed.train_anomaly_per_shape=1"]


def test_extension_sources_only_when_joining(tmp_path):
    off = ["extensions.medical.join_training=false", "extensions.threed.join_training=false"]
    assert extension_sources(load_params(None, [*SMALL, *SMALL_TRAIN, *off]), tmp_path) == []
    # switched off, prepare's declared outputs still exist (empty) for DVC
    assert list((tmp_path / "data/raw/medical_train").iterdir()) == []
    assert list((tmp_path / "data/raw/3d_train").iterdir()) == []
    frames = extension_sources(load_params(None, [*SMALL, *SMALL_TRAIN, off[1],
                                                  "extensions.medical.join_training=true"]), tmp_path)
    assert len(frames) == 1 and set(frames[0]["role"]) == {"train"}


def test_prepare_trains_on_other_modalities_and_shapes_than_the_extensions_evaluate(tmp_path):
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.data.prepare import run_prepare

    params = load_params(None, [  # join_training is the default
        *SMALL, *SMALL_TRAIN,
        "data.synthetic.image_size=32", "data.synthetic.train_categories=[wood]",
        "data.synthetic.eval_categories=[pcb]", "data.synthetic.train_normal_per_category=1",
        "data.synthetic.test_normal_per_category=1", "data.synthetic.test_anomaly_per_category=1",
    ])
    summary = run_prepare(params, tmp_path)
    manifest = read_manifest(tmp_path / "data/manifest.parquet")
    modalities = params.extensions.medical.train_modalities
    assert modalities == ["chest_xray", "retina_oct", "retina_fundus"]  # the default
    assert summary["per_source"]["synthetic_medical_train"] == 3 * len(modalities)  # 1 normal + 2 anomalous each
    assert summary["per_source"]["synthetic_3d_train"] == 2 * 2  # 1 normal + 1 anomalous sphere, 2 views each
    joined = manifest[manifest["modality"] != "industrial"]
    assert set(joined["role"]) == {"train"}
    # never brain_mri, liver_ct, box: those are evaluated
    assert set(joined["category"]) == {*modalities, "sphere"}
    assert set(joined["root"]) <= {"data/raw/medical_train", "data/raw/3d_train/renders"}
    medical = joined[joined["modality"] != "3d"]
    assert (medical["label"] == "anomaly").sum() == 2 * len(modalities)
    assert (joined[joined["modality"] == "3d"]["label"] == "anomaly").sum() >= 1
    assert ((joined["label"] == "anomaly") == (joined["mask_path"] != "")).all()  # every lesion has its mask
    # the extension stages write other folders: nothing prepare wrote is overwritten by them
    assert not (tmp_path / "data/raw/medical").exists() and not (tmp_path / "data/raw/3d").exists()


def test_an_evaluated_modality_or_shape_cannot_join_training():
    import pytest

    from anomaly_ov.errors import ConfigError

    with pytest.raises((ConfigError, ValueError)) as info:
        load_params(None, ["extensions.medical.train_modalities=[brain_mri]", "extensions.threed.train_shapes=[box]"])
    message = str(info.value)
    assert "brain_mri" in message and "box" in message  # both problems reported at once
