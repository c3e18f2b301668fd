"""Point-cloud loaders, normals, the z-buffered splat renderer and the synthetic 3D set."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scipy.spatial import cKDTree

from anomaly_ov.data.pointcloud import (
    SYNTHETIC_SHAPES,
    Cloud,
    PointCloudError,
    camera_ring,
    defect_from_name,
    fill_see_through,
    generate_synthetic_3d,
    load_point_cloud,
    normalisation,
    normals_grid,
    normals_pca,
    normals_sharp,
    project,
    read_pcd,
    read_ply,
    render_view,
    render_views,
    splat_radius,
    synthetic_object,
    write_pcd,
)
from anomaly_ov.data.pointcloud import _sample_shape as sample_shape  # the generator's exact normals


def test_camera_ring_is_orthonormal_and_evenly_spaced():
    cams = camera_ring(4, elevation_deg=30.0)
    assert [round(c.azimuth) for c in cams] == [45, 135, 225, 315]
    for cam in cams:
        np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
        assert cam.rotation[1, 2] > 0  # "up" has a positive world-z component


def test_known_points_land_on_expected_pixels():
    cam = camera_ring(1, elevation_deg=0.0, azimuth_offset_deg=0.0)[0]  # camera on +x looking at the origin
    centre, scale, size = np.zeros(3), 1.0, 100
    right, up = cam.rotation[0], cam.rotation[1]
    points = np.stack([np.zeros(3), 0.5 * right, 0.5 * up])
    row, col, depth = project(points, cam, size, centre, scale)
    # margin 0.9: x = 0.5 -> col = (0.5 * 0.9 * 0.5 + 0.5) * 100 = 72.5; y = 0.5 -> row = (0.5 - 0.225) * 100
    np.testing.assert_allclose(col, [50.0, 72.5, 50.0])
    np.testing.assert_allclose(row, [50.0, 50.0, 27.5])
    # Depth grows away from the camera (+x is nearer).
    _, _, d = project(np.array([[1.0, 0, 0], [-1.0, 0, 0]]), cam, size, centre, scale)
    assert d[0] < d[1]


def test_labelled_point_paints_the_mask_and_occluded_points_do_not():
    cam = camera_ring(1, elevation_deg=0.0, azimuth_offset_deg=0.0)[0]
    size, centre, scale = 20, np.zeros(3), 1.0
    normals = np.tile([1.0, 0, 0], (3, 1))
    # Two points on the same ray: the front one (+x, nearer) is normal, the back one anomalous; a third point
    # elsewhere is anomalous and unoccluded.
    points = np.array([[0.5, 0, 0], [-0.5, 0, 0], [0.0, 0.6, 0.0]])
    labels = np.array([0, 1, 1], np.uint8)
    view = render_view(points, normals, labels, cam, size, centre, scale, radius=0)
    r0, c0, _ = project(points, cam, size, centre, scale)
    front = (int(r0[0]), int(c0[0]))
    other = (int(r0[2]), int(c0[2]))
    assert view.point_index[front] == 0  # the nearer point wins the z-buffer
    assert not view.mask[front]
    assert view.mask[other]
    assert view.mask.sum() == 1
    assert view.image[front].max() > 0 and view.image[0, 0].max() == 0  # background stays black
    # Swap the labels: now the front point is anomalous and paints the mask.
    view2 = render_view(points, normals, np.array([1, 0, 0], np.uint8), cam, size, centre, scale, radius=0)
    assert view2.mask[front] and view2.mask.sum() == 1


def test_splats_cover_neighbours_but_nearest_wins():
    cam = camera_ring(1, elevation_deg=0.0, azimuth_offset_deg=0.0)[0]
    points = np.array([[0.5, 0, 0], [-0.5, 0, 0]])
    view = render_view(points, np.tile([1.0, 0, 0], (2, 1)), np.array([0, 1], np.uint8), cam, 21, np.zeros(3), 1.0,
                       radius=2)
    assert (view.point_index == 0).sum() == (view.point_index >= 0).sum() > 1
    assert not view.mask.any()


def test_fill_see_through_closes_pinholes_and_slits_but_keeps_wide_holes_and_slopes():
    size = 24
    depth = np.array([0.0, 1.0])  # point 0: the front surface; point 1: far behind it
    index = np.zeros((size, size), dtype=np.int64)
    index[5, 5] = 1  # a pinhole showing the far side
    index[10, 3:9] = 1  # a one-pixel slit
    index[1:8, 12:15] = 1  # a slit three pixels wide
    index[14:22, 14:22] = 1  # a hole 8 pixels wide: a real hole keeps its far side
    index[2, 20] = -1  # a background pixel inside the surface
    filled = fill_see_through(index, depth, reach=2, gap=0.1)
    assert filled[5, 5] == 0 and (filled[10, 3:9] == 0).all() and (filled[1:8, 12:15] == 0).all()
    assert filled[2, 20] == 0
    assert (filled[14:22, 14:22] == 1).all()  # the whole hole, its rim included
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - 12) ** 2 + (xx - 12) ** 2 <= 9).astype(np.int64)  # a round hole 7 px across keeps its size
    np.testing.assert_array_equal(fill_see_through(disc, depth, reach=2, gap=0.1), disc)
    assert (index[5, 5], index[2, 20]) == (1, -1)  # the input is left as it was
    # a steep smooth slope (depth rises 0.3 per pixel) is one surface, not a gap: nothing changes
    slope = np.arange(size * size, dtype=np.int64).reshape(size, size)
    ramp = np.repeat(np.arange(size) * 0.3, size)
    np.testing.assert_array_equal(fill_see_through(slope, ramp, reach=2, gap=0.1), slope)
    # the silhouette keeps its shape: background beside the object is not between two of its pixels
    blob = np.full((size, size), -1, dtype=np.int64)
    blob[6:18, 6:18] = 0
    np.testing.assert_array_equal(fill_see_through(blob, depth, reach=2, gap=0.1), blob)


def test_a_densely_sampled_sphere_shows_only_its_front_side():
    # Randomly sampled points leave gaps wider than the median spacing; without the fill the far side of the
    # sphere shows through them as dark specks (which look like defects to the expert).
    cloud = synthetic_object("sphere", 20000, seed=5)
    normals = normals_pca(cloud.points, 16)
    centre, scale = normalisation(cloud.points)
    radius = splat_radius(cloud.points, 128, scale)
    cam = camera_ring(1)[0]

    def far_side_pixels(fill_reach: int) -> int:
        view = render_view(cloud.points, normals, cloud.labels, cam, 128, centre, scale, radius,
                           fill_reach=fill_reach)
        shown = cloud.points[view.point_index[view.point_index >= 0]] - centre
        return int(((shown @ cam.rotation[2]) / np.linalg.norm(shown, axis=1) > 0.2).sum())

    assert far_side_pixels(0) > 10
    assert far_side_pixels(2) == 0


def _turned_box(n: int, turn_deg: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Points and exact normals of a box (half sizes 0.5, 0.5, 0.6) turned about z; also its turn and half sizes."""
    points, normals = sample_shape("box", n, np.random.default_rng(seed))
    half = np.abs(points).max(axis=0)
    a = np.deg2rad(turn_deg)
    turn = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return points @ turn.T, normals @ turn.T, turn, half


