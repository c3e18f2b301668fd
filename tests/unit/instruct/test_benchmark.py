"""The VisA-D&R builder: schema of test_data.json / visa_dr.json and answers true to the masks."""

from __future__ import annotations

import json

from anomaly_ov.instruct import answers as A
from anomaly_ov.instruct.benchmark import (
    BENCH_QUESTIONS,
    TEST_DATA,
    VISA_DR,
    bench_image_key,
    build_benchmark,
)
from anomaly_ov.instruct.regions import LOCATIONS, facts_from_files, with_preposition

DETECTION_KEYS = {"image", "anomaly", "file", "mask", "category"}
REASONING_KEYS = {"image", "file", "mask", "category", "defect_type", "questions", "answers", "kinds"}


def test_image_key_class_is_second_component():
    key = bench_image_key("VisA", "pcb1", "pcb1/Data/Images/Anomaly/000.JPG")
    assert key == "VisA/pcb1/Data/Images/Anomaly/000.JPG"
    assert bench_image_key("mine", "tile", "x/tile/test/crack/1.png") == "mine/tile/test/crack/1.png"
    assert bench_image_key("mine", "tile", "img/1.png") == "mine/tile/img/1.png"


def test_files_match_schema_and_masks(workspace):
    ws, frame, params = workspace
    evaluation = frame[frame.role == "eval"]
    summary = build_benchmark(evaluation, params, ws, "data/bench")
    detection = json.loads((ws / "data/bench" / TEST_DATA).read_text())
    reasoning = json.loads((ws / "data/bench" / VISA_DR).read_text())
    assert len(detection) == len(evaluation) == summary["detection_images"]
    assert sum(d["anomaly"] for d in detection) == (evaluation.label == "anomaly").sum() == len(reasoning)
    for entry in detection:
        assert set(entry) == DETECTION_KEYS
        assert isinstance(entry["anomaly"], bool)
        assert entry["image"].split("/")[1] == entry["category"]
        assert (ws / entry["file"]).exists()
        assert (entry["mask"] != "") == entry["anomaly"]
        if entry["mask"]:
            assert (ws / entry["mask"]).exists()
    phrases = {with_preposition(loc): loc for loc in LOCATIONS}
    for item in reasoning:
        assert set(item) == REASONING_KEYS
        assert len(item["questions"]) == len(item["answers"]) == len(item["kinds"]) == len(BENCH_QUESTIONS)
        assert all(q and "<image>" not in q for q in item["questions"])
        assert all(a.strip() for a in item["answers"])
        kinds = item["kinds"]
        assert kinds == sorted(kinds, key=lambda k: k != A.LOW_LEVEL)  # low-level first, then complex
        assert set(kinds) == {A.LOW_LEVEL, A.COMPLEX}
        facts = facts_from_files(ws / item["mask"], ws / item["file"])
        where = item["answers"][1]
        assert {loc for p, loc in phrases.items() if p in where} == set(facts.locations), where
    # deterministic
    again = build_benchmark(evaluation, params, ws, ws / "bench2")
    assert json.loads((ws / "bench2" / VISA_DR).read_text()) == reasoning
    assert again["reasoning_items"] == summary["reasoning_items"]


def test_unmasked_anomaly_skips_where_and_size(workspace):
    ws, frame, params = workspace
    evaluation = frame[frame.role == "eval"].copy()
    evaluation.loc[evaluation.label == "anomaly", "mask_path"] = ""
    build_benchmark(evaluation, params, ws, "bench3")
    reasoning = json.loads((ws / "bench3" / VISA_DR).read_text())
    assert reasoning and all(len(r["questions"]) == 4 and r["mask"] == "" for r in reasoning)
