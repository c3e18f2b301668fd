"""The path a user with the real llava-hf LLaVA-OneVision 0.5B checkpoint takes, end to end through the stages, on
the shrunk hub-layout checkpoint of tests/real_layout.py: prepare -> synthesize -> train_expert (the
official expert as released, then one epoch) -> train_instruct (a few steps on 1500 x 1000 images) -> evaluate on
the official VisA-D&R files (test_data.json, visa_dr.json) -> register. One run shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from workspaces import SMALL_JOINED_EXTENSIONS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEIGHT, WIDTH = 1000, 1500
CLASSES = ("candle",)


def _image(rng, anomaly: bool) -> tuple[Image.Image, Image.Image]:
    img = (rng.random((HEIGHT, WIDTH)) * 60 + 40).astype(np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    if anomaly:
        img[300:420, 500:700] = 240
        mask[300:420, 500:700] = 255
    return Image.fromarray(np.stack([img] * 3, -1)), Image.fromarray(mask)


def _training_folder(root: Path) -> None:
    """<cat>/{good,spot}/*.png + <cat>/masks/spot/*.png at 1500 x 1000."""
    rng = np.random.default_rng(0)
    for cat in ("plate",):
        for i in range(3):
            for sub in ("good", "spot", "masks/spot"):
                (root / cat / sub).mkdir(parents=True, exist_ok=True)
            _image(rng, False)[0].save(root / cat / "good" / f"{i}.png")
            img, mask = _image(rng, True)
            img.save(root / cat / "spot" / f"{i}.png")
            mask.save(root / cat / "masks" / "spot" / f"{i}.png")


def _official_bench(root: Path) -> None:
    """data_root/VisA/<class>/Data/Images/{Normal,Anomaly}/*.JPG with the released test_data.json and visa_dr.json."""
    rng = np.random.default_rng(1)
    test, dr = [], []
    for cls in CLASSES:
        for i, anomaly in enumerate((False, True)):
            rel = f"VisA/{cls}/Data/Images/{'Anomaly' if anomaly else 'Normal'}/{i:03d}.JPG"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _image(rng, anomaly)[0].save(root / rel, format="JPEG")
            test.append({"image": rel, "anomaly": anomaly})
            if anomaly:
                dr.append({"image": rel, "questions": ["Is there any anomaly in the image?", "What caused it?"],
                           "answers": ["Yes, a bright patch in the middle.", "A handling mark."]})
    (root / "VisA" / "test_data.json").write_text(json.dumps(test))
    (root / "VisA" / "visa_dr.json").write_text(json.dumps(dr))


def _official_expert(path: Path) -> dict[str, torch.Tensor]:
    """An expert .pth as released: the bare state dict (release key names) in bf16, for the fixture's tower."""
    from real_layout import SHRUNK

    from anomaly_ov.model.expert import AnomalyExpert

    torch.manual_seed(5)
    expert = AnomalyExpert(hidden_size=SHRUNK["vision.hidden_size"][1], embed_dim=512, grid_size=27)
    state = {k: v.to(torch.bfloat16) for k, v in expert.state_dict().items()}
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def real_path_run(tmp_path_factory, real_layout_checkpoint):
    from anomaly_ov.config import load_params
    from anomaly_ov.stages import run_stage

    ws = tmp_path_factory.mktemp("real_path")
    _training_folder(ws / "datasets" / "parts")
    _official_bench(ws / "visa_dr")
    official = _official_expert(ws / "pretrained_expert_05b.pth")
    base = [
        "model.preset=llava-onevision-0.5b", f"model.checkpoint={real_layout_checkpoint}",
        f"model.expert_checkpoint={ws / 'pretrained_expert_05b.pth'}",
        "data.synthetic.enabled=false",
        "data.sources=[{name: parts, format: folder, path: datasets/parts, role: train}]",
        "train.expert.device=cpu", "train.expert.val_fraction=0.34", "train.expert.pretrained.batch_size=4",
        "train.instruct.device=cpu", "train.instruct.pretrained.batch_size=2", "train.instruct.pretrained.grad_accum=1",
        "train.instruct.pretrained.max_records=2",
        "evaluate.device=cpu", "evaluate.resolution=32", "evaluate.max_new_tokens=2",
        "evaluate.reasoning_max_new_tokens=4", "evaluate.figures_per_kind=0",
        "evaluate.test_data=visa_dr/VisA/test_data.json", "evaluate.reasoning_data=visa_dr/VisA/visa_dr.json",
        "evaluate.data_root=visa_dr",
        "extensions.medical.enabled=false", "extensions.threed.enabled=false", *SMALL_JOINED_EXTENSIONS,
        "registry.thresholds={}",
        "registry.min_images=1", "registry.min_per_label=1",  # a 2-image benchmark may pass the gate here
    ]
    summaries = {}
    for stage in ("prepare", "synthesize"):
        summaries[stage] = run_stage(stage, load_params(None, base), ws)
    summaries["train_expert_official"] = run_stage(
        "train_expert", load_params(None, [*base, "train.expert.pretrained.epochs=0"]), ws)
    official_saved = torch.load(ws / "models/expert/pretrained_expert.pth")
    params = load_params(None, [*base, "train.expert.pretrained.epochs=1"])
    summaries["train_expert"] = run_stage("train_expert", params, ws)
    for stage in ("train_instruct", "evaluate", "register"):
        summaries[stage] = run_stage(stage, params, ws)
    print("\nstage seconds: " + ", ".join(f"{k} {v.get('seconds', 0):.0f}" for k, v in summaries.items()))
    return ws, summaries, official, official_saved


def test_official_expert_shortcut_then_one_epoch(real_path_run):
    ws, s, official, official_saved = real_path_run
    assert s["train_expert_official"]["expert_source"] == "official_checkpoint"
    assert s["train_expert_official"]["steps"] == 0
    for key, value in official.items():
        assert torch.equal(official_saved[key].to(value.dtype), value), key
    assert s["train_expert"]["expert_source"] == "trained" and s["train_expert"]["steps"] >= 1
    info = json.loads((ws / "models/expert/expert.json").read_text())
    assert info["includes_vision_tower"] is False  # the checkpoint's tower stays the checkpoint's


def test_stage2_trains_on_release_sized_images(real_path_run):
    ws, s, _, _ = real_path_run
    report = json.loads((ws / "reports/train_instruct.json").read_text())
    assert s["train_instruct"]["steps"] >= 1 and np.isfinite(report["loss_last"])
    from anomaly_ov.model.presets import load_pretrained

    model, proc = load_pretrained(ws / "models/anomaly_ov")
    assert list(proc.image_processor.image_mean) == [0.5, 0.5, 0.5]  # the checkpoint's SigLIP normalisation
    sizes = proc.preprocess_images([Image.new("RGB", (WIDTH, HEIGHT))])["image_sizes"].tolist()
    assert sizes == [[682, 1024]] and proc.layout(682, 1024).grid == (2, 3)  # the release's resize, 2 x 3 crops
    assert model.config.image_token_index == 151646


def test_evaluation_reads_the_official_files_and_register_versions_the_model(real_path_run):
    ws, s, _, _ = real_path_run
    metrics = json.loads((ws / "reports/metrics.json").read_text())
    assert s["evaluate"]["images"] == 2 * len(CLASSES)
    assert 0.0 <= metrics["zero_shot.image_auroc"] <= 1.0 and "detection.macro_f1" in metrics
    assert metrics["reasoning.count.items"] == len(CLASSES)
    register = json.loads((ws / "reports/register.json").read_text())
    assert register["version"] and register["verdict"] == "production"
