"""Stage 2 on a tiny model: output directory, report with samples, frozen tower/expert, falling loss, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anomaly_ov.train import instruct as stage2

from .conftest import tiny_params  # noqa: TID252

pytestmark = pytest.mark.slow  # each test trains a tiny model for a few steps


def test_stage2_trains_projector_and_llm_only(trained_expert_workspace: Path) -> None:
    from safetensors.torch import load_file

    from anomaly_ov.model.presets import load_pretrained

    ws = trained_expert_workspace
    params = tiny_params("train.instruct.tiny.epochs=4", "train.instruct.tiny.lr=0.003")
    summary = stage2.run_train_instruct(params, ws)
    assert summary["steps"] == 4 * 3  # 12 records, batch 4
    assert summary["loss_last"] < summary["loss_first"], "the loss curve falls"
    assert summary["tokens_per_s"] > 0
    report = json.loads((ws / "reports/train_instruct.json").read_text())
    labels = [s["label"] for s in report["samples"]]
    assert labels == ["normal", "anomaly"]
    assert all(isinstance(s["detection_answer"], str) for s in report["samples"])
    assert (ws / "reports/train_instruct_curves.png").exists()

    model, processor = load_pretrained(ws / "models/anomaly_ov")
    expert = torch.load(ws / "models/expert/pretrained_expert.pth")
    for key, value in expert.items():
        assert torch.equal(model.anomaly_expert.state_dict()[key], value), f"expert {key} changed in stage 2"
    tower = load_file(str(ws / "models/expert/vision_tower.safetensors"))
    own = model.model.vision_tower.state_dict()
    for key, value in tower.items():
        assert torch.equal(own[key], value), f"vision tower {key} changed in stage 2"
    assert "<anomaly>" in processor.tokenizer.get_vocab()


def test_stage2_lora_merges_into_a_plain_model(trained_expert_workspace: Path) -> None:
    from anomaly_ov.model.presets import load_pretrained

    ws = trained_expert_workspace
    params = tiny_params("train.instruct.lora.enabled=true", "train.instruct.lora.r=4", "train.instruct.tiny.epochs=1",
                         "train.instruct.output_dir=models/lora", "train.instruct.report=reports/lora.json",
                         "train.instruct.checkpoint_dir=checkpoints/lora")
    summary = stage2.run_train_instruct(params, ws)
    assert summary["steps"] == 3
    model, _ = load_pretrained(ws / "models/lora")
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_record_cap_is_a_seeded_draw_in_file_order() -> None:
    records = [{"id": f"{cat}/{i}"} for cat in ("fabric", "wood", "metal") for i in range(20)]
    sample = stage2.sample_records(records, 12, seed=0)
    assert len(sample) == 12 and sample == stage2.sample_records(records, 12, seed=0)
    assert sample != stage2.sample_records(records, 12, seed=1)
    assert [records.index(r) for r in sample] == sorted(records.index(r) for r in sample)
    assert {r["id"].split("/")[0] for r in sample} == {"fabric", "wood", "metal"}  # not just the file's head
    assert stage2.sample_records(records, None, 0) == records and stage2.sample_records(records, 99, 0) == records