def test_the_edge_between_two_faces_renders_as_a_straight_line():
    # Square splats with a hard z-test let each face's splats poke across the edge into the other face in a random
    # comb (box and cylinder edges rendered as a sawtooth band, which looks like damage to the expert). With the
    # tangent-plane footprints blended near the front surface, the shade changes at the same column on every row.
    points, normals, turn, half = _turned_box(30000, turn_deg=20.0)
    cam = camera_ring(1)[0]
    centre, scale = normalisation(points)
    view = render_view(points, normals, np.zeros(len(points)), cam, 128, centre, scale,
                       splat_radius(points, 128, scale))
    corner = turn @ np.array([half[0], half[1], 0.0])  # the vertical edge facing the camera
    ends = np.stack([corner + [0, 0, 0.7 * half[2]], corner - [0, 0, 0.7 * half[2]]])
    (top, bottom), _, _ = project(ends, cam, 128, centre, scale)
    _, (col,), _ = project(corner[None], cam, 128, centre, scale)
    image, c = view.image[..., 0].astype(float), int(col)
    left = float(np.median(image[int(top):int(bottom), c - 8:c - 4]))
    right = float(np.median(image[int(top):int(bottom), c + 4:c + 8]))
    assert abs(left - right) > 40  # the two faces are shaded apart
    middle, towards_right = (left + right) / 2, np.sign(right - left)
    crossings = np.array([int(np.argmax((image[r, c - 6:c + 7] - middle) * towards_right > 0))
                          for r in range(int(top), int(bottom))])
    teeth = np.abs(crossings - np.median(crossings)) > 1
    assert len(crossings) > 30 and not teeth.any()  # square splats: 17-39 % of the rows, seeds 0-3


