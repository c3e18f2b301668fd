"""benchmarks/stage2_detection_probe.py's reading of descriptions: does one claim a defect, and does that follow the
expert's verdict?"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("stage2_detection_probe", REPO / "benchmarks/stage2_detection_probe.py")
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def test_the_training_answers_for_normal_images_read_as_no_defect() -> None:
    assert not probe.says_defective("The image shows a die with a regular pattern of dark keys. No defect is visible.")
    assert not probe.says_defective("The hex nut looks normal, with no visible defect.")
    assert probe.says_defective("The hex nut has a scratch in the upper left of the image.")


def test_description_claims_are_counted_per_label_and_against_the_expert() -> None:
    answers = ["A nut with a crack.", "A nut. No defect is visible.", "A die with a hole.", "A die. No defect."]
    out = probe._grounding(answers, ["nut", "nut", "dice", "dice"], ["crack", "", "hole", ""],
                           [True, True, False, False], ["dice", "nut"], expert=[True, False, False, False])
    assert out["anomalous_described_as_defective"] == 0.5
    assert out["normal_described_as_defective"] == 0.5
    assert out["description_agrees_with_expert"] == 0.75


def test_every_normal_answer_the_instruction_data_writes_reads_as_no_defect() -> None:
    """The probe follows ``anomaly_ov.instruct.answers``: no answer it writes about a normal image (the describe
    prompt's and every other low-level one) reads as a defect claim, for every industrial category and many
    draws, and its anomalous descriptions all do."""
    import random

    import numpy as np

    from anomaly_ov.instruct.answers import LOW_LEVEL_QUESTIONS, Subject, anomaly_describe, normal_low_level
    from anomaly_ov.instruct.knowledge import load_knowledge
    from anomaly_ov.instruct.regions import region_facts

    knowledge = load_knowledge()
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:9, 20:26] = True
    for name in ("nut", "pcb", "fabric", "dice", "bottle"):
        category = knowledge.category("industrial", name)
        normal = Subject(label="normal", category=category, defect=None, facts=None)
        anomalous = Subject(label="anomaly", category=category, defect=knowledge.defect("industrial", "scratch"),
                            facts=region_facts(mask))
        rng = random.Random(0)
        for _ in range(40):
            for sub in LOW_LEVEL_QUESTIONS:
                answer = normal_low_level(rng, normal, sub)
                assert not probe.says_defective(answer), answer
            answer = anomaly_describe(rng, anomalous)
            assert probe.says_defective(answer), answer


def test_the_linear_probe_finds_what_the_features_hold_and_only_that() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    labels = [f"family_{i % 4}" for i in range(80)]
    centres = rng.normal(size=(4, 16)) * 5
    separable = np.stack([centres[i % 4] + rng.normal(size=16) for i in range(80)])
    assert probe.linear_probe_accuracy(separable, labels) >= 0.95
    noise = rng.normal(size=(80, 16))  # no family in it: about chance (0.25)
    assert probe.linear_probe_accuracy(noise, labels) <= 0.5


def test_every_step_of_the_object_chain_gives_one_row_per_image(tmp_path: Path) -> None:
    """On a tiny random model: the towers' and projector's means and the LLM's hidden states at the answer's first
    position, one row per image; the pretrained tower's only when there is one. Too few families are skipped."""
    import numpy as np
    import torch
    from PIL import Image

    from anomaly_ov.config import load_params
    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.model.tokenizer import train_tokenizer
    from anomaly_ov.train.pretrain_tower import tiny_tower

    torch.manual_seed(0)
    params = load_params(None, [])
    tokenizer = train_tokenizer(["Yes, there is a defect.", "No defect is visible."] * 4)
    model, processor = build_model(params, tokenizer).eval(), build_processor(params, tokenizer)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)) for _ in range(3)]

    rows = probe.representations(model, processor, images, pretrained_tower=tiny_tower().eval())
    assert list(rows) == ["pretrained_tower", "stage1_tower", "projected", "llm_middle", "llm_answer_start"]
    assert all(values.shape[0] == 3 and np.isfinite(values).all() for values in rows.values())
    assert rows["projected"].shape[1] == rows["llm_answer_start"].shape[1] == model.config.text_config.hidden_size
    assert "pretrained_tower" not in probe.representations(model, processor, images[:1])

    out = probe.object_chain(model, processor, tmp_path, params, [tmp_path / "a.png"] * 5, ["nut"] * 4 + ["dice"])
    assert out == {"skipped": "1 of the families have >= 4 unseen industrial images; the probe needs 2"}
