"""benchmarks/stage2_seeds.py's command line: recipe variants and the workspace it needs."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("stage2_seeds", REPO / "benchmarks/stage2_seeds.py")
seeds = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(seeds)


def test_a_variant_is_a_name_and_its_overrides() -> None:
    assert seeds.parse_variant("b32=train.instruct.tiny.text_warmup_batch_size=32") == (
        "b32", ["train.instruct.tiny.text_warmup_batch_size=32"])
    assert seeds.parse_variant("two=a.b=1,c.d=x") == ("two", ["a.b=1", "c.d=x"])
    assert seeds.parse_variant("thr=model.suspicious_thresholds=[0.25,0.5],train.seed=2") == (
        "thr", ["model.suspicious_thresholds=[0.25,0.5]", "train.seed=2"])


@pytest.mark.parametrize("text", ["b32", "=a.b=1", "name=novalue"])
def test_a_variant_without_a_name_or_an_override_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=KEY=VALUE"):
        seeds.parse_variant(text)


def test_a_workspace_without_stage_1_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(sys, "argv", ["stage2_seeds.py", "--workspace", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"lacks models/expert, data/instruct/train.json: run `make pipeline`"):
        seeds.main()


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "--jobs and --threads must be at least 1"),
    (["--seeds", "0,one"], "give comma-separated integers"),
    (["--seeds", ","], "names no seed"),
])
def test_bad_command_lines_are_refused_with_what_to_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, args: list[str],
                                                         message: str) -> None:
    for needed in ("models/expert", "data/instruct"):
        (tmp_path / needed).mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "data/instruct/train.json").write_text("[]")
    monkeypatch.setattr(sys, "argv", ["stage2_seeds.py", "--workspace", str(tmp_path), *args])
    with pytest.raises(SystemExit):
        seeds.main()
    assert message in capsys.readouterr().err