def test_a_point_seen_edge_on_still_paints_its_own_pixel():
    cam = camera_ring(1, elevation_deg=0.0, azimuth_offset_deg=0.0)[0]  # looking along -x
    grazing = np.array([[0.0, 0.0, 1.0]])  # the normal lies in the image plane: the disc is seen edge-on
    for offset in (0.0, 0.49, -0.49):  # anywhere inside its pixel
        point = np.array([[0.0, 0.3, 0.2 + offset * 2.0 / 21 / 0.9]])
        view = render_view(point, grazing, np.ones(1, np.uint8), cam, 21, np.zeros(3), 1.0, radius=0)
        row, col, _ = project(point, cam, 21, np.zeros(3), 1.0)
        assert view.point_index[int(row[0]), int(col[0])] == 0 and view.mask.sum() == 1


def test_an_anomalous_patch_keeps_its_mask_under_blending():
    points, normals, turn, half = _turned_box(30000, turn_deg=20.0)
    front = turn @ np.array([1.0, 0.0, 0.0])  # the +x face, turned
    on_face = np.isclose(points @ front, half[0])
    centre_of_face = turn @ np.array([half[0], 0.0, 0.0])
    labels = (on_face & (np.linalg.norm(points - centre_of_face, axis=1) < 0.15)).astype(np.uint8)
    cam = camera_ring(1)[0]
    centre, scale = normalisation(points)
    view = render_view(points, normals, labels, cam, 128, centre, scale, splat_radius(points, 128, scale))
    shown = view.point_index[view.mask]
    assert view.mask.sum() > 50
    assert (labels[shown] > 0).mean() > 0.9  # the mask is where the labelled points are shown
    # ... and covers them: every pixel whose front point is labelled, 2 px inside the patch's rim, is in the mask
    labelled = (view.point_index >= 0) & (labels[np.maximum(view.point_index, 0)] > 0)
    from scipy.ndimage import binary_erosion

    assert view.mask[binary_erosion(labelled, iterations=2)].all()


def _angle_errors_deg(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.abs((estimated * true).sum(axis=1)), 0.0, 1.0)))


@pytest.mark.parametrize("shape", ["box", "cylinder", "cone", "prism"])
def test_sharp_normals_keep_the_faces_of_an_edge(shape):
    # PCA over a neighbourhood that straddles an edge gives a normal between the two faces: rendered, a bright
    # speckled band along every edge. The sharp normals are the faces' own (the generator's exact normals).
    points, true = sample_shape(shape, 20000, np.random.default_rng(0))
    pca = _angle_errors_deg(normals_pca(points, 16), true)
    sharp = _angle_errors_deg(normals_sharp(points, 16), true)
    assert (pca > 20).mean() > 0.025  # 3-6 % of the points sit near an edge
    assert (sharp > 20).mean() < 0.1 * (pca > 20).mean()
    assert np.percentile(sharp, 99) < 12 < np.percentile(pca, 99)


