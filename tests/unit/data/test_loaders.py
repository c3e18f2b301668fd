"""Stage-1 / stage-2 datasets and collates on a handful of generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ov.data import loaders
from anomaly_ov.data.manifest import ManifestRow, from_rows


def _preprocess(image: Image.Image):
    arr = np.asarray(image.resize((16, 16)), dtype="float32") / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None], (image.height, image.width)


def _write(tmp_path: Path, n_normal: int = 3, n_anomaly: int = 3, with_masks: bool = True):
    root = tmp_path / "ds"
    rows = []
    for cat in ("a", "b"):
        for i in range(n_normal + n_anomaly):
            anomalous = i >= n_normal
            img = np.full((32, 32, 3), 100 + 10 * i, dtype="uint8")
            mask_rel = ""
            if anomalous:
                img[8:16, 8:16] = 250
                if with_masks:
                    mask = np.zeros((32, 32), dtype="uint8")
                    mask[8:16, 8:16] = 255
                    mask_rel = f"{cat}/mask_{i}.png"
                    (root / cat).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(root / mask_rel)
            rel = f"{cat}/img_{i}.png"
            (root / cat).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel)
            rows.append(ManifestRow(image_path=rel, root="ds", source="s", category=cat, split="test", role="train",
                                    label="anomaly" if anomalous else "normal",
                                    defect_type="spot" if anomalous else "good", mask_path=mask_rel,
                                    width=32, height=32))
    return from_rows(rows)


def test_expert_dataset_items_and_collate(tmp_path: Path) -> None:
    frame = _write(tmp_path)
    ds = loaders.ExpertDataset(frame, tmp_path, _preprocess, grid_size=4, mask_size=8)
    assert len(ds) == 12 and ds.labels.count(1) == 6
    item = ds[4]
    assert item["label"] == 1 and item["has_mask_target"]
    assert item["mask"].shape == (1, 8, 8) and item["mask"].sum() == 4  # the 8x8 square of 32x32 -> 2x2 at 8
    assert torch.allclose(item["mask_grid"][0, 1, 1], torch.tensor(1.0))  # cell (1,1) fully defective
    batch = loaders.collate_expert([ds[0], ds[4]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["crops_per_image"] == [1, 1]
    assert batch["labels"].tolist() == [0.0, 1.0]
    assert batch["masks"][0].sum() == 0


def test_anomaly_without_mask_takes_no_part_in_mask_loss(tmp_path: Path) -> None:
    frame = _write(tmp_path, with_masks=False)
    ds = loaders.ExpertDataset(frame, tmp_path, _preprocess, grid_size=4, mask_size=8)
    assert ds[0]["has_mask_target"] and not ds[4]["has_mask_target"]


def test_missing_image_names_file_and_row(tmp_path: Path) -> None:
    frame = _write(tmp_path)
    (tmp_path / "ds" / "a" / "img_1.png").unlink()
    ds = loaders.ExpertDataset(frame, tmp_path, _preprocess, grid_size=4, mask_size=8)
    with pytest.raises(loaders.DataError, match=r"img_1.png: image not found \(manifest row 1"):
        ds[1]


def test_stratified_split_is_deterministic_and_stratified(tmp_path: Path) -> None:
    frame = _write(tmp_path, n_normal=5, n_anomaly=5)
    train, held = loaders.stratified_split(frame, 0.2, seed=1)
    assert len(train) + len(held) == len(frame)
    assert held.groupby(["category", "label"]).size().tolist() == [1, 1, 1, 1]
    again, _ = loaders.stratified_split(frame, 0.2, seed=1)
    assert train.equals(again)
    assert set(train["image_path"] + train["category"]).isdisjoint(held["image_path"] + held["category"])


def test_instruct_records_validation_and_collate(tmp_path: Path) -> None:
    _write(tmp_path)
    records = [
        {"id": "x", "image": "ds/a/img_0.png",
         "conversations": [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "gpt", "value": "No"}]},
        {"id": "y", "image": ["ds/a/img_4.png"],
         "conversations": [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "gpt", "value": "Yes"}]},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    recs = loaders.read_instruct_records(path)
    assert loaders.record_images(recs[1]) == ["ds/a/img_4.png"]

    def encode(images, conversations):
        ids = torch.arange(3 + len(conversations[1]["value"]))
        labels = ids.clone()
        labels[:3] = -100
        pv = torch.stack([_preprocess(im)[0] for im in images])  # [n_images, 1, 3, 16, 16]
        return {"input_ids": ids, "labels": labels, "pixel_values": pv, "image_sizes": torch.tensor([[32, 32]])}

    ds = loaders.InstructDataset(recs, tmp_path, encode)
    batch = loaders.collate_instruct([ds[0], ds[1]], pad_token_id=0)
    assert batch["input_ids"].shape == (2, 6)
    assert batch["labels"][0, -1].item() == -100 and batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    assert batch["pixel_values"].shape == (2, 1, 3, 16, 16) and batch["image_sizes"].shape == (2, 2)

    path.write_text(json.dumps([{"id": "z", "conversations": [{"from": "bot", "value": "?"}]}]))
    with pytest.raises(loaders.DataError, match=r"record 0 \(id z\).*conversations\[0\]"):
        loaders.read_instruct_records(path)
