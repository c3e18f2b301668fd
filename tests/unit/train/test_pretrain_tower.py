"""Stage pretrain_tower: SigLIP-style image-caption pretraining of the tiny tower, and stage 1 starting from it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from anomaly_ov.errors import InputError
from anomaly_ov.model.presets import build_expert_model
from anomaly_ov.train import pretrain_tower as pt
from anomaly_ov.train.expert import run_train_expert
from tests.unit.train.conftest import make_workspace, stage_one_until, tiny_params

TOWER = ["train.tower.enabled=true", "train.tower.epochs=2", "train.tower.batch_size=4"]


def test_caption_names_object_defect_position_and_size():
    mask = torch.zeros(64, 64)
    mask[4:14, 2:12] = 1  # 100 px of 4096 (2.4 %), centre in the top-left ninth
    assert pt.caption("screw", "scratch", mask) == "a screw with a medium scratch at the top left"
    mask = torch.zeros(64, 64)
    mask[50:54, 50:54] = 1  # 16 px (0.4 %), bottom right
    assert pt.caption("pcb", "hole", mask) == "a printed circuit board with a small hole at the bottom right"
    assert pt.caption("round_part", None) == "a round metal part with no defect"
    assert pt.caption("my_widget", "bent", torch.ones(8, 8)) == "a my widget with a large bent at the middle center"


def test_sigmoid_loss_is_siglip_with_repeated_captions_as_positives():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    ids = torch.tensor([0, 0, 1])
    log_scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if ids[i] == ids[j] else -1.0
            logit = 10.0 * float(img[i] @ txt[j]) - 10.0
            expected -= math.log(1 / (1 + math.exp(-z * logit)))
    assert float(pt.sigmoid_loss(img, txt, ids, log_scale, bias)) == pytest.approx(expected / 3, rel=1e-5)
    # two images of the same caption: treating their pair as a negative (distinct ids) costs more
    same = torch.nn.functional.normalize(torch.ones(2, 8), dim=-1)
    scale = torch.tensor(math.log(20.0))  # identical embeddings: logit +10 for every pair
    as_positive = pt.sigmoid_loss(same, same, torch.tensor([0, 0]), scale, bias)
    as_negative = pt.sigmoid_loss(same, same, torch.tensor([0, 1]), scale, bias)
    assert float(as_positive) < float(as_negative)


def test_stage_trains_the_tower_and_stage_one_starts_from_it(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    params = tiny_params(*TOWER)
    initial = {k: v.clone() for k, v in pt.tiny_tower().state_dict().items()}  # seeded like the stage's start
    summary = pt.run_pretrain_tower(params, ws)

    assert summary["trained"] and summary["steps"] > 0 and summary["train_images"] > 0
    report = json.loads((ws / "reports/pretrain_tower.json").read_text())
    assert report["held_out"]["object_chance"] == 0.5  # 2 categories
    assert 0 <= report["held_out"]["object_accuracy"] <= 1
    info = json.loads((ws / "models/tower/tower.json").read_text())
    assert info["trained"] and "spot" in info["vocabulary"] and "weave" in info["vocabulary"]
    saved = load_file(str(ws / "models/tower/vision_tower.safetensors"))
    assert set(saved) == set(initial)
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # it trained

    model = build_expert_model(params)
    assert pt.load_pretrained_tower(model, params, ws)
    for key, value in model.expert_tower.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_stage_one_without_the_tower_output_names_the_stage_to_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(InputError, match="anomaly-ov stage pretrain_tower"):
        run_train_expert(tiny_params(*TOWER), ws)


def test_disabled_stage_writes_an_untrained_output_and_stage_one_keeps_its_tower(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    params = tiny_params("train.tower.enabled=false")
    summary = pt.run_pretrain_tower(params, ws)
    assert summary == {"trained": False, "reason": "train.tower.enabled"}
    assert json.loads((ws / "models/tower/tower.json").read_text())["trained"] is False
    assert not (ws / "models/tower/vision_tower.safetensors").exists()
    assert not pt.load_pretrained_tower(build_expert_model(params), params, ws)



@pytest.mark.slow
def test_stage_one_does_not_resume_a_checkpoint_trained_on_another_tower(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    ws = make_workspace(tmp_path / "ws", per_label=2)
    params = tiny_params(*TOWER, "train.expert.checkpoint_every=1", "train.expert.tiny.batch_size=2")
    pt.run_pretrain_tower(params, ws)
    assert stage_one_until(1, params, ws, monkeypatch) == [1]
    assert stage_one_until(2, params, ws, monkeypatch) == [2]  # same tower: resumed after step 1

    weights_file = pt.tower_file(params, ws)  # pretrain_tower re-ran with other params: other weights
    weights = load_file(str(weights_file))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}, str(weights_file))
    summary = run_train_expert(params, ws)
    assert summary["resumed_from_step"] is None  # the step-2 checkpoint belongs to the old tower
    assert summary["steps"] > 2
