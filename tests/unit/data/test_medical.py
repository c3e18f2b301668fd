"""DICOM windowing / rescale on pydicom's real sample files, NIfTI slicing round trip, the synthetic medical set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.data import medical
from anomaly_ov.data.medical import (
    WINDOW_PRESETS,
    MedicalFormatError,
    apply_window,
    convert_dicom,
    convert_nifti,
    generate_synthetic_medical,
    nifti_slices,
    read_dicom,
    resolve_window,
)

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402


def _by_hand(value: float, centre: float, width: float) -> int:
    low, high = centre - width / 2, centre + width / 2
    if value <= low:
        return 0
    if value >= high:
        return 255
    return int(round((value - low) / (high - low) * 255))


def test_ct_small_rescale_and_presets_match_hand_computation():
    path = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array
    image = read_dicom(path, window="brain")
    # CT_small.dcm: RescaleSlope 1, RescaleIntercept -1024 -> Hounsfield units.
    assert image.values[0, 0] == raw[0, 0] * 1.0 - 1024.0
    assert image.modality == "CT" and not image.invert
    assert (image.low, image.high) == (0.0, 80.0)
    gray = image.image
    for r, c in [(0, 0), (64, 64), (10, 100), (120, 5)]:
        assert gray[r, c] == _by_hand(float(raw[r, c]) - 1024.0, 40.0, 80.0)
    for preset in ("lung", "abdomen", "liver", "bone"):
        centre, width = WINDOW_PRESETS[preset]
        gray = read_dicom(path, window=preset).image
        assert gray[64, 64] == _by_hand(float(raw[64, 64]) - 1024.0, centre, width)


def test_explicit_window_and_value_range_fallback():
    path = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(float) - 1024.0
    explicit = read_dicom(path, window=(100.0, 1000.0)).image
    assert explicit[64, 64] == _by_hand(raw[64, 64], 100.0, 1000.0)
    # CT_small carries no VOI window: "auto" falls back to the value range.
    auto = read_dicom(path, window="auto")
    assert (auto.low, auto.high) == (raw.min(), raw.max())
    assert auto.image.min() == 0 and auto.image.max() == 255


def test_mr_small_uses_its_own_voi_window():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    image = read_dicom(path)  # "auto"
    assert (image.low, image.high) == (centre - width / 2, centre + width / 2)
    raw = ds.pixel_array.astype(float)
    assert image.image[32, 32] == _by_hand(raw[32, 32], centre, width)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "inverted.dcm"
    ds.save_as(path)
    normal = read_dicom(get_testdata_file("CT_small.dcm"), window="abdomen").image
    inverted = read_dicom(path, window="abdomen")
    assert inverted.invert
    np.testing.assert_array_equal(inverted.image, 255 - normal)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown window"):
        resolve_window("sunset")
    with pytest.raises(ValueError, match="width must be > 0"):
        resolve_window((0.0, 0.0))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file at all")
    with pytest.raises(MedicalFormatError, match="broken.dcm"):
        read_dicom(broken)


def test_convert_dicom_writes_bmad_layout_with_masks(tmp_path):
    from anomaly_ov.data.manifest import read_manifest

    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    mask = np.zeros((128, 128), np.uint8)
    mask[40:60, 50:70] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    frame = convert_dicom([ct, mr], tmp_path / "out", "scan", masks={"CT_small": tmp_path / "m.png"},
                          workspace=tmp_path)
    assert list(frame["label"]) == ["anomaly", "normal"]
    assert frame.loc[0, "mask_path"] == "scan/test/Ungood/label/CT_small.png"
    assert frame.loc[1, "image_path"] == "scan/test/good/img/MR_small.png"
    rgb = np.asarray(Image.open(tmp_path / "out" / frame.loc[0, "image_path"]))
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert len(read_manifest(tmp_path / "out" / "manifest.parquet")) == 2


def _write_nifti(path, array):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def test_nifti_round_trip_slices_volume_and_mask_alike(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.uniform(10, 500, (8, 10, 6)).astype(np.float32)
    mask = np.zeros(volume.shape, np.uint8)
    mask[2:5, 3:7, 2:4] = 1
    _write_nifti(tmp_path / "vol.nii.gz", volume)
    _write_nifti(tmp_path / "mask.nii.gz", mask)
    slices = list(nifti_slices(tmp_path / "vol.nii.gz", axis=2, mask_path=tmp_path / "mask.nii.gz",
                               window="minmax", skip_blank=False))
    assert [s.index for s in slices] == list(range(6))
    low, high = float(volume.min()), float(volume.max())
    for item in slices:
        expected = apply_window(np.flipud(volume[:, :, item.index].T), low, high)
        np.testing.assert_array_equal(item.image, expected)
        np.testing.assert_array_equal(item.mask, np.flipud(mask[:, :, item.index].T) > 0)
    assert [bool(s.mask.any()) for s in slices] == [False, False, True, True, False, False]
    # Along another axis the mask follows the same slicing.
    along0 = list(nifti_slices(tmp_path / "vol.nii.gz", axis=0, mask_path=tmp_path / "mask.nii.gz",
                               skip_blank=False))
    assert len(along0) == 8 and along0[3].mask.sum() == mask[3].sum()


def test_convert_nifti_then_read_back_as_bmad(tmp_path):
    from anomaly_ov.config import SourceParams
    from anomaly_ov.data.sources.bmad import read_bmad

    volume = np.random.default_rng(1).uniform(0, 100, (16, 16, 5)).astype(np.float32)
    mask = np.zeros(volume.shape, np.uint8)
    mask[4:9, 4:9, 1] = 1
    _write_nifti(tmp_path / "v.nii", volume)
    _write_nifti(tmp_path / "m.nii", mask)
    frame = convert_nifti([(tmp_path / "v.nii", tmp_path / "m.nii")], tmp_path / "bmad", "brain", size=32,
                          workspace=tmp_path)
    assert len(frame) == 5 and (frame["label"] == "anomaly").sum() == 1
    read = read_bmad(SourceParams(name="b", format="bmad", path="bmad", role="eval"), tmp_path)
    assert sorted(read["image_path"]) == sorted(frame["image_path"])
    assert set(read["width"]) == {32}
    mask_png = np.asarray(Image.open(tmp_path / "bmad" / read.loc[read["label"] == "anomaly", "mask_path"].iloc[0]))
    assert set(np.unique(mask_png)) == {0, 255}


def test_nifti_shape_mismatch_is_reported(tmp_path):
    _write_nifti(tmp_path / "v.nii", np.zeros((4, 4, 4), np.float32))
    _write_nifti(tmp_path / "m.nii", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(MedicalFormatError, match="m.nii"):
        list(nifti_slices(tmp_path / "v.nii", mask_path=tmp_path / "m.nii"))


def test_synthetic_medical_set_is_deterministic_and_labelled(tmp_path):
    kwargs = dict(modalities=("brain_mri", "liver_ct"), image_size=48, normal_per_modality=2,
                  anomaly_per_modality=3, workspace=tmp_path)
    first = generate_synthetic_medical(tmp_path / "a", **kwargs)
    generate_synthetic_medical(tmp_path / "b", **kwargs)
    assert len(first) == 2 * (2 + 2 + 3)
    for rel in first["image_path"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    anomalies = first[first["label"] == "anomaly"]
    assert len(anomalies) == 6 and set(anomalies["split"]) == {"test"} and set(first["modality"]) == {"medical"}
    for rel in anomalies["mask_path"]:
        assert np.asarray(Image.open(tmp_path / "a" / rel)).max() == 255
    assert set(first.loc[first["split"] == "train", "label"]) == {"normal"}
    with pytest.raises(ValueError, match="unknown synthetic medical modality"):
        medical.phantom("cat_scan", 32, 0, False)
