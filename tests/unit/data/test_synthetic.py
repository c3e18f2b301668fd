"""Synthetic industrial generator: determinism, exact masks on the object, distinct normals, both layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import SyntheticParams
from anomaly_ov.data.synthetic import CATEGORIES, DEFECT_TYPES, generate_industrial, image_rng, make_sample

SIZE = 64


def tiny(**kwargs) -> SyntheticParams:
    values = dict(
        image_size=SIZE,
        train_categories=["fabric", "screw"],
        eval_categories=["round_part"],
        train_normal_per_category=2,
        test_normal_per_category=1,
        test_anomaly_per_category=3,
    )
    values.update(kwargs)
    return SyntheticParams(**values)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different_images(tmp_path):
    params = tiny()
    first = generate_industrial(params, tmp_path / "a", seed=3)
    generate_industrial(params, tmp_path / "b", seed=3)
    generate_industrial(params, tmp_path / "c", seed=4)
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith((".png", ".JPG")) and "ground_truth" not in k and "Masks" not in k]
    assert images and all(a[k] != c[k] for k in images)
    assert first["images"] == 3 * (2 + 1 + 3)


def test_training_categories_may_draw_more_images(tmp_path):
    generate_industrial(tiny(training_normals_per_category=4, training_anomalies_per_category=5), tmp_path, seed=0)
    fabric = tmp_path / "mvtec" / "fabric"
    assert len(list((fabric / "train" / "good").glob("*.png"))) == 4
    assert len([p for p in (fabric / "test").rglob("*.png") if p.parent.name != "good"]) == 5
    visa_rows = (tmp_path / "visa" / "split_csv" / "1cls.csv").read_text().splitlines()[1:]
    assert sum(",normal," in r for r in visa_rows) == 2 + 1 and sum(",anomaly," in r for r in visa_rows) == 3


def test_layouts_and_counts(tmp_path):
    summary = generate_industrial(tiny(), tmp_path / "out", seed=0)
    mvtec, visa = tmp_path / "out" / "mvtec", tmp_path / "out" / "visa"
    assert len(list((mvtec / "fabric" / "train" / "good").glob("*.png"))) == 2
    assert len(list((mvtec / "screw" / "test" / "good").glob("*.png"))) == 1
    anomalies = [p for p in (mvtec / "fabric" / "test").rglob("*.png") if p.parent.name != "good"]
    assert len(anomalies) == 3
    for image in anomalies:
        mask = mvtec / "fabric" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        values = np.unique(np.asarray(Image.open(mask)))
        assert set(values.tolist()) == {0, 255}
    assert not (mvtec / "fabric" / "ground_truth" / "good").exists()
    lines = (visa / "split_csv" / "1cls.csv").read_text().splitlines()
    assert lines[0] == "object,split,label,image,mask"
    assert len(lines) == 1 + 2 + 1 + 3
    assert (visa / "round_part" / "image_anno.csv").is_file()
    assert sum(summary["per_category"]["fabric"].values()) == 6
    with Image.open(next((visa / "round_part" / "Data" / "Images" / "Anomaly").glob("*.JPG"))) as image:
        assert image.format == "JPEG" and image.size == (SIZE, SIZE)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_masks_are_exactly_where_the_defect_was_painted(category):
    for i, defect in enumerate(CATEGORIES[category].defects):
        normal, image, mask = make_sample(category, SIZE, 0, "test_anomaly", i, defect)
        changed = np.any(normal != image, axis=-1)
        inside = mask > 0
        assert inside.any(), (category, defect)
        assert np.array_equal(changed, inside), (category, defect)
        assert 0.003 <= inside.mean() <= 0.15, (category, defect, inside.mean())
        # big enough a change to see: every masked pixel moved by at least ~0.1 on some channel
        delta = np.abs(normal.astype(int) - image.astype(int)).max(-1)
        assert delta[inside].min() >= 25, (category, defect)
        region = CATEGORIES[category].render(image_rng(0, category, "test_anomaly", i), SIZE).region
        assert not (inside & ~region).any(), f"{defect} left the {category}"


def test_normal_images_have_no_mask_and_are_all_different():
    seen = set()
    for category in CATEGORIES:
        for part in ("train_good", "test_good"):
            for i in range(4):
                normal, image, mask = make_sample(category, SIZE, 0, part, i)
                assert mask is None and np.array_equal(normal, image)
                seen.add(hashlib.sha256(image.tobytes()).hexdigest())
    assert len(seen) == len(CATEGORIES) * 2 * 4


def test_every_defect_type_is_used_and_override(tmp_path):
    used = {d for c in CATEGORIES.values() for d in c.defects}
    assert used == set(DEFECT_TYPES)
    kinds = {c.kind for c in CATEGORIES.values()}
    assert kinds == {"texture", "object"} and len(CATEGORIES) >= 8
    params = tiny(eval_categories=[], train_categories=["pill"], defect_types={"pill": ["hole"]})
    summary = generate_industrial(params, tmp_path / "o", seed=0)
    assert summary["per_category"]["pill"] == {"good": 3, "hole": 3}
    assert not (tmp_path / "o" / "visa").exists()


def test_bad_params(tmp_path):
    with pytest.raises(ValueError, match=r"categories \['pcb'\] are both train and eval"):
        generate_industrial(tiny(train_categories=["pcb"], eval_categories=["pcb"]), tmp_path / "x", 0)
    with pytest.raises(ValueError, match=r"unknown categories \['glass'\]"):
        generate_industrial(tiny(train_categories=["glass"]), tmp_path / "x", 0)
    with pytest.raises(ValueError, match=r"defect_types.fabric: unknown defect\(s\) \['dent'\]"):
        generate_industrial(tiny(defect_types={"fabric": ["dent"]}), tmp_path / "x", 0)
    assert not (tmp_path / "x").exists()


def test_regeneration_replaces_the_folder(tmp_path):
    out = tmp_path / "out"
    generate_industrial(tiny(), out, seed=0)
    (out / "stale.txt").write_text("left over")
    generate_industrial(tiny(), out, seed=0)
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


#: training families whose *normal* images hold what the held-out categories' defects and normal parts look like
DARK_PARTS = ("perforated", "mesh", "nut", "bottle", "ic_chip", "keypad", "connector", "dice")
#: objects with holes through them (the table shows through, as through round_part's bolt holes)
HOLED = ("button", "nut", "gear")
LOOK_ALIKES = DARK_PARTS + HOLED


@pytest.mark.parametrize("category", HOLED)
def test_holed_families_have_holes_through_the_object(category):
    from scipy import ndimage

    holed = 0
    for i in range(6):
        region = CATEGORIES[category].render(image_rng(0, category, "train_good", i), 128).region
        outside, count = ndimage.label(~region)
        border = set(np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])))
        holed += any(k not in border for k in range(1, count + 1))
    assert holed >= 4  # most normal images (gears may have a bore only, still a hole)


@pytest.mark.parametrize("category", DARK_PARTS)
def test_look_alike_families_have_dark_parts_in_their_normal_images(category):
    # a hole, a socket, a pip, a chip body: dark pixels well inside a normal image of these families, so "dark spot"
    # cannot be the expert's rule for "defect"
    dark = []
    for i in range(4):
        image = make_sample(category, 128, 0, "train_good", i)[1].astype(np.float32) / 255
        inner = image[16:-16, 16:-16].mean(-1)
        dark.append(float((inner < 0.25).mean()))
    assert min(dark) > 0.003, dark


def test_default_params_train_on_many_families_and_hold_out_pcb_and_round_part():
    from anomaly_ov.config import load_params

    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml").data.synthetic
    assert set(params.eval_categories) == {"pcb", "round_part"}
    assert not set(params.train_categories) & set(params.eval_categories)
    assert len(params.train_categories) >= 20 and set(LOOK_ALIKES) <= set(params.train_categories)
    kinds = {CATEGORIES[c].kind for c in params.train_categories}
    assert kinds == {"texture", "object"}


MOUNTED = ("metal", "tiles", "fabric", "leather")


@pytest.mark.parametrize("category", MOUNTED)
def test_families_with_optional_mounted_parts_draw_them_on_some_normal_images(category, monkeypatch):
    from anomaly_ov.data import synthetic

    drawn = []
    real = synthetic._mount_parts

    def spy(rng, image, chance=0.5):
        out, counts = real(rng, image, chance)
        drawn.append(not np.array_equal(out, image))
        return out, counts

    monkeypatch.setattr(synthetic, "_mount_parts", spy)
    recorded = []
    for i in range(12):
        render = CATEGORIES[category].render(image_rng(0, category, "train_good", i), SIZE)
        recorded.append(sum(render.normal_parts.values()) > 0)
    assert len(drawn) == 12 and 0 < sum(drawn) < 12, drawn  # present on some normal images, absent on others
    assert recorded == drawn  # the render records exactly the images that got parts


def test_mounted_parts_are_small_sharp_additions_and_optional():
    from anomaly_ov.data.synthetic import _mount_parts

    image = np.full((128, 128, 3), 0.5, np.float32)
    out, counts = _mount_parts(np.random.default_rng(0), image, chance=0.0)
    assert np.array_equal(out, image) and sum(counts.values()) == 0
    kinds = set()
    for seed in range(8):
        out, counts = _mount_parts(np.random.default_rng(seed), image, chance=1.0)
        changed = np.abs(out - image).max(-1) > 0
        assert 0.003 < changed.mean() < 0.15, (seed, changed.mean())
        assert np.array_equal(image, np.full_like(image, 0.5))  # the input is left as it was
        assert 1 <= sum(counts.values()) <= 2, counts
        kinds |= {k for k, n in counts.items() if n}
    assert len(kinds) >= 2, kinds


def test_visa_sample_names_the_draw_of_every_written_image(tmp_path):
    """Re-drawing each VisA image from the (part, index) its name gives reproduces the written file byte for byte."""
    from anomaly_ov.data.synthetic import _jpeg_bytes, visa_sample

    params = tiny(eval_categories=["pcb", "round_part"], train_normal_per_category=3, test_normal_per_category=2)
    generate_industrial(params, tmp_path, seed=5)
    visa = tmp_path / "visa"
    rows = [line.split(",") for line in (visa / "split_csv" / "1cls.csv").read_text().splitlines()[1:]]
    assert len(rows) == 2 * (3 + 2 + 3)
    for category in ("pcb", "round_part"):
        defects = dict(line.split(",")[:2] for line in
                       (visa / category / "image_anno.csv").read_text().splitlines()[1:])
        for name in (r[3] for r in rows if r[0] == category):
            part, index = visa_sample(name, params.train_normal_per_category)
            defect = None if defects[name] == "normal" else defects[name]
            drawn = make_sample(category, SIZE, 5, part, index, defect)[1]
            assert _jpeg_bytes(drawn) == (visa / name).read_bytes(), name
    with pytest.raises(ValueError, match="not an image of the synthetic VisA layout"):
        visa_sample("pcb/Data/Masks/Anomaly/000.png", 3)


@pytest.mark.parametrize(("category", "part", "dark_when_present"), [("pcb", "chips", True),
                                                                      ("round_part", "bolt_holes", False)])
def test_renders_record_the_optional_normal_parts_they_drew(category, part, dark_when_present):
    """pcb: 0 or 1 chip, and a board with a chip has its dark body; round part: 0 or 3-6 bolt holes through it."""
    counts, dark = [], []
    for i in range(16):
        render = CATEGORIES[category].render(image_rng(0, category, "train_good", i), 128)
        counts.append(render.normal_parts[part])
        inside = render.image[render.region]  # the board's / part's own pixels
        dark.append(int((inside.max(-1) < 0.2).sum()))  # a chip body's pixels (a pad's drill hole: a dozen at most)
    allowed = {0, 1} if part == "chips" else {0, 3, 4, 5, 6}
    assert set(counts) <= allowed and 0 in counts and any(c > 0 for c in counts), counts  # optional: both occur
    if dark_when_present:  # a chip body is a few hundred dark pixels
        assert all((d > 100) == (c > 0) for c, d in zip(counts, dark, strict=True)), (counts, dark)
