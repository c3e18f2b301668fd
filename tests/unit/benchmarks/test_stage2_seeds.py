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
    (["--seeds", "0,one"], "give whole numbers separated by commas"),
    (["--seeds", ","], "give at least one seed"),
    (["--seeds", "0,0"], "a seed appears twice"),
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


def test_reasoning_scores_the_benchmark_and_reads_the_descriptions(tmp_path: Path) -> None:
    """``--reasoning`` on a tiny random model: the evaluate stage's reasoning scores and the describe claims, split by
    the expert's verdict, come back for every benchmark image."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from anomaly_ov.config import load_params
    from anomaly_ov.model.presets import build_model, build_processor, load_pretrained, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    params = load_params(None, ["evaluate.reasoning_max_new_tokens=6", "evaluate.device=cpu"])
    test, reasoning = [], []
    for i in range(4):
        rel = f"data/raw/pcb/{i}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / rel)
        test.append({"image": f"Synth/pcb/{i}.png", "anomaly": i >= 2, "file": rel, "category": "pcb"})
        if i >= 2:
            reasoning.append({"image": f"Synth/pcb/{i}.png", "file": rel, "category": "pcb", "defect_type": "stain",
                              "questions": ["What is the defect?", "Why might it happen?"],
                              "answers": ["A bright stain near the top.", "Contamination during handling."],
                              "kinds": ["low_level", "complex"]})
    bench = tmp_path / params.instruct.bench_dir
    bench.mkdir(parents=True)
    (bench / "test_data.json").write_text(json.dumps(test))
    (bench / "visa_dr.json").write_text(json.dumps(reasoning))
    tokenizer = train_tokenizer(["Yes, there is a defect.", "No defect is visible."] * 4)
    model_dir = tmp_path / "model"
    save_pretrained(build_model(params, tokenizer), build_processor(params, tokenizer), model_dir)

    out = seeds._reasoning(tmp_path, params, *load_pretrained(model_dir), threshold=0.5)

    for key in ("sbert_low", "rouge_low", "sbert_complex"):
        assert -1.0 <= out[key] <= 1.0, key
    shares = [out["claims_when_expert_anomalous"], out["claims_when_expert_normal"]]
    assert any(s is not None for s in shares)  # 4 images, each on one side of the threshold
    assert all(s is None or 0.0 <= s <= 1.0 for s in shares)
    table = seeds.reasoning_table([{"variant": "default", "seed": 3, **out, "rouge_low": None}])
    assert table.splitlines()[1].split()[:2] == ["default", "3"] and " - " in table  # a missing score prints "-"
