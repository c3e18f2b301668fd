"""Instruction synthesis: format, truth to the masks, no defect claims on normal images, balance, variety."""

from __future__ import annotations

import re

import numpy as np
import pytest

from anomaly_ov.data.manifest import resolve
from anomaly_ov.instruct import answers as A
from anomaly_ov.instruct.regions import LOCATIONS, count_word, facts_from_files, with_preposition
from anomaly_ov.instruct.synthesize import collect_subjects, summarize_records, synthesize_records
from anomaly_ov.model.tokenizer import DETECTION_PROMPT

PHRASES = {with_preposition(loc): loc for loc in LOCATIONS}
SUB_OF_QUESTION = {q: sub for sub, qs in A.LOW_LEVEL_QUESTIONS.items() for q in qs}


def _mentioned_locations(text: str) -> set[str]:
    return {loc for phrase, loc in PHRASES.items() if phrase in text}


def _sub(question: str, noun: str) -> str | None:
    text = question.split("\n")[-1]
    text = re.sub(r"^These are \d+ views of the same [^.]+\. ", "", text)
    for template, sub in SUB_OF_QUESTION.items():
        if text in (template.format(object=noun), template.format(object=A.GENERIC_OBJECT)):
            return sub
    return None


def _pairs(record):
    turns = record["conversations"]
    return [(turns[i]["value"], turns[i + 1]["value"], kind) for i, kind in zip(range(0, len(turns), 2),
                                                                              record["kinds"], strict=True)]


@pytest.fixture
def records(workspace):
    ws, frame, params = workspace
    return synthesize_records(frame[frame.role == "train"], params, ws)


