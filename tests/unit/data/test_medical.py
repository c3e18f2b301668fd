"""DICOM windowing / rescale on pydicom's real sample files, NIfTI slicing round trip, the synthetic medical set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

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


def _linear(value: float, centre: float, width: float) -> int:
    """The DICOM LINEAR window (PS3.3 C.11.2.1.2.1) to 0..255, written out from the standard."""
    if value <= centre - 0.5 - (width - 1) / 2:
        return 0
    if value > centre - 0.5 + (width - 1) / 2:
        return 255
    return int(np.rint(((value - (centre - 0.5)) / (width - 1) + 0.5) * 255))


def _exact(value: float, centre: float, width: float) -> int:
    """LINEAR_EXACT (PS3.3 C.11.2.1.3.2): [centre - width/2, centre + width/2] onto 0..255."""
    return int(np.rint(np.clip((value - (centre - width / 2)) / width, 0, 1) * 255))


def _write_dicom(path, stored: np.ndarray, signed: bool = True, **attributes):
    """A single-frame 16-bit monochrome DICOM file written with pydicom (CT by default)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.arange(-1200, 1200, 75, dtype=np.int16).reshape(4, 8)  # 32 values across the CT range


def test_rescale_slope_intercept_then_a_preset_window(tmp_path):
    path = _write_dicom(tmp_path / "ct.dcm", STORED, RescaleSlope=2, RescaleIntercept=-100)
    image = read_dicom(path, window="brain")
    hu = STORED.astype(float) * 2 - 100
    np.testing.assert_array_equal(image.values, hu)
    assert image.modality == "CT" and not image.invert and image.window == "LINEAR 40/80"
    for preset in ("brain", "stroke", "lung", "abdomen", "bone"):
        centre, width = WINDOW_PRESETS[preset]
        expected = [[_linear(v, centre, width) for v in row] for row in hu]
        np.testing.assert_array_equal(read_dicom(path, window=preset).image, expected, err_msg=preset)
    explicit = read_dicom(path, window=(100.0, 1000.0)).image
    np.testing.assert_array_equal(explicit, [[_linear(v, 100.0, 1000.0) for v in row] for row in hu])


def test_monochrome1_is_inverted(tmp_path):
    normal = read_dicom(_write_dicom(tmp_path / "m2.dcm", STORED, RescaleSlope=1, RescaleIntercept=0),
                        window="abdomen")
    inverted = read_dicom(_write_dicom(tmp_path / "m1.dcm", STORED, RescaleSlope=1, RescaleIntercept=0,
                                       PhotometricInterpretation="MONOCHROME1"), window="abdomen")
    assert inverted.invert and not normal.invert
    np.testing.assert_array_equal(inverted.image, 255 - normal.image)
    assert len(np.unique(normal.image)) > 2  # grays inside the window, not only its clipped ends


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_auto_uses_the_files_window_and_its_voi_lut_function(tmp_path, function):
    path = _write_dicom(tmp_path / "w.dcm", STORED, RescaleSlope=1, RescaleIntercept=-24,
                        WindowCenter=[50, 400], WindowWidth=[350, 1500], VOILUTFunction=function)
    image = read_dicom(path)  # "auto": the file's first window
    values = STORED.astype(float) - 24
    if function == "LINEAR":
        expected = [[_linear(v, 50, 350) for v in row] for row in values]
    elif function == "LINEAR_EXACT":
        expected = [[_exact(v, 50, 350) for v in row] for row in values]
    else:  # PS3.3 C.11.2.1.3.1
        expected = np.rint(255 / (1 + np.exp(-4 * (values - 50) / 350)))
    np.testing.assert_array_equal(image.image, expected)
    assert image.window == f"{function} 50/350"


def test_auto_applies_the_files_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.add_new(0x00283002, "SS", [256, -1000, 12])  # LUTDescriptor: 256 entries, the first for -1000, 12 bits
    lut.add_new(0x00283006, "US", [min(4095, 16 * i) for i in range(256)])  # LUTData
    path = _write_dicom(tmp_path / "lut.dcm", STORED, RescaleSlope=10, RescaleIntercept=0, VOILUTSequence=[lut],
                        WindowCenter=0, WindowWidth=100)  # the LUT wins over the window, as viewers prefer it
    image = read_dicom(path)
    values = STORED.astype(int) * 10
    index = np.clip(values + 1000, 0, 255)
    np.testing.assert_array_equal(image.image, np.rint(np.asarray(lut.LUTData)[index] * 255 / 4095))
    assert image.window == "VOI LUT 0"


def test_modality_lut_sequence_gives_the_values(tmp_path):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.add_new(0x00283002, "US", [64, 0, 16])  # LUTDescriptor: 64 entries, the first for 0, 16 bits
    lut.add_new(0x00283006, "US", [1000 + 3 * i for i in range(64)])  # LUTData
    stored = np.arange(0, 96, 3, dtype=np.uint16).reshape(4, 8)  # values past the LUT's end take its last entry
    path = _write_dicom(tmp_path / "mlut.dcm", stored, signed=False, ModalityLUTSequence=[lut])
    image = read_dicom(path, window="minmax")
    np.testing.assert_array_equal(image.values, np.asarray(lut.LUTData)[np.clip(stored, 0, 63)])
    low, high = image.values.min(), image.values.max()
    expected = [[_exact(v, (low + high) / 2, high - low) for v in row] for row in image.values]
    np.testing.assert_array_equal(image.image, expected)


def test_pydicom_sample_files(tmp_path):
    """The real sample files pydicom ships: CT_small has a rescale and no window (auto = its value range),
    MR_small carries its own window."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    auto = read_dicom(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(auto.values, hu)
    assert auto.image.min() == 0 and auto.image.max() == 255 and auto.window.startswith("LINEAR_EXACT")
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    centre, width = float(mr.WindowCenter), float(mr.WindowWidth)
    image = read_dicom(get_testdata_file("MR_small.dcm"))
    assert image.image[32, 32] == _linear(float(mr.pixel_array[32, 32]), centre, width)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown window"):
        resolve_window("sunset")
    with pytest.raises(ValueError, match="width must be > 0"):
        resolve_window((0.0, 0.0))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not a dicom file at all")
    with pytest.raises(MedicalFormatError, match="broken.dcm"):
        read_dicom(broken)
    with pytest.raises(MedicalFormatError, match=r"ct\.dcm.*window width must be >= 1"):
        read_dicom(_write_dicom(tmp_path / "ct.dcm", STORED), window=(0.0, 0.5))


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
        plane = np.flipud(volume[:, :, item.index].T).astype(np.float64)
        expected = np.rint(np.clip((plane - low) / (high - low), 0, 1) * 255)
        np.testing.assert_array_equal(apply_window(plane, low, high), expected)
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


@pytest.mark.parametrize("modality", medical.SYNTHETIC_MODALITIES)
def test_every_phantom_draws_a_visible_lesion_only_when_anomalous(modality):
    for seed in range(3):
        normal, no_mask = medical.phantom(modality, 64, seed, False)
        image, mask = medical.phantom(modality, 64, 100 + seed, True)
        assert normal.dtype == np.uint8 and normal.shape == (64, 64) and not no_mask.any()
        assert 0.002 < mask.mean() < 0.2, (modality, mask.mean())
        ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
        contrast = abs(float(image[mask].mean()) - float(image[ring].mean()))
        assert contrast > 20, (modality, seed, contrast)  # the lesion stands out from what surrounds it
