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