def test_record_format(records, workspace):
    ws, _, _ = workspace
    assert records
    for record in records:
        assert set(record) >= {"id", "image", "conversations", "category", "label", "defect_type", "source", "kinds"}
        images = record["image"] if isinstance(record["image"], list) else [record["image"]]
        for image in images:
            assert (ws / image).exists(), image
        roles = [t["from"] for t in record["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2)
        assert len(record["kinds"]) == len(roles) // 2
        text = "".join(t["value"] for t in record["conversations"])
        assert text.count("<image>") == len(images)
        assert record["conversations"][0]["value"].startswith("<image>\n" * len(images))
    assert len({r["id"] for r in records}) == len(records)


def test_detection_answers_exact_balanced_and_canonical(records):
    answers = [(a, r["label"]) for r in records for q, a, k in _pairs(r) if k == A.DETECTION]
    assert answers
    for answer, label in answers:
        assert answer == ("Yes" if label == "anomaly" else "No")
    yes = sum(a == "Yes" for a, _ in answers)
    assert yes == len(answers) - yes
    assert DETECTION_PROMPT in A.DETECTION_QUESTIONS
    canonical = "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
    assert canonical == DETECTION_PROMPT


def test_answers_agree_with_masks(workspace):
    ws, frame, params = workspace
    train = frame[frame.role == "train"]
    records = []
    for seed in range(6):  # several seeds so that every question kind is exercised
        p = params.model_copy(update={"instruct": params.instruct.model_copy(update={"seed": seed})})
        records += synthesize_records(train, p, ws)
    facts = {}
    for row in train.to_dict("records"):
        if row["label"] == "anomaly" and not row["group"]:
            facts[f"{row['root']}/{row['image_path']}"] = facts_from_files(
                resolve(row, "mask_path", ws), resolve(row, "image_path", ws))
    checked = {"where": 0, "count": 0, "describe": 0}
    for record in records:
        if record["label"] != "anomaly" or isinstance(record["image"], list):
            continue
        fact = facts[record["image"]]
        noun = {"tile": "tile", "pill": "pill"}[record["category"]]
        for question, answer, kind in _pairs(record):
            mentioned = _mentioned_locations(answer)
            assert mentioned <= set(fact.locations), (record["image"], answer)
            sub = _sub(question, noun) if kind == A.LOW_LEVEL else None
            if sub == "where":
                assert mentioned == set(fact.locations), answer
                checked["where"] += 1
            if sub == "count":
                n = fact.count
                assert (count_word(n) in answer.lower()) or (n == 1 and "single" in answer), answer
                checked["count"] += 1
            if sub == "describe":
                assert mentioned, answer
                checked["describe"] += 1
    assert all(v > 0 for v in checked.values()), checked


def test_two_spot_masks_are_described_as_two_regions(workspace):
    ws, frame, params = workspace
    items = collect_subjects(frame[frame.role == "train"], params, ws)
    two = [it for it in items if it.defect_type == "color"][0]
    assert two.subject.facts.count == 2
    rng = __import__("random").Random(0)
    answer = A.anomaly_where(rng, two.subject)
    assert "two" in answer and _mentioned_locations(answer) == {"upper left", "lower right"}


def test_normal_images_never_get_defect_claims(records):
    negations = ("no ", "no.", "not ", "nothing", "none", "zero", "normal", "nowhere")
    normal = [r for r in records if r["label"] == "normal"]
    assert normal
    for record in normal:
        for _, answer, kind in _pairs(record):
            if kind == A.DETECTION:
                assert answer == "No"
                continue
            assert not _mentioned_locations(answer), answer
            assert any(n in answer.lower() for n in negations), answer
            assert not re.search(r"\b(one|two|three|four|\d+) (defective )?regions?\b", answer), answer


def test_multi_view_group_is_one_multi_image_record(records):
    multi = [r for r in records if isinstance(r["image"], list)]
    assert len(multi) >= 2  # one anomalous and one normal object (plus detection-only records)
    for record in multi:
        assert len(record["image"]) == 3
        assert record["image"] == sorted(record["image"])
        assert record["conversations"][0]["value"].count("<image>") == 3
    anomalous = [r for r in multi if r["label"] == "anomaly"]
    assert anomalous and all(r["defect_type"] == "dent" for r in anomalous)


def test_reproducible_and_seed_dependent(workspace):
    ws, frame, params = workspace
    train = frame[frame.role == "train"]
    a = synthesize_records(train, params, ws)
    b = synthesize_records(train, params, ws)
    assert a == b
    other = params.model_copy(update={"instruct": params.instruct.model_copy(update={"seed": 99})})
    assert synthesize_records(train, other, ws) != a


def test_summary_balance_and_distinctness(workspace):
    ws, frame, params = workspace
    p = params.model_copy(update={"instruct": params.instruct.model_copy(update={"conversations_per_image": 3})})
    records = synthesize_records(frame[frame.role == "train"], p, ws)
    summary = summarize_records(records)
    assert summary["detection_yes"] == summary["detection_no"] > 0
    assert abs(summary["yes_share"] - 0.5) <= params.instruct.yes_no_tolerance
    assert summary["distinct_answer_ratio"]["low_level"] >= params.instruct.min_distinct_answer_ratio
    assert summary["distinct_answer_ratio"]["complex"] >= params.instruct.min_distinct_answer_ratio
    assert summary["multi_image_records"] >= 2
    assert set(summary["by_kind"]) == {A.DETECTION, A.LOW_LEVEL, A.COMPLEX}
    assert sum(summary["by_label"].values()) == len(records)
    lengths = [len(t["value"]) for r in records for t in r["conversations"] if t["from"] == "gpt"]
    assert max(lengths) <= 400  # short answers for the tiny model


def test_unknown_defect_uses_generic_knowledge_and_medical_wording(workspace):
    ws, frame, params = workspace
    items = collect_subjects(frame[frame.role == "train"], params, ws)
    mystery = [it for it in items if it.defect_type == "mystery_defect"][0]
    assert mystery.subject.defect.is_generic
    med = collect_subjects(frame[(frame.role == "train") & (frame.category == "pill")], params, ws, domain="medical")
    rng = __import__("random").Random(0)
    anomalous = [it for it in med if it.label == "anomaly"][0]
    assert anomalous.subject.domain == "medical"
    assert A.complex_question(rng, anomalous.subject, "prevention") in A.MEDICAL_COMPLEX_QUESTIONS["prevention"]
    records = synthesize_records(frame[frame.category == "pill"], params, ws, domain="medical")
    texts = [t["value"] for r in records for t in r["conversations"]]
    assert texts
    for text in texts:
        if DETECTION_PROMPT not in text:
            assert not re.search(r"\bdefect", text) and "quality inspection" not in text, text


def test_red_boxes_rendered(workspace):
    ws, frame, params = workspace
    records = synthesize_records(frame[frame.role == "train"], params, ws, red_box_dir="data/instruct/red_boxes")
    boxed = [r for r in records if r.get("red_box")]
    assert boxed and all(r["label"] == "anomaly" for r in boxed)
    from PIL import Image

    image = np.asarray(Image.open(ws / boxed[0]["red_box"]).convert("RGB")).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red.sum() > 10


def test_parallel_facts_match_sequential(workspace):
    from anomaly_ov.instruct.synthesize import compute_facts

    ws, frame, _ = workspace
    rows = frame[(frame.label == "anomaly") & (frame.group == "")]
    keys = [(str(resolve(r, "mask_path", ws)), str(resolve(r, "image_path", ws)), False) for _, r in rows.iterrows()]
    keys = (keys * 8)[:70]  # above the in-process threshold
    assert compute_facts(keys, 3, 6, workers=2) == compute_facts(keys, 3, 6, workers=1)
    missing = compute_facts([(str(ws / "no_mask.png"), str(ws / "no_image.png"), False)], 3, 6)
    assert missing[0][0] is None and "not found" in missing[0][1]


def test_missing_or_corrupt_mask_names_the_row(workspace):
    ws, frame, params = workspace
    row = frame[(frame.role == "train") & (frame.label == "anomaly") & (frame.group == "")].iloc[0]
    mask = resolve(row, "mask_path", ws)
    mask.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"image_path={row['image_path']}"):
        collect_subjects(frame[frame.role == "train"], params, ws)
    mask.unlink()
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        collect_subjects(frame[frame.role == "train"], params, ws)


def test_canonical_detection_prompt_is_frequent(workspace):
    ws, frame, params = workspace
    p = params.model_copy(update={"instruct": params.instruct.model_copy(update={"conversations_per_image": 8})})
    records = synthesize_records(frame[frame.role == "train"], p, ws)
    questions = [q.split("\n")[-1] for r in records for q, _, k in _pairs(r) if k == A.DETECTION]
    share = questions.count(DETECTION_PROMPT) / len(questions)
    assert 0.15 < share < 0.45 and len(set(questions)) > 6


def test_most_questions_leave_the_object_for_the_answer_to_name(workspace):
    """Questions name the object for about OBJECT_NAMED_SHARE of turns; the descriptions always name it, so the
    object word the model learns to write comes from the image, not from the prompt."""
    ws, frame, params = workspace
    records = []
    for seed in range(4):
        p = params.model_copy(update={"instruct": params.instruct.model_copy(update={"seed": seed})})
        records += synthesize_records(frame[frame.role == "train"], p, ws)
    nouns = {"tile": "tile", "pill": "pill"}
    slotted = [t for t in (*A.DETECTION_QUESTIONS, *SUB_OF_QUESTION, *(q for qs in A.COMPLEX_QUESTIONS.values()
                                                                      for q in qs)) if "{object}" in t]
    named = generic = 0
    for record in (r for r in records if r["category"] in nouns):
        for question, _, _ in _pairs(record):
            text = question.split("\n")[-1]
            named += any(text == t.format(object=nouns[record["category"]]) for t in slotted)
            generic += any(text == t.format(object=A.GENERIC_OBJECT) for t in slotted)
    assert named + generic >= 40
    assert 0.05 <= named / (named + generic) <= 0.4, (named, generic)
    described = [(a, r["category"]) for r in records if r["label"] == "anomaly" and r["category"] in nouns
                 for q, a, k in _pairs(r) if k == A.LOW_LEVEL and _sub(q, nouns[r["category"]]) == "describe"]
    assert described
    for answer, category in described:
        assert nouns[category] in answer.lower(), answer


def test_fill_names_medical_subjects_always():
    from anomaly_ov.instruct.knowledge import load_knowledge

    kb = load_knowledge()
    scan = A.Subject("normal", kb.category("medical", "chest_xray"), None, None, domain="medical")
    part = A.Subject("normal", kb.category("industrial", "screw"), None, None)
    template = "Describe any defect you see on the {object}."
    expected = "Describe any abnormality you see in the chest X-ray."
    assert A.fill(template, scan, named=False) == A.fill(template, scan) == expected
    assert A.fill(template, part, named=False) == "Describe any defect you see on the object."
    assert A.fill(template, part) == "Describe any defect you see on the screw."
