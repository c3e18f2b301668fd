"""benchmarks/default_targets.py: the seed edit of params.yaml and the table of targets it prints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("default_targets", REPO / "benchmarks/default_targets.py")
targets = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = targets  # its dataclass looks its module up while it is built
_SPEC.loader.exec_module(targets)


def test_the_seed_params_change_train_seed_and_the_overrides_alone(tmp_path: Path) -> None:
    from anomaly_ov.config import load_params

    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    targets.write_seed_params(params_file, 7, ["train.expert.tiny.epochs=3"])
    before, after = load_params(REPO / "params.yaml").to_dict(), load_params(params_file).to_dict()
    assert after["train"]["seed"] == 7 and after["train"]["expert"]["tiny"]["epochs"] == 3
    after["train"]["seed"] = before["train"]["seed"]
    after["train"]["expert"]["tiny"]["epochs"] = before["train"]["expert"]["tiny"]["epochs"]
    assert after == before  # the instruction data's own seed and every other value are unchanged


def test_a_bad_override_is_refused_with_its_key_and_the_file_is_left_alone(tmp_path: Path) -> None:
    from anomaly_ov.errors import ConfigError

    params_file = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    params_file.write_text(text)
    with pytest.raises(ConfigError, match="no_such_key"):
        targets.write_seed_params(params_file, 1, ["train.no_such_key=2"])
    assert params_file.read_text() == text


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
    assert rows["zero-shot image AUROC (pcb, round_part)"]["across_seeds"] == {
        "value": pytest.approx(0.80), "sd": pytest.approx(0.0848528), "met": False}
    assert rows["the gate on the first run"]["across_seeds"]["value"] == "1/2"
    table = targets.markdown_table(list(rows.values()), [0, 1])
    lines = table.splitlines()
    assert lines[0] == "| target | goal | seed 0 | seed 1 | mean ± sd |"
    assert "| zero-shot image AUROC (pcb, round_part) | >= 0.85 | **0.860** | 0.740 | 0.800 ± 0.085 |" in lines
    assert "| the gate on the first run | == production | staging | **production** | 1/2 |" in lines
    assert "| the unchanged re-run, seconds | < 60 | - | - | - |" in lines
    assert "| the first run's flow, seconds | < 900 | **594** | - | **594** |" in lines  # one seed: no spread


def test_read_reports_takes_each_report_the_workspace_has(tmp_path: Path) -> None:
    (tmp_path / "reports/extensions").mkdir(parents=True)
    (tmp_path / "reports/metrics.json").write_text('{"zero_shot.image_auroc": 0.8}')
    (tmp_path / "reports/extensions/3d.json").write_text('{"view.zero_shot.image_auroc": 0.6}')
    reports = targets.read_reports(tmp_path)
    assert reports["metrics"]["zero_shot.image_auroc"] == 0.8
    assert reports["3d"]["view.zero_shot.image_auroc"] == 0.6
    assert reports["register"] == {} and reports["medical"] == {}


def test_stage1_pace_is_the_stage_reports_images_per_second(tmp_path: Path) -> None:
    assert targets.stage1_pace(tmp_path) is None  # stage 1 did not run
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/train_expert.json").write_text('{"images_per_s": 71.91, "steps": 1904}')
    assert targets.stage1_pace(tmp_path) == 71.91


def test_the_host_names_its_cpu_and_the_builds_that_trained() -> None:
    import os
    from importlib.metadata import version

    host = targets.host_description()
    assert host["cpus"] == os.cpu_count() and host["cpu"]
    assert host["torch"] == version("torch") and host["numpy"] == version("numpy")


def _kept_seed(folder: Path, seed: int, image_auroc: float, first_run_s: float) -> Path:
    workspace = folder / f"seed_{seed}"
    (workspace / "reports").mkdir(parents=True)
    (workspace / "reports/metrics.json").write_text(f'{{"zero_shot.image_auroc": {image_auroc}}}')
    run = {"seed": seed, "commit": "abc1234", "timing": {"first_run_s": first_run_s, "stage1_images_per_s": 90.0},
           "probe": {"names_its_object": 0.05}, "host": {"cpu": "test cpu", "cpus": 2}}
    (workspace / targets.RUN_FILE).write_text(json.dumps(run))
    return workspace


def test_seeds_kept_in_several_folders_make_one_table(tmp_path: Path) -> None:
    _kept_seed(tmp_path / "monday", 3, 0.80, 700.0)
    _kept_seed(tmp_path / "monday", 0, 0.76, 1000.0)
    _kept_seed(tmp_path / "tuesday", 1, 0.77, 950.0)
    (tmp_path / "tuesday/seed_9").mkdir()  # a workspace without the run file (a run cut short) is not a seed
    runs, records = targets.collect_seeds([tmp_path / "monday", tmp_path / "tuesday"])
    assert list(runs) == [0, 1, 3] and records[3]["commit"] == "abc1234"
    assert runs[0]["metrics"] == {"zero_shot.image_auroc": 0.76} and runs[0]["register"] == {}
    assert runs[1]["timing"]["first_run_s"] == 950.0 and runs[1]["probe"] == {"names_its_object": 0.05}
    rows = {r["target"]: r for r in targets.target_rows(runs)}
    assert rows["zero-shot image AUROC (pcb, round_part)"]["across_seeds"]["value"] == pytest.approx(0.7766667)
    only, _ = targets.collect_seeds([tmp_path / "monday", tmp_path / "tuesday"], wanted=[3, 1])
    assert list(only) == [1, 3]


def test_collecting_seeds_names_what_is_wrong(tmp_path: Path) -> None:
    _kept_seed(tmp_path / "a", 0, 0.7, 800.0)
    _kept_seed(tmp_path / "b", 0, 0.8, 800.0)
    with pytest.raises(SystemExit, match=r"seed 0 is in both .*a/seed_0 and .*b/seed_0"):
        targets.collect_seeds([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SystemExit, match=r"for seed 5 under"):
        targets.collect_seeds([tmp_path / "a"], wanted=[0, 5])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="keep runs with --keep DIR first"):
        targets.collect_seeds([tmp_path / "empty"])
    with pytest.raises(SystemExit, match="no such folder"):
        targets.collect_seeds([tmp_path / "nowhere"])
    for bad in ("[]", '{"seed": 0, "timing": [1]}', "{"):
        (tmp_path / "a/seed_0" / targets.RUN_FILE).write_text(bad)
        with pytest.raises(SystemExit, match="not a run file of this script"):
            targets.collect_seeds([tmp_path / "a"])
    (tmp_path / "a/seed_0" / targets.RUN_FILE).write_text(" " * (targets.MAX_RUN_FILE_BYTES + 1))
    with pytest.raises(SystemExit, match="larger than"):
        targets.collect_seeds([tmp_path / "a"])


def test_from_prints_the_kept_seeds_and_refuses_options_that_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _kept_seed(tmp_path / "kept", 2, 0.79, 880.0)
    monkeypatch.setattr(sys, "argv", ["default_targets.py", "--from", str(tmp_path / "kept")])
    targets.main()
    out = capsys.readouterr().out
    assert "the embedded default (seed 2: abc1234)" in out
    assert "| the first run's flow, seconds | < 900 | **880** | **880** |" in out
    assert "the host: cpu test cpu, cpus 2" in out
    monkeypatch.setattr(sys, "argv", ["default_targets.py", "--from", str(tmp_path / "kept"), "--rerun"])
    with pytest.raises(SystemExit):
        targets.main()
    assert "--rerun, --keep and --set do not apply" in capsys.readouterr().err


def test_a_kept_seed_is_read_back_as_it_was_written(tmp_path: Path) -> None:
    import subprocess

    workspace = tmp_path / "kept/seed_4"
    (workspace / "reports").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    (workspace / "reports/register.json").write_text('{"verdict": "production"}')
    timing = {"first_run_s": 701.5, "first_run_rc": 0, "rerun_s": 19.0, "stage1_images_per_s": 100.1}
    path = targets.write_run_file(workspace, 4, timing, {"names_its_object": 0.05})
    assert path == workspace / targets.RUN_FILE
    assert {p.name for p in workspace.iterdir()} == {".git", "reports", targets.RUN_FILE}  # no temporary file left
    runs, records = targets.collect_seeds([tmp_path / "kept"])
    assert runs == {4: {**targets.read_reports(workspace), "timing": timing, "probe": {"names_its_object": 0.05}}}
    assert records[4]["commit"] is None  # a repository without a commit yet
    assert records[4]["host"] == targets.host_description()