@pytest.mark.parametrize("shape", ["sphere", "bowl", "torus", "capsule"])
def test_sharp_normals_leave_smooth_surfaces_as_pca_has_them(shape):
    points, _ = sample_shape(shape, 20000, np.random.default_rng(0))
    np.testing.assert_array_equal(normals_sharp(points, 16), normals_pca(points, 16))


def test_sharp_normals_on_a_noisy_scan():
    # a scanner's noise (0.3 of the point spacing): edges still improve, a smooth surface does not get worse
    for shape in ("box", "torus"):
        points, true = sample_shape(shape, 20000, np.random.default_rng(0))
        spacing = float(np.median(cKDTree(points).query(points, k=[2])[0]))
        noisy = points + np.random.default_rng(1).normal(0.0, 0.3 * spacing, points.shape)
        pca = _angle_errors_deg(normals_pca(noisy, 16), true)
        sharp = _angle_errors_deg(normals_sharp(noisy, 16), true)
        assert sharp.mean() <= pca.mean() + 0.05
        if shape == "box":
            assert (sharp > 20).mean() < 0.5 * (pca > 20).mean()


def test_pca_normals_of_a_plane_and_grid_normals():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-1, 1, (400, 2)), np.zeros(400)]
    normals = normals_pca(plane, k=8)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-6)
    yy, xx = np.mgrid[0:5, 0:6].astype(float)
    xyz = np.stack([xx, yy, np.zeros_like(xx)], axis=2)
    valid = np.ones((5, 6), bool)
    valid[0, 0] = False
    grid, ok = normals_grid(xyz, valid)
    assert ok[2, 2] and not ok[0, 0] and not ok[1, 0]  # missing neighbours -> not ok
    np.testing.assert_allclose(np.abs(grid[2, 2]), [0, 0, 1], atol=1e-12)


@pytest.mark.parametrize("binary", [True, False])
def test_pcd_round_trip(tmp_path, binary):
    points = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    labels = (np.arange(50) % 5 == 0).astype(np.uint8)
    write_pcd(tmp_path / "c.pcd", points, binary=binary, labels=labels)
    cloud = load_point_cloud(tmp_path / "c.pcd")
    np.testing.assert_allclose(cloud.points, points, atol=1e-5)
    np.testing.assert_array_equal(cloud.labels, labels)


def test_binary_compressed_pcd_with_back_references(tmp_path):
    # x, y, z = [1, 1] each: 24 bytes of float 1.0; LZF: a 4-byte literal (ctrl 3), then a back-reference of 20 bytes
    # at distance 4 (ctrl 0xE0 = length 7+, offset high bits 0; extra length 20 - 2 - 7 = 11; offset low byte 3).
    raw = np.ones(6, "<f4").tobytes()
    compressed = b"\x03" + raw[:4] + b"\xe0\x0b\x03"
    header = (b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nHEIGHT 1\n"
              b"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA binary_compressed\n")
    (tmp_path / "z.pcd").write_bytes(header + struct.pack("<II", len(compressed), len(raw)) + compressed)
    np.testing.assert_array_equal(read_pcd(tmp_path / "z.pcd")["y"], [1.0, 1.0])
    # a larger, compressible cloud with normals in PCL's names (normal_x ...) and a label, written by pypcd4
    from pypcd4 import Encoding, PointCloud

    rng = np.random.default_rng(0)
    points = np.round(rng.normal(size=(500, 3)), 2).astype(np.float32)
    normals = np.tile(np.array([0, 0, 1], np.float32), (500, 1))
    labels = (np.arange(500) % 7 == 0).astype(np.uint32)
    columns = [*points.T, *normals.T, labels]
    names = ("x", "y", "z", "normal_x", "normal_y", "normal_z", "label")
    types = [np.float32] * 6 + [np.uint32]
    PointCloud.from_points(columns, names, types).save(tmp_path / "c.pcd", encoding=Encoding.BINARY_COMPRESSED)
    assert len((tmp_path / "c.pcd").read_bytes()) < 500 * 28  # really compressed
    cloud = load_point_cloud(tmp_path / "c.pcd")
    np.testing.assert_array_equal(cloud.points, points)
    np.testing.assert_array_equal(cloud.normals, normals)
    np.testing.assert_array_equal(cloud.labels, labels > 0)


