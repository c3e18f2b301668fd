"""`anomaly-ov data convert-medical` and `anomaly-ov data render-3d` on tiny inputs."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from anomaly_ov.cli import app


def test_convert_medical_dicom_and_nifti(tmp_path):
    import nibabel as nib
    from pydicom.data import get_testdata_file

    runner = CliRunner()
    result = runner.invoke(app, ["data", "convert-medical", get_testdata_file("CT_small.dcm"),
                                 "--out", str(tmp_path / "d"), "--category", "ct", "--window", "40,400",
                                 "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d/ct/test/good/img/CT_small.png").exists()
    volume = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[2:4, 2:4, 1] = 1
    (tmp_path / "vols").mkdir()
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "vols/v.nii"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "masks/v.nii"))
    result = runner.invoke(app, ["data", "convert-medical", str(tmp_path / "vols/v.nii"), "--out", str(tmp_path / "n"),
                                 "--category", "mri", "--masks", str(tmp_path / "masks"), "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 images (1 with lesion masks)" in result.output
    bad = runner.invoke(app, ["data", "convert-medical", str(tmp_path / "missing.dcm"), "--out", str(tmp_path / "x"),
                              "--category", "c"])
    assert bad.exit_code == 3 and "not found" in bad.output  # InputError naming the file


def test_render_3d(tmp_path):
    from anomaly_ov.data.pointcloud import generate_synthetic_3d

    generate_synthetic_3d(tmp_path / "clouds", shapes=("box",), normal_per_shape=1, anomaly_per_shape=1,
                          train_per_shape=1, points_per_object=500)
    result = CliRunner().invoke(app, ["data", "render-3d", str(tmp_path / "clouds"), "--format", "real3d", "--out",
                                      str(tmp_path / "views"), "--views", "2", "--size", "32", "-w", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 objects, 6 views" in result.output
    assert (tmp_path / "views/manifest.parquet").exists()
