"""The instruction-set validator rejects each kind of broken record (GX suite and the pandas twin agree)."""

from __future__ import annotations

import copy

import pytest

from anomaly_ov.instruct.synthesize import synthesize_records
from anomaly_ov.instruct.validate import validate_records

BREAKERS = {
    "id_present": lambda r: r.update(id=""),
    "images_exist": lambda r: r.update(image="data/raw/hand/nowhere.png"),
    "roles_alternate": lambda r: r["conversations"].insert(0, {"from": "gpt", "value": "Hello"}),
    "image_placeholders": lambda r: r["conversations"][0].update(value="<image>\n<image>\nWhat is this?"),
    "answers_not_empty": lambda r: r["conversations"][1].update(value="   "),
    "answer_length": lambda r: r["conversations"][1].update(value="x" * 5000),
    "detection_one_word": lambda r: (r.update(kinds=["detection"] + r["kinds"][1:]),
                                     r["conversations"][1].update(value="Yes, clearly.")),
    "kinds_match_turns": lambda r: r.update(kinds=["gossip"] * len(r["kinds"])),
}


@pytest.fixture
def good(workspace):
    ws, frame, params = workspace
    return ws, params, synthesize_records(frame[frame.role == "train"], params, ws)


def _broken(records, name):
    records = copy.deepcopy(records)
    target = records[3]
    BREAKERS[name](target)
    return records, target


def test_good_set_passes_with_gx(good):
    ws, params, records = good
    report = validate_records(records, params.instruct, ws)
    assert report.ok, report.failure_summary()
    assert not report.warnings
    assert any(c.origin.startswith("great_expectations") for c in report.checks)
    assert {c.name for c in report.checks} >= set(BREAKERS) | {"unique_ids", "yes_no_balance", "distinct_answers"}


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_each_broken_record_is_rejected(good, name):
    ws, params, records = good
    broken, target = _broken(records, name)
    report = validate_records(broken, params.instruct, ws, use_gx=False)
    assert not report.ok
    failed = {c.name for c in report.critical_failures}
    assert name in failed, report.failure_summary()
    check = report.check(name)
    assert check.n_failing == 1
    assert check.failing[0]["row"] == 3


def test_gx_suite_flags_the_same_records(good):
    ws, params, records = good
    broken = copy.deepcopy(records)
    for i, name in enumerate(sorted(BREAKERS)):
        BREAKERS[name](broken[2 * i])
    broken[-1]["id"] = broken[-2]["id"]  # a duplicate id
    gx_report = validate_records(broken, params.instruct, ws)
    pd_report = validate_records(broken, params.instruct, ws, use_gx=False)
    expected = set(BREAKERS) | {"unique_ids"}
    assert {c.name for c in gx_report.critical_failures} >= expected
    assert {c.name for c in gx_report.critical_failures} == {c.name for c in pd_report.critical_failures}
    assert gx_report.check("unique_ids").n_failing == 2
    assert gx_report.check("images_exist").failing[0]["file"] == "data/raw/hand/nowhere.png"
    assert "images_exist" in gx_report.to_markdown()


def test_yes_no_imbalance_empty_set_and_repetition(good):
    ws, params, records = good
    only_yes = [r for r in records if r["label"] == "anomaly"]
    report = validate_records(only_yes, params.instruct, ws, use_gx=False)
    assert "yes_no_balance" in {c.name for c in report.critical_failures}
    assert not validate_records([], params.instruct, ws, use_gx=False).ok
    same = copy.deepcopy(records)
    for record in same:
        for turn in record["conversations"][1::2]:
            if turn["value"] not in ("Yes", "No"):
                turn["value"] = "Same answer."
    report = validate_records(same, params.instruct, ws, use_gx=False)
    assert report.ok and [c.name for c in report.warnings] == ["distinct_answers"]
