"""benchmarks/default_targets.py: the seed edit of params.yaml and the table of targets it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("default_targets", REPO / "benchmarks/default_targets.py")
targets = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = targets  # its dataclass looks its module up while it is built
_SPEC.loader.exec_module(targets)


def test_the_seed_edit_changes_train_seed_alone_in_the_repository_params() -> None:
    text = (REPO / "params.yaml").read_text()
    edited = targets.set_train_seed(text, 7)
    before, after = yaml.safe_load(text), yaml.safe_load(edited)
    assert after["train"]["seed"] == 7
    after["train"]["seed"] = before["train"]["seed"]
    assert after == before  # every other value, the instruction data's own seed included, is unchanged
    changed = [(a, b) for a, b in zip(text.splitlines(), edited.splitlines(), strict=True) if a != b]
    assert len(changed) == 1  # comments and layout stay


def test_the_seed_edit_finds_train_seed_among_nested_seeds_and_refuses_other_layouts() -> None:
    text = ("seed: 1\ninstruct:\n  seed: 2\n# training\ntrain:\n  # the order of batches\n  expert:\n    seed: 3\n"
            "  seed: 4  # note\n")
    edited = yaml.safe_load(targets.set_train_seed(text, 9))
    assert edited == {"seed": 1, "instruct": {"seed": 2}, "train": {"expert": {"seed": 3}, "seed": 9}}
    assert "seed: 9  # note" in targets.set_train_seed(text, 9)
    with pytest.raises(ValueError, match="train.seed"):
        targets.set_train_seed("train:\n  epochs: 2\nseed: 0\n", 1)


def test_targets_are_met_missed_or_unmeasured_per_seed_and_printed_as_a_table() -> None:
    runs = {
        0: {"metrics": {"zero_shot.image_auroc": 0.86, "detection.macro_f1": 0.5}, "register": {"verdict": "staging"},
            "timing": {"first_run_s": 594.0, "rerun_s": None}, "probe": {"names_its_object": 0.02}},
        1: {"metrics": {"zero_shot.image_auroc": 0.74}, "register": {"verdict": "production"}, "timing": {}},
    }
    rows = {r["target"]: r for r in targets.target_rows(runs)}
    assert len(rows) == len(targets.TARGETS)
    image = rows["zero-shot image AUROC (pcb, round_part)"]["seeds"]
    assert (image[0]["met"], image[1]["met"]) == (True, False)
    gate = rows["the gate on the first run"]["seeds"]
    assert (gate[0]["met"], gate[1]["met"]) == (False, True)
    assert rows["the first run's flow, seconds"]["seeds"][0]["met"] is True
    assert rows["the unchanged re-run, seconds"]["seeds"][0]["met"] is None  # not timed
    assert rows["medical image AUROC (brain MRI, liver CT)"]["seeds"][1]["met"] is None  # no report
    table = targets.markdown_table(list(rows.values()), [0, 1])
    lines = table.splitlines()
    assert lines[0] == "| target | goal | seed 0 | seed 1 |"
    assert "| zero-shot image AUROC (pcb, round_part) | >= 0.85 | **0.860** | 0.740 |" in lines
    assert "| the gate on the first run | == production | staging | **production** |" in lines
    assert "| the unchanged re-run, seconds | < 60 | - | - |" in lines
    assert "| the first run's flow, seconds | < 900 | **594** | - |" in lines


def test_read_reports_takes_each_report_the_workspace_has(tmp_path: Path) -> None:
    (tmp_path / "reports/extensions").mkdir(parents=True)
    (tmp_path / "reports/metrics.json").write_text('{"zero_shot.image_auroc": 0.8}')
    (tmp_path / "reports/extensions/3d.json").write_text('{"view.zero_shot.image_auroc": 0.6}')
    reports = targets.read_reports(tmp_path)
    assert reports["metrics"]["zero_shot.image_auroc"] == 0.8
    assert reports["3d"]["view.zero_shot.image_auroc"] == 0.6
    assert reports["register"] == {} and reports["medical"] == {}
