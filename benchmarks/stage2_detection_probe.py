"""Does the trained model's Yes/No answer follow the expert? Prints agreement and accuracy figures.

Asks the detection question about (a) training-category images that stage 2 did not train on (the same seeded
record draw as the stage) and (b) every image of the zero-shot evaluation categories, and compares each answer
with the label and with the expert's own verdict (image score >= ``--threshold``). A model that ignores the
expert answers the same word to every image; one that follows it agrees with the expert far above chance.

    python benchmarks/stage2_detection_probe.py [--workspace .] [--per-label 30] [--threshold 0.5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch


def _figures(answers: list[str], scores: list[float], labels: list[bool], threshold: float) -> dict:
    from sklearn.metrics import f1_score

    yes = [a.strip().lower().startswith("yes") for a in answers]
    expert = [s >= threshold for s in scores]
    n = len(answers)
    return {
        "images": n,
        "answered_yes": sum(yes),
        "answered_no": sum(a.strip().lower().startswith("no") for a in answers),
        "accuracy": round(sum(y == t for y, t in zip(yes, labels, strict=True)) / n, 3),
        "macro_f1": round(float(f1_score(labels, yes, average="macro", zero_division=0)), 3),
        "expert_accuracy": round(sum(e == t for e, t in zip(expert, labels, strict=True)) / n, 3),
        "agreement_with_expert": round(sum(y == e for y, e in zip(yes, expert, strict=True)) / n, 3),
    }


def probe(workspace: Path, per_label: int, threshold: float, seed: int = 0) -> dict:
    import pandas as pd

    from anomaly_ov.config import load_params
    from anomaly_ov.data.loaders import record_images
    from anomaly_ov.model.predict import Predictor
    from anomaly_ov.model.presets import load_pretrained
    from anomaly_ov.paths import in_workspace
    from anomaly_ov.train.instruct import training_records

    params = load_params(workspace / "params.yaml")
    model_dir = in_workspace(workspace, params.train.instruct.output_dir)
    if not (model_dir / "config.json").is_file():
        return {"skipped": f"no trained model in {model_dir}: run `make pipeline` (or the train_instruct stage) first"}
    manifest = pd.read_parquet(in_workspace(workspace, params.data.manifest))
    manifest["image"] = [f"{r}/{p}" for r, p in zip(manifest["root"], manifest["image_path"], strict=True)]
    records = training_records(params, workspace)
    seen = {img for rec in records for img in record_images(rec)}
    model, processor = load_pretrained(model_dir)
    predictor = Predictor(model.eval(), processor)
    rng = random.Random(seed)
    unseen = manifest[(manifest["role"] == "train") & ~manifest["image"].isin(seen)]
    picks = []
    for label in ("normal", "anomaly"):
        pool = unseen[unseen["label"] == label]
        picks.append(pool.iloc[rng.sample(range(len(pool)), min(per_label, len(pool)))])
    sets = {"training_categories_unseen_by_stage2": pd.concat(picks),
            "zero_shot_categories": manifest[manifest["role"] == "eval"]}
    out = {"stage2_records": len(records), "threshold": threshold}
    for name, rows in sets.items():
        preds = predictor.predict([str(workspace / p) for p in rows["image"]], generate=True, max_new_tokens=4,
                                  batch_size=8)
        out[name] = _figures([p.answer or "" for p in preds], [p.score for p in preds],
                             list(rows["label"] == "anomaly"), threshold)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--per-label", type=int, default=30)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(probe(args.workspace.resolve(), args.per_label, args.threshold), indent=2))


if __name__ == "__main__":
    main()