def test_pcd_ascii_fields_keep_their_declared_types(tmp_path):
    header = (b"VERSION 0.7\nFIELDS x y z label\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH 2\nHEIGHT 1\n"
              b"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n")
    (tmp_path / "a.pcd").write_bytes(header + b"0.1 0.2 0.3 0\n1.5 2.5 3.5 1\n")
    fields = read_pcd(tmp_path / "a.pcd")
    assert fields["x"].dtype == np.float32 and fields["label"].dtype == np.uint32
    np.testing.assert_array_equal(fields["x"], np.array([0.1, 1.5], np.float32))


def test_broken_pcd_files_name_the_file(tmp_path):
    header = (b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 5\nHEIGHT 1\n"
              b"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 5\nDATA binary\n")
    (tmp_path / "short.pcd").write_bytes(header + np.zeros(3, "<f4").tobytes())  # 1 point of 5
    with pytest.raises(PointCloudError, match=r"short\.pcd: the header says 5 points but the file holds 1"):
        read_pcd(tmp_path / "short.pcd")
    (tmp_path / "junk.pcd").write_bytes(b"hello\n")
    with pytest.raises(PointCloudError, match=r"junk\.pcd: not a readable PCD file"):
        load_point_cloud(tmp_path / "junk.pcd")
    corrupt = header.replace(b"binary", b"binary_compressed").replace(b"5", b"1")
    (tmp_path / "lzf.pcd").write_bytes(corrupt + struct.pack("<II", 16, 12) + b"\xff" * 16)
    with pytest.raises(PointCloudError, match=r"lzf\.pcd: not a readable PCD file"):
        read_pcd(tmp_path / "lzf.pcd")


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_formats_give_declared_types_in_native_order(tmp_path, fmt):
    records = np.array([(0.5, -1.0, 2.25, 200, 1), (1.0, 2.0, 3.0, 7, 0)],
                       dtype=[("x", "f4"), ("y", "f4"), ("z", "f8"), ("red", "u1"), ("label", "i4")])
    header = (f"ply\nformat {fmt} 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty double z\n"
              "property uchar red\nproperty int label\nend_header\n").encode()
    if fmt == "ascii":
        body = b"0.5 -1 2.25 200 1\n1 2 3 7 0\n"
    else:
        body = records.astype(records.dtype.newbyteorder("<" if "little" in fmt else ">")).tobytes()
    (tmp_path / "v.ply").write_bytes(header + body)
    fields = read_ply(tmp_path / "v.ply")
    for name in records.dtype.names:
        assert fields[name].dtype == records.dtype[name] and fields[name].dtype.isnative, name
        np.testing.assert_array_equal(fields[name], records[name])
    (tmp_path / "short.ply").write_bytes(header + body[: len(body) // 2])
    with pytest.raises(PointCloudError, match=r"short\.ply"):
        read_ply(tmp_path / "short.ply")


def test_ply_ascii_and_binary(tmp_path):
    ascii_ply = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n" \
                "property uchar label\nend_header\n0 0 0 0\n1 2 3 1\n"
    (tmp_path / "a.ply").write_text(ascii_ply)
    cloud = load_point_cloud(tmp_path / "a.ply")
    np.testing.assert_array_equal(cloud.points[1], [1, 2, 3])
    np.testing.assert_array_equal(cloud.labels, [0, 1])
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n" \
             b"property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
    body = np.array([[0, 0, 0], [4, 5, 6]], "<f4").tobytes()
    (tmp_path / "b.ply").write_bytes(header + body)
    np.testing.assert_array_equal(load_point_cloud(tmp_path / "b.ply").points[1], [4, 5, 6])


def test_npy_txt_and_errors(tmp_path):
    np.save(tmp_path / "p.npy", np.array([[0, 0, 0, 1], [1, 1, 1, 0]], float))
    assert list(load_point_cloud(tmp_path / "p.npy").labels) == [1, 0]
    (tmp_path / "g.txt").write_text("0 0 0 0\n1 1 1 1\n")
    assert list(load_point_cloud(tmp_path / "g.txt").labels) == [0, 1]
    (tmp_path / "bad.txt").write_text("0 0\n")
    with pytest.raises(PointCloudError, match="bad.txt"):
        load_point_cloud(tmp_path / "bad.txt")
    with pytest.raises(PointCloudError, match="unknown point-cloud format"):
        (tmp_path / "x.obj").write_text("v 0 0 0\n")
        load_point_cloud(tmp_path / "x.obj")


def test_defect_names():
    assert defect_from_name("012_bulge") == "bulge"
    assert defect_from_name("ashtray0_crack1") == "crack"
    assert defect_from_name("339_good") == "good"
    assert defect_from_name("ashtray0_positive2") == "good"


def test_synthetic_objects_render_visible_defects_deterministically(tmp_path):
    a = synthetic_object("cylinder", 3000, seed=3, defect="dent")
    b = synthetic_object("cylinder", 3000, seed=3, defect="dent")
    np.testing.assert_array_equal(a.points, b.points)
    assert 0 < a.labels.sum() < len(a.labels)
    views = render_views(a, views=4, size=48)
    assert len(views) == 4
    assert all(v.image.shape == (48, 48, 3) for v in views)
    assert sum(int(v.mask.sum()) for v in views) > 0
    normal = render_views(synthetic_object("box", 3000, seed=1), views=2, size=32)
    assert not any(v.mask.any() for v in normal)
    out = generate_synthetic_3d(tmp_path / "s", shapes=("bowl",), normal_per_shape=1, anomaly_per_shape=2,
                                train_per_shape=1, points_per_object=500)
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["bowl/gt/001_dent.txt", "bowl/gt/002_bump.txt", "bowl/test/000_good.pcd",
                     "bowl/test/001_dent.pcd", "bowl/test/002_bump.pcd", "bowl/train/bowl_template_0.pcd"]


def test_cloud_subsample_keeps_anomalies():
    labels = np.zeros(1000, np.uint8)
    labels[:10] = 1
    cloud = Cloud(np.random.default_rng(0).normal(size=(1000, 3)), labels).subsample(100, seed=0)
    assert len(cloud.points) == 100 and cloud.labels.sum() == 10


def test_pcd_with_padding_fields(tmp_path):
    header = (b"VERSION 0.7\nFIELDS x y z _ _\nSIZE 4 4 4 1 1\nTYPE F F F U U\nCOUNT 1 1 1 1 1\nWIDTH 1\nHEIGHT 1\n"
              b"POINTS 1\nDATA binary\n")
    body = np.array([1.0, 2.0, 3.0], "<f4").tobytes() + b"\x00\x00"
    (tmp_path / "p.pcd").write_bytes(header + body)
    np.testing.assert_array_equal(load_point_cloud(tmp_path / "p.pcd").points, [[1, 2, 3]])


@pytest.mark.parametrize("shape", SYNTHETIC_SHAPES)
def test_every_synthetic_shape_is_a_closed_surface_with_outward_normals(shape):
    from anomaly_ov.data.pointcloud import _sample_shape

    points, normals = _sample_shape(shape, 4000, np.random.default_rng(0))
    assert points.shape == normals.shape == (4000, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    assert np.abs(points).max() < 1.0  # inside the unit cube the renderer frames
    if shape == "torus":  # normals point away from the tube's centre circle, in the plane z = 0
        flat = np.abs(normals[:, 2]) > 0.5
        tube = float(np.median(points[flat, 2] / normals[flat, 2]))
        assert tube > 0 and np.abs((points - tube * normals)[:, 2]).max() < 1e-6
    elif shape != "bowl":  # convex shapes: normals point away from the centroid (a bowl's face its inside)
        outward = ((points - points.mean(0)) * normals).sum(1) > -1e-3
        assert outward.mean() > 0.99, shape
    views = render_views(synthetic_object(shape, 3000, seed=2, defect="bump"), views=4, size=32)
    assert sum(int(v.mask.sum()) for v in views) > 0
