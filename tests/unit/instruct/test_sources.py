"""Released LLaVA-format instruction sets (Anomaly-Instruct-125k layout) as stage-2 sources: validated record by
record, read by stage 2 with paths relative to the source's image root, and seen by DVC as train_instruct deps."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ov.config import Params
from anomaly_ov.instruct.sources import InstructSourceError, load_sources
from anomaly_ov.train.instruct import instruction_pool

REPO_ROOT = Path(__file__).resolve().parents[3]


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(path)


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [t for q, a in pairs for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


GOOD = [
    {"id": "mvtec_bottle_000", "image": "mvtec_anomaly_detection/bottle/test/broken_large/000.png",
     "conversations": _turns(("<image>\nAre there any defects for the object in the image?", "Yes"),
                             ("Where is it?", "A large break at the rim of the bottle."))},
    {"id": "shapenet_bowl_0", "image": [f"anomaly_shapenet/bowl/view_{v}.png" for v in range(4)],
     "conversations": _turns(("<image>\n<image>\n<image>\n<image>\nDescribe the object.", "A bowl with a dent."))},
    {"id": "text_only_1", "conversations": _turns(("What causes scratches on metal?", "Abrasive contact."))},
]


def _release_layout(root: Path, records: list[dict]) -> Path:
    """<root>/<json> and the images the good records name, as the release lays them out under its data folder."""
    for i, rec in enumerate(GOOD):
        image = rec.get("image")
        for rel in [image] if isinstance(image, str) else image or []:
            _png(root / rel, seed=i)
    (root / "anomaly_instruct.json").write_text(json.dumps(records))
    return root


def _params(root: str, use_synthesized: bool = False, **source) -> Params:
    src = {"name": "anomaly_instruct", "json_path": "anomaly_instruct.json", "image_root": ".", **source}
    return Params(instruct={"sources_root": root, "sources": [src], "use_synthesized": use_synthesized})


def test_released_set_alone_is_what_stage2_reads(tmp_path, tiny_processor):
    from anomaly_ov.data.loaders import InstructDataset
    from anomaly_ov.train.instruct import make_encoder

    _release_layout(tmp_path / "data/instruct_sources", GOOD)
    params = _params("data/instruct_sources")
    records = instruction_pool(params, tmp_path)
    assert [r["id"] for r in records] == [r["id"] for r in GOOD] and {r["source"] for r in records} == {
        "anomaly_instruct"}
    root = (tmp_path / "data/instruct_sources").absolute()
    assert records[0]["image"] == str(root / GOOD[0]["image"])
    assert records[1]["image"] == [str(root / p) for p in GOOD[1]["image"]]
    dataset = InstructDataset(records, tmp_path / "elsewhere", make_encoder(tiny_processor, 4096))
    single, views, text = dataset[0], dataset[1], dataset[2]
    assert single["pixel_values"].shape[0] == 1 and views["pixel_values"].shape[0] == 4
    assert text.get("pixel_values") is None and (text["labels"] != -100).any()
    report = json.loads((tmp_path / "reports/instruct_sources_validation.json").read_text())
    assert report["ok"] and report["subject"] == "anomaly_instruct"


def test_released_set_mixes_with_the_synthesized_one(tmp_path):
    _release_layout(tmp_path / "released", GOOD)
    _png(tmp_path / "data/raw/x.png")
    synth = [{"id": "synth_0", "image": "data/raw/x.png", "label": "normal",
              "conversations": _turns(("<image>\nAny defect?", "No"))}]
    (tmp_path / "data/instruct").mkdir(parents=True)
    (tmp_path / "data/instruct/train.json").write_text(json.dumps(synth))
    records = instruction_pool(_params(str(tmp_path / "released"), use_synthesized=True), tmp_path)
    assert [r["id"] for r in records] == ["synth_0"] + [r["id"] for r in GOOD]
    assert records[0]["image"] == "data/raw/x.png"  # the synthesized set keeps its workspace-relative paths


def test_every_bad_record_is_reported_by_id(tmp_path):
    bad = [
        {"id": "bad_missing", "image": "mvtec_anomaly_detection/bottle/nowhere.png",
         "conversations": _turns(("<image>\nAny defect?", "No"))},
        {"id": "bad_roles", "image": GOOD[0]["image"],
         "conversations": [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "human", "value": "No"}]},
        {"id": "bad_placeholder", "image": GOOD[0]["image"], "conversations": _turns(("Any defect?", "No"))},
        {"id": "bad_escape", "image": "../outside.png", "conversations": _turns(("<image>\nAny defect?", "No"))},
        *[{"id": f"lost_{i}", "image": f"lost/{i}.png", "conversations": _turns(("<image>\nAny defect?", "No"))}
          for i in range(25)],
    ]
    _png(tmp_path / "outside.png")
    _release_layout(tmp_path / "released", GOOD + bad)
    report_path = tmp_path / "reports/sources.json"
    with pytest.raises(InstructSourceError, match="anomaly_instruct") as err:
        load_sources(_params(str(tmp_path / "released")), tmp_path, report_path)
    assert "record bad_missing" in str(err.value)
    checks = {c["name"]: c for c in json.loads(report_path.read_text())["checks"]}
    failing = {name: {f["id"] for f in c["failing"]} for name, c in checks.items() if not c["passed"]}
    assert failing["anomaly_instruct.images_exist"] == {"bad_missing"} | {f"lost_{i}" for i in range(25)}
    assert checks["anomaly_instruct.images_exist"]["n_failing"] == 26  # every one listed, not the first 20
    assert failing["anomaly_instruct.roles_alternate"] == {"bad_roles"}
    assert failing["anomaly_instruct.image_placeholders"] == {"bad_placeholder"}
    assert failing["anomaly_instruct.images_inside_root"] == {"bad_escape"}
    assert "record bad_roles" in report_path.with_suffix(".md").read_text()
    # the same file with paths allowed to leave the image root: the escape is no longer an error
    allowed = _params(str(tmp_path / "released"), allow_external_paths=True)
    with pytest.raises(InstructSourceError) as err:
        load_sources(allowed, tmp_path, report_path)
    assert "images_inside_root" not in str(err.value)


def test_source_outside_the_tracked_root_is_refused(tmp_path):
    _release_layout(tmp_path / "released", GOOD)
    params = _params(str(tmp_path / "released"), json_path=str(tmp_path / "elsewhere.json"))
    with pytest.raises(InstructSourceError, match="not inside instruct.sources_root"):
        load_sources(params, tmp_path)
    with pytest.raises(InstructSourceError, match="not found"):
        load_sources(_params(str(tmp_path / "released"), json_path="missing.json"), tmp_path)


@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None, reason="needs dvc and git")
def test_dvc_sees_the_sources_as_train_instruct_dependencies(tmp_path, monkeypatch):
    from dvc.repo import Repo

    from anomaly_ov.config import dump_params

    released = _release_layout(tmp_path / "released", GOOD)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    dump_params(_params(str(released)), repo / "params.yaml")
    monkeypatch.chdir(repo)  # DVC resolves stage targets against the working directory
    (stage,) = Repo(str(repo)).stage.collect("train_instruct")
    assert str(released) in {str(d.fs_path) for d in stage.deps}
    assert {"instruct.sources", "instruct.sources_root", "instruct.use_synthesized"} <= {
        p for d in stage.deps if hasattr(d, "params") for p in d.params}
