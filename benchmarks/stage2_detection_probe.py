"""Does the trained model's Yes/No answer follow the expert? Prints agreement and accuracy figures.

Asks the detection question about (a) training-category images that no stage trained on (stage 1's held-out rows,
which the tower pretraining holds out too, that are not in stage 2's seeded record draw) and (b) every image of the
zero-shot evaluation categories, and compares each answer with the label and with the expert's own verdict (image
score >= ``--threshold``). A model that ignores the
expert answers the same word to every image; one that follows it agrees with the expert far above chance.
It also asks the unseen training-category images for a description and counts how often it names the image's
own object (the first category word it uses) and, for anomalous images, the defect type, and how often it claims a
defect at all (for anomalous and normal images, and in agreement with the expert's verdict).

Where the object gets lost (``object_linear_probe``): a 4-fold logistic regression tells the training families apart
from what the model holds about every unseen industrial image of stage 1's held-out rows (about 12 images per family
in the default; ``chance`` is the largest family's share), at each step from the tower to the answer:

- ``pretrained_tower``: the ``pretrain_tower`` stage's tower (tiny preset; absent when that stage trained none),
  mean over the base view's tokens;
- ``stage1_tower``: the trained model's tower (stage 1's: stage 2 keeps it frozen), the same pooling;
- ``projected``: the mean of the projector's output for those tokens, what the LLM receives;
- ``llm_middle`` and ``llm_answer_start``: the LLM's hidden state at the first answer position of the describe
  question, after its middle and its last layer.

A step whose accuracy falls far below the one before it is where the object is lost; the descriptions cannot name
the object more often than ``llm_answer_start`` tells it apart.

    python benchmarks/stage2_detection_probe.py [--workspace .] [--per-label 30] [--threshold 0.5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
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
    from anomaly_ov.train.instruct import DESCRIBE_PROMPT, training_records

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
    # no stage saw them: stage 1's held-out rows (the tower pretraining holds out the same) that stage 2 did not draw
    from anomaly_ov.train.expert import split_training_rows

    _, held_out = split_training_rows(params, workspace)
    held_images = {f"{r}/{p}" for r, p in zip(held_out["root"], held_out["image_path"], strict=True)}
    unseen = manifest[(manifest["role"] == "train") & manifest["image"].isin(held_images)
                      & ~manifest["image"].isin(seen)]
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
    rows = sets["training_categories_unseen_by_stage2"]
    described = predictor.predict([str(workspace / p) for p in rows["image"]], question=DESCRIBE_PROMPT, generate=True,
                                  max_new_tokens=40, batch_size=8)
    out["descriptions_of_unseen_training_images"] = _grounding(
        [p.answer or "" for p in described], list(rows["category"]), list(rows["defect_type"]),
        list(rows["label"] == "anomaly"), sorted(manifest.loc[manifest["role"] == "train", "category"].unique()),
        [p.score >= threshold for p in described])
    chain_rows = unseen[unseen["modality"] == "industrial"]
    out["object_linear_probe"] = object_chain(model, processor, workspace, params, [
        workspace / p for p in chain_rows["image"]], list(chain_rows["category"]))
    return out


#: the folds of the linear probes (a family needs this many images to take part)
FOLDS = 4


def linear_probe_accuracy(features: np.ndarray, labels: Sequence[str], folds: int = FOLDS) -> float:
    """Mean held-out accuracy of a logistic regression predicting ``labels`` from ``features`` [N, D] over
    ``folds`` stratified folds (features standardised on each fold's training part)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return round(float(cross_val_score(classifier, features, np.asarray(labels), cv=splits).mean()), 3)


def representations(model, processor, images: Sequence, pretrained_tower=None) -> dict[str, np.ndarray]:
    """[N, D] per step of the object chain (see the module docstring) for PIL ``images``, one at a time."""
    from anomaly_ov.model.tokenizer import IMAGE_TOKEN
    from anomaly_ov.train.instruct import DESCRIBE_PROMPT

    rows: dict[str, list[np.ndarray]] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        rows.setdefault(name, []).append(value.float().numpy())

    conversation = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{DESCRIBE_PROMPT}"}]
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        for image in images:
            inputs = processor([[image]], [conversation], add_generation_prompt=True)
            base_view = inputs["pixel_values"][0][:1]  # the image's first crop: its base view
            if pretrained_tower is not None:
                keep("pretrained_tower", pretrained_tower(base_view).last_hidden_state.mean(1)[0])
            tokens, _ = model.tower_features(base_view)
            keep("stage1_tower", tokens.mean(1)[0])
            # in the projector's dtype, as the model's own encoding does (a real checkpoint's may be 16-bit)
            keep("projected", projector(tokens.to(projector.linear_1.weight.dtype)).mean(1)[0])
            hidden = model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")},
                           output_hidden_states=True, logits_to_keep=1).hidden_states
            keep("llm_middle", hidden[len(hidden) // 2][0, -1])
            keep("llm_answer_start", hidden[-1][0, -1])
    return {name: np.stack(values) for name, values in rows.items()}


def object_chain(model, processor, workspace: Path, params, paths: list[Path], categories: list[str]) -> dict:
    """Linear-probe accuracy of the families at each step of the object chain for the images ``paths``; families
    with fewer than :data:`FOLDS` of them are left out (and counted)."""
    from collections import Counter

    from PIL import Image

    from anomaly_ov.train.pretrain_tower import tiny_tower, tower_file

    counts = Counter(categories)
    kept = [i for i, c in enumerate(categories) if counts[c] >= FOLDS]
    families = {categories[i] for i in kept}
    if len(families) < 2:
        return {"skipped": f"{len(families)} of the families have >= {FOLDS} unseen industrial images; "
                           "the probe needs 2"}
    tower = None
    if tower_file(params, workspace).is_file():  # the tiny preset's pretrained tower, when that stage trained one
        from safetensors.torch import load_file

        tower = tiny_tower()
        tower.load_state_dict(load_file(str(tower_file(params, workspace))), strict=True)
        tower.eval()
    images = [Image.open(paths[i]).convert("RGB") for i in kept]
    features = representations(model, processor, images, tower)
    labels = [categories[i] for i in kept]
    return {
        "images": len(kept),
        "families": len(families),
        "families_left_out": len(counts) - len(families),
        "chance": round(max(Counter(labels).values()) / len(labels), 3),
        **{name: linear_probe_accuracy(values, labels) for name, values in features.items()},
    }


def _words(name: str, kind: str = "category") -> set[str]:
    """How an answer may spell a category or defect name ("tiles" -> "tile", "color" -> "colour"), including the
    name the instruction data uses for it (a category's noun: "dice" -> "die", "ic_chip" -> "chip"; a defect
    type's name: "bent" -> "deformation", "extra" -> "excess material")."""
    from anomaly_ov.instruct.knowledge import load_knowledge

    base = str(name).lower().replace("_", " ")
    words = {base, base.removesuffix("s"), base.replace("color", "colour")}
    knowledge = load_knowledge()
    if kind == "category":
        with contextlib.suppress(KeyError):
            words.add(knowledge.category("industrial", str(name)).noun.lower())
        return words
    info = knowledge.defect("industrial", str(name))
    if not info.is_generic:  # the generic entry's "defect" would match every answer
        words.add(info.name.lower())
    return words


#: how the instruction data's answers about a normal image say so (``anomaly_ov.instruct.answers``); they also open
#: with one of its ``NORMAL_OPENERS`` ("No defect is visible. ...", "Nothing is wrong with ...")
NO_DEFECT_PHRASES = ("no defect", "no visible defect", "looks normal", "no anomaly", "is normal", "nothing is wrong",
                     "no abnormality", "no part of", "not damaged", "no area is anomalous", "appears normal")


def says_defective(answer: str) -> bool:
    """Whether a description claims a defect: it neither opens with a verdict of none nor says, in the training
    answers' words, that there is none."""
    from anomaly_ov.instruct.answers import opens_with_no_defect

    return not opens_with_no_defect(answer) and not any(phrase in answer.lower() for phrase in NO_DEFECT_PHRASES)


def share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def _grounding(answers: list[str], categories: list[str], defects: list[str], anomalous: list[bool],
               all_categories: list[str], expert: list[bool] | None = None) -> dict:
    """Does a description name the image's own object (the first category it mentions) and, for an anomalous
    image, its defect type? Chance for the object is one over the number of training categories. Also: how often it
    claims a defect for the anomalous and the normal images, and (given the expert's verdicts) how often that claim
    is the expert's verdict, as the Yes / No answer's agreement is."""

    def first_named(answer: str) -> str | None:
        hits = [(min(answer.find(w) for w in _words(c) if w in answer), c) for c in all_categories
                if any(w in answer for w in _words(c))]
        return min(hits)[1] if hits else None

    lower = [a.lower() for a in answers]
    named = [first_named(a) for a in lower]
    with_defect = [any(w in a for w in _words(d, "defect")) for a, d, bad in zip(lower, defects, anomalous, strict=True)
                   if bad]
    return {
        "images": len(answers),
        "names_its_object": round(sum(n == c for n, c in zip(named, categories, strict=True)) / len(answers), 3),
        "names_an_object": round(sum(n is not None for n in named) / len(answers), 3),
        "object_chance": round(1 / max(len(all_categories), 1), 3),
        "names_its_defect_type": round(sum(with_defect) / max(len(with_defect), 1), 3),
        "anomalous_described_as_defective": share([says_defective(a) for a, bad in zip(answers, anomalous,
                                                                                        strict=True) if bad]),
        "normal_described_as_defective": share([says_defective(a) for a, bad in zip(answers, anomalous,
                                                                                     strict=True) if not bad]),
        **({"description_agrees_with_expert": share([says_defective(a) == e for a, e in zip(answers, expert,
                                                                                             strict=True)])}
           if expert is not None else {}),
        "examples": {("anomaly" if bad else "normal"): a for a, bad in zip(answers, anomalous, strict=True)},
    }


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
