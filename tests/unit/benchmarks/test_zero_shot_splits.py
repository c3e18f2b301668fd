"""benchmarks/zero_shot_splits.py's breakdown of the image score: AUROC per group of anomalies against the normal
images of their own category, and the anomalies' mask-area quartiles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("zero_shot_splits", REPO / "benchmarks/zero_shot_splits.py")
zss = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(zss)


def test_each_group_is_ranked_against_the_normals_of_its_own_category() -> None:
    # category a: normals 0.1, 0.2; a scratch (0.15) ranks between them, a stain (0.9) above both
    # category b: normals 0.8, 0.9 (higher than every a anomaly, which must not matter); a scratch at 0.95
    scores = [0.1, 0.2, 0.15, 0.9, 0.8, 0.9, 0.95]
    labels = [0, 0, 1, 1, 0, 0, 1]
    categories = ["a", "a", "a", "a", "b", "b", "b"]
    groups = ["", "", "scratch", "stain", "", "", "scratch"]
    out = zss.auroc_by_group(scores, labels, categories, groups)
    assert list(out) == ["scratch", "stain"]
    assert out["scratch"] == {"auroc": pytest.approx((0.5 + 1.0) / 2), "categories": 2, "anomalies": 2}
    assert out["stain"] == {"auroc": pytest.approx(1.0), "categories": 1, "anomalies": 1}


def test_a_group_whose_category_has_no_normals_is_left_out() -> None:
    out = zss.auroc_by_group([0.3, 0.6, 0.9], [0, 1, 1], ["a", "a", "b"], ["", "hole", "crack"])
    assert list(out) == ["hole"]


def test_mask_area_quartiles_label_the_anomalies_only() -> None:
    areas = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.0]
    labels = [0, 1, 1, 1, 1, 1, 0]
    names = zss.area_quartiles(areas, labels)
    assert names[0] == "" and names[-1] == ""
    assert names[1].startswith("q1 0.010-") and names[5].startswith("q4 ") and names[5].endswith("-0.050")
    assert [n.split()[0] for n in names[1:6]] == ["q1", "q2", "q3", "q4", "q4"]
    assert zss.area_quartiles([0.0, 0.0], [0, 0]) == ["", ""]


def test_an_object_scores_the_max_of_its_views_and_is_anomalous_when_any_view_is() -> None:
    # object g1: views 0.2 / 0.7 (normal); g2: 0.4 / 0.3, one view anomalous; a row without a group stands alone
    scores, labels, cats = zss.per_object_max([0.2, 0.4, 0.7, 0.3, 0.9], [0, 0, 0, 1, 1],
                                              ["box", "box", "box", "box", "bowl"], ["g1", "g2", "g1", "g2", ""])
    assert scores == [0.7, 0.4, 0.9]
    assert labels == [0, 1, 1]
    assert cats == ["box", "box", "bowl"]


def test_rank_fusion_averages_the_two_scores_ranks_and_only_then() -> None:
    predictor = [0.9, 0.1, 0.5, 0.3]
    out = zss.score_variants(predictor, np.zeros((4, 2, 2)), [0.0, 0.3, 0.2, 0.1])
    assert out["rank_fusion"].tolist() == pytest.approx([0.5, 0.5, 2 / 3, 1 / 3])
    assert "rank_fusion" not in zss.score_variants(predictor, np.zeros((4, 2, 2)))


def test_the_expert_s_own_score_is_the_first_variant_and_the_predictor_s_without_one() -> None:
    predictor = [0.9, 0.1, 0.5, 0.3]
    assert zss.VARIANTS[0] == "image_score"
    assert zss.score_variants(predictor, np.zeros((4, 2, 2)))["image_score"].tolist() == predictor
    own = zss.score_variants(predictor, np.zeros((4, 2, 2)), [0.0, 0.3, 0.2, 0.1], image_score=[0.2, 0.6, 0.4, 0.8])
    assert own["image_score"].tolist() == [0.2, 0.6, 0.4, 0.8] and own["predictor"].tolist() == predictor


def _result(split: list[str], seed: int, image: float, medical: float | None) -> dict:
    extensions = {"3d": {"image_auroc": 0.5, "object_image_auroc": 0.6}}
    if medical is not None:
        extensions["medical"] = {"image_auroc": medical}
    return {"held_out": split, "seed": seed, "image_auroc": image, "pixel_auroc": 0.9,
            "in_distribution_image_auroc": 0.8, "extensions": extensions}


def test_the_seed_summary_gives_each_seed_and_their_mean_and_spread_per_split() -> None:
    results = [_result(["pcb", "round_part"], 0, 0.70, 0.6), _result(["dice"], 0, 0.90, 0.6),
               _result(["pcb", "round_part"], 1, 0.80, None), _result(["dice"], 1, 0.80, 0.8)]
    rows = {(r["split"], r["figure"]): r for r in zss.seed_summary(results)}
    image = rows[("pcb, round_part", "zero-shot image AUROC")]
    assert image["seeds"] == {0: 0.70, 1: 0.80}
    assert image["mean"] == pytest.approx(0.75)
    assert image["sd"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    medical = rows[("pcb, round_part", "medical image AUROC")]  # seed 1 ran without the medical set
    assert medical["seeds"] == {0: 0.6, 1: None} and medical["mean"] == pytest.approx(0.6) and medical["sd"] is None
    assert rows[("dice", "medical image AUROC")]["mean"] == pytest.approx(0.7)
    assert len(rows) == 2 * len(zss.SUMMARY_FIGURES)
    table = zss.summary_table(list(rows.values()), [0, 1]).splitlines()
    assert table[0] == "| held out | figure | seed 0 | seed 1 | mean ± sd |"
    assert "| pcb, round_part | zero-shot image AUROC | 0.700 | 0.800 | 0.750 ± 0.071 |" in table
    assert "| pcb, round_part | medical image AUROC | 0.600 | - | 0.600 |" in table


def test_seeds_and_a_seed_override_are_refused_together(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["zero_shot_splits.py", "--seeds", "0,1", "--set", "train.seed=3"])
    with pytest.raises(SystemExit):
        zss.main()
    assert "give one of them" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["zero_shot_splits.py", "--seeds", "0,x"])
    with pytest.raises(SystemExit):
        zss.main()
    assert "--seeds: seeds '0,x': give whole numbers" in capsys.readouterr().err


def test_seeds_train_every_split_once_per_seed_in_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def fake_run_split(held_out, base_params, root, train, overrides, tower, rescore):
        calls.append((held_out, root, overrides))
        seed = int(overrides[-1].split("=")[1])
        result = _result(held_out, seed, 0.7 + 0.1 * seed, 0.6)
        result.update(per_class={}, variants={v: 0.5 for v in zss.VARIANTS},
                      in_distribution_variants={v: 0.5 for v in zss.VARIANTS},
                      variants_f1={v: 0.5 for v in zss.VARIANTS},
                      in_distribution_variants_f1={v: 0.5 for v in zss.VARIANTS}, in_distribution_by={},
                      extensions={})  # the printout of the extension sets is not what this test is about
        return result

    monkeypatch.setattr(zss, "run_split", fake_run_split)
    monkeypatch.setattr("sys.argv", ["zero_shot_splits.py", "--workdir", str(tmp_path), "--split", "pcb,round_part",
                                     "--split", "dice", "--seeds", "2,0", "--set", "train.expert.tiny.epochs=1"])
    zss.main()
    assert [(c[0], c[1].name, c[2]) for c in calls] == [
        (["pcb", "round_part"], "seed_2", ["train.expert.tiny.epochs=1", "train.seed=2"]),
        (["dice"], "seed_2", ["train.expert.tiny.epochs=1", "train.seed=2"]),
        (["pcb", "round_part"], "seed_0", ["train.expert.tiny.epochs=1", "train.seed=0"]),
        (["dice"], "seed_0", ["train.expert.tiny.epochs=1", "train.seed=0"]),
    ]
    out = capsys.readouterr().out
    assert "| held out | figure | seed 2 | seed 0 | mean ± sd |" in out
    assert "| pcb, round_part | zero-shot image AUROC | 0.900 | 0.700 | 0.800 ± 0.141 |" in out
    assert "pcb, round_part (seed 2)" in out
