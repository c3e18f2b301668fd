"""3D readers (Real3D-AD, Anomaly-ShapeNet, MVTec 3D-AD) on tiny files the tests write: views, masks, groups."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.data.pointcloud import RenderSettings, synthetic_object, write_pcd
from anomaly_ov.data.sources import LayoutError, read_source
from anomaly_ov.data.sources.mvtec3d import read_mvtec3d, read_organised
from anomaly_ov.data.sources.real3d import read_real3d
from anomaly_ov.data.sources.shapenet import read_shapenet

SETTINGS = RenderSettings(views=3, image_size=32, min_mask_pixels=1)


def _write_gt(path, cloud):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.c_[cloud.points, cloud.labels], fmt=["%.6f", "%.6f", "%.6f", "%d"])


def _pcd_dataset(root, gt_folder, normal_name, anomalous_name):
    cls = root / "cup"
    write_pcd(cls / "train" / "cup_template0.pcd", synthetic_object("cylinder", 800, 1).points)
    write_pcd(cls / "test" / f"{normal_name}.pcd", synthetic_object("cylinder", 800, 2).points, binary=False)
    bad = synthetic_object("cylinder", 800, 3, defect="bump")
    write_pcd(cls / "test" / f"{anomalous_name}.pcd", bad.points)
    _write_gt(cls / gt_folder / f"{anomalous_name}.txt", bad)


def _check(frame, anomalous_stem, defect):
    assert len(frame) == 3 * 3 and set(frame["modality"]) == {"3d"}
    assert frame.groupby("group").size().tolist() == [3, 3, 3]
    assert sorted(frame["view"].unique()) == ["0", "1", "2"]
    bad = frame[frame["group"].str.endswith(anomalous_stem)]
    assert (bad["label"] == "anomaly").any()
    assert set(bad.loc[bad["label"] == "anomaly", "defect_type"]) == {defect}
    assert (bad.loc[bad["label"] == "anomaly", "mask_path"] != "").all()
    assert set(frame.loc[frame["split"] == "train", "label"]) == {"normal"}


def test_real3d_reader_renders_views_and_masks(tmp_path, source):
    _pcd_dataset(tmp_path / "real3d", "gt", "10_good", "11_bulge")
    frame = read_real3d(source("real3d", "real3d", role="eval"), tmp_path, settings=SETTINGS)
    _check(frame, "11_bulge", "bulge")
    first = frame[frame["label"] == "anomaly"].iloc[0]
    root = tmp_path / first["root"]
    assert first["root"] == "data/rendered/test_real3d"
    mask = np.asarray(Image.open(root / first["mask_path"]))
    assert mask.max() == 255 and np.asarray(Image.open(root / first["image_path"])).shape == (32, 32, 3)
    # Same inputs and settings: the render is reused (files untouched).
    stamp = (root / "render.json").stat().st_mtime_ns
    read_real3d(source("real3d", "real3d", role="eval"), tmp_path, settings=SETTINGS)
    assert (root / "render.json").stat().st_mtime_ns == stamp


def test_shapenet_reader_and_registry(tmp_path, source):
    _pcd_dataset(tmp_path / "shapenet", "GT", "cup0_positive0", "cup0_crack1")
    frame = read_source(source("shapenet", "shapenet"), tmp_path)  # default settings through the registry
    assert len(frame) == 3 * 4
    small = read_shapenet(source("shapenet", "shapenet"), tmp_path, settings=SETTINGS, out_dir="r")
    _check(small, "cup0_crack1", "crack")


def test_missing_ground_truth_is_reported(tmp_path, source):
    _pcd_dataset(tmp_path / "real3d", "gt", "10_good", "11_bulge")
    (tmp_path / "real3d/cup/gt/11_bulge.txt").unlink()
    with pytest.raises(LayoutError, match="11_bulge.pcd: anomalous test object without ground truth"):
        read_real3d(source("real3d", "real3d"), tmp_path, settings=SETTINGS)


def _organised(tmp_path, name, defect):
    import tifffile

    h = w = 40
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / w
    z = np.zeros((h, w), np.float32)
    obj = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.09
    z[obj] = 0.2 * np.sqrt(np.maximum(0.09 - ((yy - 0.5) ** 2 + (xx - 0.5) ** 2), 0))[obj] + 0.02
    xyz = np.stack([xx, yy, z], axis=2)
    xyz[0, :5] = 0  # a few missing points
    folder = tmp_path / "m3d" / "bagel" / ("test" if defect else "train") / (defect or "good")
    (folder / "xyz").mkdir(parents=True)
    tifffile.imwrite(folder / "xyz" / f"{name}.tiff", xyz)
    if defect:
        gt = np.zeros((h, w), np.uint8)
        gt[15:25, 15:25] = 255
        (folder / "gt").mkdir()
        Image.fromarray(gt).save(folder / "gt" / f"{name}.png")
    return folder


def test_mvtec3d_organised_cloud_labels_normals_and_plane_removal(tmp_path, source):
    folder = _organised(tmp_path, "000", "hole")
    cloud = read_organised(folder / "xyz" / "000.tiff", folder / "gt" / "000.png")
    # The flat table (z = 0 on the border) is removed; the dome stays, with its labelled patch.
    assert 0 < len(cloud.points) < 40 * 40 - 5
    assert cloud.points[:, 2].min() > 0.005
    assert cloud.labels.sum() == 100 and cloud.normals.shape == cloud.points.shape
    _organised(tmp_path, "000", None)
    frame = read_mvtec3d(source("mvtec3d", "m3d"), tmp_path, settings=SETTINGS)
    assert len(frame) == 6 and sorted(frame["split"].unique()) == ["test", "train"]
    assert set(frame.loc[frame["label"] == "anomaly", "defect_type"]) == {"hole"}
    assert frame.groupby("group").size().tolist() == [3, 3]


def _dark_specks(image_path) -> int:
    """Pixels of the object darker than their 5 x 5 neighbourhood's median by 25 grey levels (see-through specks)."""
    from scipy.ndimage import median_filter

    grey = np.asarray(Image.open(image_path).convert("L")).astype(int)
    median = median_filter(grey, 5)
    return int(((grey < median - 25) & (median > 60)).sum())


def test_a_real3d_cloud_at_scan_density_renders_without_see_through_specks(tmp_path, source, monkeypatch):
    # A Real3D-AD layout with a 20,000-point sphere, read and rendered as a user's scan would be (128 px, 4 views):
    # the gaps random sampling leaves between splats must not show the far side as dark specks.
    import anomaly_ov.data.pointcloud as pointcloud

    root = tmp_path / "real3d" / "ball"
    write_pcd(root / "train" / "ball_template0.pcd", synthetic_object("sphere", 2000, 1).points)
    write_pcd(root / "test" / "10_good.pcd", synthetic_object("sphere", 20000, 5).points)
    settings = RenderSettings(views=4, image_size=128)

    def specks(name: str) -> int:
        params = source("real3d", "real3d", role="eval").model_copy(update={"name": name})  # its own render folder
        frame = read_real3d(params, tmp_path, settings=settings)
        views = frame[frame["split"] == "test"]
        assert len(views) == 4
        return sum(_dark_specks(tmp_path / row.root / row.image_path) for row in views.itertuples())

    assert specks("filled") == 0
    monkeypatch.setattr(pointcloud, "fill_see_through", lambda index, *args, **kwargs: index)
    assert specks("unfilled") > 20  # the same scan without the fill: the far side shows through
