"""Plain folder reader: good/<defect> folders, optional masks (tree or beside), optional split level."""

from __future__ import annotations

import pytest

from anomaly_ov.data.manifest import check_schema
from anomaly_ov.data.sources import LayoutError, read_source


def test_flat_layout_with_masks_in_tree_and_beside(tmp_path, image, source):
    root = tmp_path / "f"
    image(root / "tile/good/a.png", size=(8, 6))
    image(root / "tile/crack/b.png")
    image(root / "tile/masks/crack/b.png", mask=True)
    image(root / "tile/glue/c.jpg")
    image(root / "tile/glue/c_mask.png", mask=True)
    image(root / "tile/glue/d.png")  # no mask: image-level anomaly
    frame = read_source(source("folder", "f", modality="medical"), tmp_path)
    assert check_schema(frame) == []
    got = {r.image_path: (r.label, r.defect_type, r.mask_path, r.split) for r in frame.itertuples()}
    assert got == {
        "tile/good/a.png": ("normal", "good", "", "test"),
        "tile/crack/b.png": ("anomaly", "crack", "tile/masks/crack/b.png", "test"),
        "tile/glue/c.jpg": ("anomaly", "glue", "tile/glue/c_mask.png", "test"),
        "tile/glue/d.png": ("anomaly", "glue", "", "test"),
    }
    assert set(frame["modality"]) == {"medical"}
    assert frame.loc[frame["image_path"] == "tile/good/a.png", ["width", "height"]].values.tolist() == [[8, 6]]


def test_split_level(tmp_path, image, source):
    root = tmp_path / "f"
    image(root / "tile/train/good/a.png")
    image(root / "tile/test/good/a.png")
    image(root / "tile/test/crack/b.png")
    image(root / "tile/test/masks/crack/b_mask.png", mask=True)
    frame = read_source(source("folder", "f"), tmp_path)
    assert sorted(zip(frame["split"], frame["image_path"], strict=True)) == [
        ("test", "tile/test/crack/b.png"),
        ("test", "tile/test/good/a.png"),
        ("train", "tile/train/good/a.png"),
    ]
    assert frame.loc[frame["defect_type"] == "crack", "mask_path"].item() == "tile/test/masks/crack/b_mask.png"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["tile/a.png"], r"a.png: image directly in the category folder"),
        (["tile/good/a.png", "tile/masks/crack/z.png"], r"masks for defect 'crack' but no folder"),
        (["tile/crack/a.png", "tile/masks/crack/q.png"], r"q.png: mask has no image"),
        (["tile/good/a.png", "tile/good/a_mask.png"], r"a_mask.png: mask for a normal \('good'\) image"),
        (["tile/train/good/a.png", "tile/crack/b.png"], r"mixes split folders \['train'\] with other folders"),
        (["tile/crack/a.png", "tile/crack/a_mask.png", "tile/masks/crack/a.png"], r"second mask for image 'a'"),
    ],
)
def test_layout_errors(tmp_path, image, source, files, message):
    for name in files:
        image(tmp_path / "f" / name, mask="mask" in name)
    with pytest.raises(LayoutError, match=message):
        read_source(source("folder", "f"), tmp_path)


def test_empty_category_and_filter(tmp_path, image, source):
    image(tmp_path / "f/tile/good/a.png")
    (tmp_path / "f/empty/good").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"category 'empty' has no images"):
        read_source(source("folder", "f"), tmp_path)
    assert len(read_source(source("folder", "f", categories=["tile"]), tmp_path)) == 1
