"""Stage 1's zero-shot AUROC on other held-out splits of the synthetic categories: is the gap the recipe or the data?

For each split (a list of held-out evaluation categories; every other synthetic category trains), the script makes a
temporary workspace with the repository's params.yaml, runs the real ``prepare`` and ``train_expert`` stages there
(tracking off, the tiny recipe unchanged), and scores the held-out categories with the trained expert: image AUROC
from the expert's score, pixel AUROC from the base-view map (as the ``evaluate`` stage, whose square synthetic images
have a 1 x 1 crop grid). It also prints the in-distribution held-out slice's image AUROC from the stage report, and
for each held-out category how many normal images the expert scores at or above its median anomaly.

    .venv/bin/python benchmarks/zero_shot_splits.py [--split pcb,round_part --split wood,tiles ...] [--threads 2]
        [--tower pretrained|random] [--workdir DIR [--rescore]] [--train a,b,...] [--set key=value ...]
        [--seeds 0,1,2]

``--seeds`` trains every split once per ``train.seed`` (workspaces ``<workdir>/seed_<N>/<split>``) and ends with a
markdown table of each seed's figures (zero-shot image and pixel AUROC, stage 1's held-out rows, medical, 3D per
view and per object) with their mean and standard deviation: one run moves by up to 0.05 of image AUROC and 0.3 of
medical AUROC with the seed, so a recipe change is compared over several.

``--tower pretrained`` (the default, as the pipeline) runs the ``pretrain_tower`` stage before stage 1; ``random``
starts stage 1 from a random tower (``train.tower.enabled=false``). Each split also prints the image AUROC and the
verdict F1 at 0.5 of several image scores read from the same expert (``VARIANTS``: the expert's own score, which the
headline figures are, the predictor, the base-view map's max, top-1 % / top-5 % mean, mean, the predictor / map-max
fusion, the training-free ``self_similarity`` (anomaly_ov/model/expert.py) of the tower's features and its
``rank_fusion`` with the predictor, both without an F1 since they are not probabilities), on the held-out categories and
on stage 1's held-out rows of the training categories; ``--rescore`` only re-scores the experts kept in ``--workdir``.
Last, for those held-out rows, the image AUROC of each defect type and each quartile of the anomalies' mask areas
against the normal images of the same category (:func:`auroc_by_group`): which anomalies the image score misses. And the
same expert's image AUROC on the medical and 3D extensions' evaluation sets (per modality; per view and per object, the
max over its views), which is what the ``extend_medical`` / ``extend_3d`` stages report, since stage 2 leaves the expert
as stage 1 trained it: a medical or 3D training change is measured here in one stage-1 run per seed (seed 0 of the
default before the self-similarity term: medical 0.769, 3D per view 0.609 and per object 0.703, as the pipeline's
reports to the digit).

The default (the self-similarity term in the predictor, seed 0, 2 threads, about 5.3 min per split), image / pixel
AUROC: ic_chip, perforated 0.859 / 0.975 (ic_chip 0.817, perforated 0.900); dice, connector 0.841 / 0.961 (connector
0.792, dice 0.889); pcb, round_part 0.782 / 0.955 (pcb 0.738, round_part 0.827).

The default before the self-similarity term (21 families with optional mounted parts, medical / 3D in training,
pretrained tower, one cycle, the BCE kept off the maps, 16 epochs, the blended surfel renders of the training
spheres; 2 threads, one split after the other, about 4.7 min per split), image / pixel AUROC: ic_chip, perforated
0.811 / 0.975 (ic_chip 0.766, perforated 0.856); dice, connector 0.823 / 0.954 (connector 0.742, dice 0.904); pcb,
round_part (the pipeline's own expert) 0.732 / 0.924. With the previous renderer: 0.804 / 0.977, 0.781 / 0.955 and
0.782 / 0.966. At 8 epochs (1 thread, two splits at once): 0.769 / 0.952, 0.730 / 0.957 and 0.724 / 0.924; 8 epochs
without the mounted parts: 0.724 / 0.969, 0.567 / 0.955 and 0.698 / 0.933. The table below is an older recipe's.

About 4 minutes per split on 2 CPU cores (12 minutes for the three default splits). Measured (seed 0, 2 threads):

| held out | image AUROC (per category) | pixel AUROC | normals >= median anomaly | in-distribution image AUROC |
|---|---|---|---|---|
| pcb, round_part (the default) | 0.65 (0.60, 0.70) | 0.86 | 21/50, 14/50 | 0.89 |
| wood, tiles | 0.96 (0.99, 0.94) | 0.99 | 0/50, 0/50 | 0.84 |
| pill, metal | 0.85 (0.73, 0.97) | 0.96 | 9/50, 0/50 | 0.80 |

The same recipe clears 0.90 zero-shot on held-out categories whose normal images hold nothing defect-like. pcb
(chips: dark rectangles), round_part (bolt holes showing the table) and pill (speckles) have normal parts that look
like the training categories' stains and holes, and the expert scores those normal images as high as the anomalies.
Runs differ by a few hundredths with the thread count (1 thread: wood, tiles 0.93; pill, metal 0.86).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_SPLITS = ("pcb,round_part", "wood,tiles", "pill,metal")
REPO = Path(__file__).resolve().parents[1]


#: image scores compared on the same trained expert (see :func:`score_variants`); the first is the expert's own
VARIANTS = ("image_score", "predictor", "map_max", "map_top1", "map_top5", "map_mean", "fusion", "self_similarity",
            "rank_fusion")
#: variants that are ranks, not probabilities: their verdict at 0.5 means nothing, so no F1 is reported
UNCALIBRATED = ("self_similarity", "rank_fusion")
#: the variants printed beside the expert's score for the medical and 3D sets
EXTENSION_VARIANTS = ("predictor", "self_similarity", "rank_fusion")


def _ranks(values):
    import numpy as np
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    return (rankdata(values) - 1) / max(len(values) - 1, 1)


def score_variants(predictor, base_maps, self_similarity_scores=None, image_score=None) -> dict:
    """Candidate image scores from the expert's predictor probabilities [B] and base-view maps [B, G, G].

    ``image_score`` [B]: the expert's own score (``ExpertOutput.scores``, e.g. ``model.expert.image_score:
    calibrated_fusion``); the predictor's when not given. ``map_topK``: mean of the map's top K % cells;
    ``fusion``: mean of the predictor's probability and the map max;
    with ``self_similarity_scores`` [B] (the expert module's ``self_similarity``) also those and ``rank_fusion``,
    the mean of the predictor's and the self-similarity's ranks among the scored images (it needs the whole set, so
    it measures what the two scores hold together; a deployed score would need a calibration instead).
    """
    import numpy as np

    predictor = np.asarray(predictor, dtype=np.float64)
    flat = np.asarray(base_maps, dtype=np.float64).reshape(len(predictor), -1)
    ordered = -np.sort(-flat, axis=1)

    def top(fraction: float):
        k = max(1, int(round(fraction * flat.shape[1])))
        return ordered[:, :k].mean(axis=1)

    out = {"image_score": predictor if image_score is None else np.asarray(image_score, dtype=np.float64),
           "predictor": predictor, "map_max": ordered[:, 0], "map_top1": top(0.01), "map_top5": top(0.05),
           "map_mean": flat.mean(axis=1), "fusion": 0.5 * (predictor + ordered[:, 0])}
    if self_similarity_scores is not None:
        ss = np.asarray(self_similarity_scores, dtype=np.float64)
        out.update({"self_similarity": ss, "rank_fusion": 0.5 * (_ranks(predictor) + _ranks(ss))})
    return out



def auroc_by_group(scores, labels, categories, groups) -> dict:
    """Image AUROC of each group of anomalies against the normal images of their own category.

    Args:
        scores: [N] image scores; labels: [N] 1 = anomalous; categories: [N]; groups: [N] the anomaly's group (a
            defect type, a size bin; ignored for normal images).
    Returns ``{group: {"auroc": mean over the categories that have normals and anomalies of the group,
    "categories": how many, "anomalies": how many}}``, groups in sorted order.
    """
    import numpy as np

    from anomaly_ov.evaluate import metrics as M

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    categories, groups = np.asarray(categories), np.asarray(groups)
    out = {}
    for group in sorted(set(groups[labels == 1].tolist())):
        values, anomalies = [], 0
        for cat in sorted(set(categories.tolist())):
            normal = (categories == cat) & (labels == 0)
            anomalous = (categories == cat) & (labels == 1) & (groups == group)
            if normal.any() and anomalous.any():
                keep = np.flatnonzero(normal | anomalous)
                values.append(M.image_auroc(scores[keep].tolist(), labels[keep].tolist()))
                anomalies += int(anomalous.sum())
        if values:
            out[str(group)] = {"auroc": float(np.mean(values)), "categories": len(values), "anomalies": anomalies}
    return out


def area_quartiles(areas, labels) -> list[str]:
    """Each image's quartile of the anomalies' mask areas (fraction of the image), as "q1 0.004-0.016" labels;
    normal images get ""."""
    import numpy as np

    areas, labels = np.asarray(areas, dtype=np.float64), np.asarray(labels)
    edges = np.quantile(areas[labels == 1], [0.0, 0.25, 0.5, 0.75, 1.0]) if (labels == 1).any() else None
    names = []
    for area, label in zip(areas, labels, strict=True):
        if label != 1 or edges is None:
            names.append("")
            continue
        q = min(3, int(np.searchsorted(edges[1:-1], area, side="right")))
        names.append(f"q{q + 1} {edges[q]:.3f}-{edges[q + 1]:.3f}")
    return names

def workspace_params(parser: argparse.ArgumentParser, workspace: Path, params_file: Path | None) -> tuple[Path, Any]:
    """``(params file, params)`` of a workspace with a trained expert, for the scripts that score one: ``--params``
    when given, else the workspace's params.yaml, else the repository's (a ``--workdir`` workspace of this script has
    none); tracking off. Stops with ``parser.error`` naming what is missing: a ``--params`` file, or the trained
    expert (``train.expert.output_dir``)."""
    from anomaly_ov.config import load_params

    if params_file is not None and not params_file.is_file():
        parser.error(f"{params_file}: params file not found")
    chosen = params_file or (workspace / "params.yaml")
    if not chosen.is_file():
        chosen = REPO / "params.yaml"
    params = load_params(chosen, ["tracking.enabled=false"])
    if not (workspace / params.train.expert.output_dir).is_dir():
        parser.error(f"{workspace / params.train.expert.output_dir}: no trained expert there (run the pipeline "
                     "or benchmarks/zero_shot_splits.py --workdir first)")
    return chosen, params


def expert_outputs(workspace: Path, params, rows) -> dict:
    """The workspace's trained expert on manifest ``rows``: per row its image score, its predictor's probability
    (``sigmoid(score_logits)``), base-view grid map, label, category and group (as the manifest's), the map upsampled
    to the mask and the mask, and the ``self_similarity`` of the base view's tower features (the expert's own when it
    reads it, else the tower runs a second time for them)."""
    import torch
    import torch.nn.functional as F

    from anomaly_ov.data.loaders import ExpertDataset, collate_expert
    from anomaly_ov.model.expert import self_similarity
    from anomaly_ov.model.presets import build_model, load_expert_stage, processor_for
    from anomaly_ov.model.processing import ImagePreprocessor
    from anomaly_ov.model.tokenizer import train_tokenizer
    from anomaly_ov.train import expert as stage1

    tokenizer = train_tokenizer(())
    model = build_model(params, tokenizer=tokenizer)
    load_expert_stage(model, workspace / params.train.expert.output_dir)
    preprocess = ImagePreprocessor(processor_for(model, tokenizer).image_processor)
    dataset = ExpertDataset(rows, workspace, preprocess, int(model.config.grid_size), params.evaluate.resolution)
    module = stage1.ExpertStage(model, True)
    forward = stage1.stage_forward(torch.device("cpu"))
    out: dict = {"image_score": [], "predictor": [], "grids": [], "labels": [], "categories": [], "maps": [],
                 "masks": [], "self_similarity": []}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), 32):
            batch = collate_expert([dataset[i] for i in range(start, min(start + 32, len(dataset)))])
            result = forward(module, batch)
            if result.similarity is not None:
                out["self_similarity"] += result.similarity.reshape(-1).tolist()
            else:
                crops = list(batch["crops_per_image"])
                starts = torch.tensor([sum(crops[:i]) for i in range(len(crops))])
                features, _ = model.tower_features(batch["pixel_values"].index_select(0, starts))  # [B,T,C]
                out["self_similarity"] += self_similarity(features, int(model.config.grid_size)).tolist()
            out["image_score"] += result.scores.reshape(-1).tolist()
            out["predictor"] += torch.sigmoid(result.score_logits).reshape(-1).tolist()
            out["grids"] += list(result.base_maps[:, 0].numpy())
            out["labels"] += batch["labels"].tolist()
            out["categories"] += list(batch["categories"])
            up = F.interpolate(result.base_maps.float(), size=batch["masks"].shape[-2:], mode="bilinear",
                               align_corners=False)
            out["maps"] += list(up[:, 0].numpy())
            out["masks"] += list(batch["masks"][:, 0].numpy() > 0)
    out["groups"] = rows["group"].fillna("").astype(str).tolist() if "group" in rows else [""] * len(rows)
    return out


def score_rows(workspace: Path, params, rows) -> dict:
    """Per-category image AUROC of every score variant, pixel AUROC of the base-view map, and for each category
    how many normal images the expert's score puts at or above its median anomaly, on manifest ``rows``."""
    import numpy as np

    from anomaly_ov.evaluate import metrics as M

    raw = expert_outputs(workspace, params, rows)
    predictor, grids, labels, cats = raw["predictor"], raw["grids"], raw["labels"], raw["categories"]
    maps, masks = raw["maps"], raw["masks"]
    variants = score_variants(predictor, np.stack(grids), raw["self_similarity"], raw["image_score"])
    labels, cats = np.array(labels), np.array(cats)
    per_class: dict = {}
    for cat in sorted(set(cats.tolist())):
        own = np.flatnonzero(cats == cat)
        px = [i for i in own if labels[i] == 0 or masks[i].any()]
        entry = {name: M.image_auroc(v[own].tolist(), labels[own].tolist()) for name, v in variants.items()}
        # F1 of the verdict "score >= 0.5" (evaluate.threshold, stage 2's phrase): a rank is not a calibration
        entry.update({f"{name}_f1": None if name in UNCALIBRATED else
                      M.binary_metrics((v[own] >= 0.5).tolist(), labels[own].tolist())["f1"]
                      for name, v in variants.items()})
        entry["pixel_auroc"] = M.pixel_auroc([maps[i] for i in px], [masks[i] for i in px]) if px else None
        scores = variants["image_score"]
        median_anomaly = np.median(scores[own][labels[own] == 1])
        normals = scores[own][labels[own] == 0]
        entry["normals_above_median_anomaly"] = f"{int((normals >= median_anomaly).sum())}/{normals.size}"
        per_class[cat] = entry
    names = (*VARIANTS, *(f"{v}_f1" for v in VARIANTS), "pixel_auroc")
    means = {name: M.mean_of(per_class[c][name] for c in per_class) for name in names}
    # which anomalies the image score misses: by defect type and by mask area (quartiles of the anomalies' areas)
    areas = [float(m.mean()) for m in masks]
    defect_types = rows["defect_type"].fillna("").astype(str).tolist()
    by = {"defect_type": defect_types, "mask_area": area_quartiles(areas, labels)}
    breakdown = {kind: {name: auroc_by_group(variants[name], labels, cats, groups)
                        for name in ("image_score", "map_max")}
                 for kind, groups in by.items()}
    return {**means, "image_auroc": means["image_score"], "images": len(labels), "per_class": per_class,
            "by": breakdown}


def zero_shot(workspace: Path, params) -> dict:
    """Per-category image / pixel AUROC of the workspace's trained expert on its evaluation-role images."""
    from anomaly_ov.data.manifest import read_manifest

    frame = read_manifest(workspace / params.data.manifest)
    return score_rows(workspace, params, frame[frame["role"] == "eval"])


def in_distribution(workspace: Path, params) -> dict:
    """The same figures on stage 1's held-out rows of the training categories (no stage trained on them)."""
    from anomaly_ov.train.expert import split_training_rows

    return score_rows(workspace, params, split_training_rows(params, workspace)[1])


def per_object_max(scores, labels, categories, groups) -> tuple[list[float], list[int], list[str]]:
    """One entry per object (rows with the same non-empty ``group``; a row without one is its own object): the max
    of its views' scores, its label (anomalous when any view is) and its category, in order of first appearance."""
    objects: dict = {}
    for i, (score, label, cat, group) in enumerate(zip(scores, labels, categories, groups, strict=True)):
        key = group or f"row {i}"
        best, anomalous, _ = objects.get(key, (float("-inf"), 0, cat))
        objects[key] = (max(best, float(score)), max(anomalous, int(label)), cat)
    values = list(objects.values())
    return [v[0] for v in values], [v[1] for v in values], [v[2] for v in values]


def extensions(workspace: Path, params) -> dict:
    """The expert's image AUROC on the medical and 3D extensions' evaluation sets, as the ``extend_medical`` /
    ``extend_3d`` stages measure it from the same expert score: per modality / per shape, and for 3D also per object
    (the max over its views). Only the enabled extensions; their sets are generated in the workspace."""
    import numpy as np

    from anomaly_ov.data.extensions import medical_manifest, threed_manifest
    from anomaly_ov.evaluate import metrics as M

    out: dict = {}
    sets = {"medical": (params.extensions.medical.enabled, medical_manifest),
            "3d": (params.extensions.threed.enabled, threed_manifest)}
    for name, (enabled, manifest) in sets.items():
        if not enabled:
            continue
        frame = manifest(params, workspace)
        rows = frame[frame["split"] != "train"].reset_index(drop=True)
        raw = expert_outputs(workspace, params, rows)
        macro, classes = M.macro_image(raw["image_score"], raw["labels"], raw["categories"])
        entry = {"image_auroc": macro.get("image_auroc"),
                 "per_class": {c: v.get("image_auroc") for c, v in classes.items()}, "images": len(rows)}
        variants = score_variants(raw["predictor"], np.stack(raw["grids"]), raw["self_similarity"],
                                  raw["image_score"])
        entry["variants"] = {v: M.macro_image(variants[v], raw["labels"], raw["categories"])[0].get("image_auroc")
                             for v in EXTENSION_VARIANTS}
        if name == "3d":
            obj_macro, obj_classes = M.macro_image(*per_object_max(raw["image_score"], raw["labels"],
                                                                   raw["categories"], raw["groups"]))
            entry["object_image_auroc"] = obj_macro.get("image_auroc")
            entry["object_per_class"] = {c: v.get("image_auroc") for c, v in obj_classes.items()}
            entry["object_variants"] = {
                v: M.macro_image(*per_object_max(variants[v], raw["labels"], raw["categories"], raw["groups"]))[0]
                .get("image_auroc") for v in EXTENSION_VARIANTS}
        out[name] = entry
    return out


def run_split(held_out: list[str], base_params: Path, root: Path, train: list[str] | None = None,
              overrides: list[str] | None = None, tower: str = "pretrained", rescore: bool = False) -> dict:
    """Train (prepare, pretrain_tower when ``tower`` is "pretrained", train_expert) in ``root``/<split>, or with
    ``rescore`` only score the expert already trained there; then score the held-out and in-distribution rows."""
    from anomaly_ov.config import load_params
    from anomaly_ov.data.synthetic import CATEGORIES
    from anomaly_ov.stages import implementation

    unknown = sorted(set(held_out) - set(CATEGORIES))
    if unknown:
        raise SystemExit(f"unknown synthetic categories {unknown}; known: {sorted(CATEGORIES)}")
    train = [c for c in (train or CATEGORIES) if c not in held_out]
    workspace = root / "_".join(held_out)
    params = load_params(base_params, [
        "tracking.enabled=false",
        f"data.synthetic.train_categories=[{','.join(train)}]",
        f"data.synthetic.eval_categories=[{','.join(held_out)}]",
        f"train.tower.enabled={'true' if tower == 'pretrained' else 'false'}",
        *(overrides or []),
    ])
    started = time.perf_counter()
    if not rescore:
        workspace.mkdir(parents=True)
        implementation("prepare")(params, workspace)
        if tower == "pretrained":
            implementation("pretrain_tower")(params, workspace)
        implementation("train_expert")(params, workspace)
    result = zero_shot(workspace, params)
    seen = in_distribution(workspace, params)
    extension = extensions(workspace, params)
    return {
        "held_out": held_out, "seed": int(params.train.seed), "trained_on": train, "tower": tower,
        "image_auroc": result["image_auroc"],
        "pixel_auroc": result["pixel_auroc"], "variants": {v: result[v] for v in VARIANTS},
        "variants_f1": {v: result[f"{v}_f1"] for v in VARIANTS},
        "per_class": result["per_class"], "in_distribution_image_auroc": seen["image_auroc"],
        "in_distribution_variants": {v: seen[v] for v in VARIANTS},
        "in_distribution_variants_f1": {v: seen[f"{v}_f1"] for v in VARIANTS},
        "in_distribution_per_class": seen["per_class"], "by": result["by"], "in_distribution_by": seen["by"],
        "extensions": extension,
        "seconds": round(time.perf_counter() - started, 1),
    }


#: the figures :func:`seed_summary` compares across seeds: (label, reader of one run_split result)
SUMMARY_FIGURES: tuple[tuple[str, Callable[[dict], float | None]], ...] = (
    ("zero-shot image AUROC", lambda r: r["image_auroc"]),
    ("zero-shot pixel AUROC", lambda r: r["pixel_auroc"]),
    ("stage 1's held-out rows, image AUROC", lambda r: r["in_distribution_image_auroc"]),
    ("medical image AUROC", lambda r: r["extensions"].get("medical", {}).get("image_auroc")),
    ("3D image AUROC per view", lambda r: r["extensions"].get("3d", {}).get("image_auroc")),
    ("3D image AUROC per object", lambda r: r["extensions"].get("3d", {}).get("object_image_auroc")),
)


def split_label(result: dict) -> str:
    return ", ".join(result["held_out"])


def seed_summary(results: list[dict]) -> list[dict]:
    """One row per split and figure of :data:`SUMMARY_FIGURES`: each seed's value, their mean and sample standard
    deviation (None with fewer than two values); a figure no seed reports is left out."""
    import statistics

    rows = []
    for split in dict.fromkeys(split_label(r) for r in results):
        runs = [r for r in results if split_label(r) == split]
        for name, read in SUMMARY_FIGURES:
            by_seed = {r["seed"]: read(r) for r in runs}
            values = [v for v in by_seed.values() if v is not None]
            if not values:
                continue
            rows.append({"split": split, "figure": name, "seeds": by_seed, "mean": statistics.fmean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None})
    return rows


def summary_table(rows: list[dict], seeds: list[int]) -> str:
    """:func:`seed_summary`'s rows as a markdown table (to paste into the experiments file)."""
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = ["| held out | figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for row in rows:
        values = " | ".join(cell(row["seeds"].get(s)) for s in seeds)
        spread = "" if row["sd"] is None else f" ± {row['sd']:.3f}"
        lines.append(f"| {row['split']} | {row['figure']} | {values} | {cell(row['mean'])}{spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", action="append", help="comma-separated held-out categories (repeatable); "
                        f"default: {' / '.join(DEFAULT_SPLITS)}")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspaces here (default: a temp dir)")
    parser.add_argument("--train", default=None, help="comma-separated training categories (default: every other "
                        "synthetic category)")
    parser.add_argument("--tower", choices=("pretrained", "random"), default="pretrained",
                        help="stage 1 starts from the pretrain_tower stage's tower (default) or a random one")
    parser.add_argument("--rescore", action="store_true", help="train nothing: score the experts already in "
                        "--workdir")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a params override for every split (repeatable), e.g. train.expert.tiny.epochs=4")
    parser.add_argument("--seeds", default=None, help="comma-separated train.seed values: every split trains once "
                        "per seed (in <workdir>/seed_<N>/), and a table gives each seed's figures, their mean and "
                        "standard deviation (default: params.yaml's seed, one run)")
    args = parser.parse_args()
    if args.rescore and args.workdir is None:
        parser.error("--rescore needs --workdir")
    seeds: list[int | None] = [None]
    if args.seeds is not None:
        from anomaly_ov.config import parse_seed_list
        from anomaly_ov.errors import ConfigError

        try:
            seeds = list(parse_seed_list(args.seeds))
        except ConfigError as exc:
            parser.error(f"--seeds: {exc}")
        if any(o.split("=", 1)[0].strip() == "train.seed" for o in args.overrides):
            parser.error("--seeds and --set train.seed=... both name the seed: give one of them")

    import torch

    torch.set_num_threads(args.threads)
    splits = [[c.strip() for c in s.split(",") if c.strip()] for s in (args.split or DEFAULT_SPLITS)]
    with tempfile.TemporaryDirectory(prefix="zero_shot_splits_") as tmp:
        root = args.workdir or Path(tmp)
        train = [c.strip() for c in args.train.split(",")] if args.train else None
        results = [run_split(held_out, args.params, root if seed is None else root / f"seed_{seed}", train,
                             [*args.overrides, *([] if seed is None else [f"train.seed={seed}"])], args.tower,
                             args.rescore)
                   for seed in seeds for held_out in splits]

    def label(r: dict) -> str:
        return split_label(r) + ("" if args.seeds is None else f" (seed {r['seed']})")

    print(f"\n{'held out':<22} {'image AUROC':>11} {'pixel AUROC':>11} {'in-dist. image':>14}  per category "
          "(image / pixel / normals >= median anomaly)")
    for r in results:
        per = "; ".join(f"{c} {m['image_score']:.3f} / {m['pixel_auroc']:.3f} / {m['normals_above_median_anomaly']}"
                        for c, m in r["per_class"].items())
        print(f"{label(r):<22} {r['image_auroc']:>11.3f} {r['pixel_auroc']:>11.3f} "
              f"{r['in_distribution_image_auroc']:>14.3f}  {per}")
    print(f"\nimage score variants (zero-shot / in-distribution held-out rows), tower {args.tower}:")
    print(f"{'held out':<22} " + " ".join(f"{v:>15}" for v in VARIANTS))
    for r in results:
        cells = [f"{r['variants'][v]:.3f}/{r['in_distribution_variants'][v]:.3f}" for v in VARIANTS]
        print(f"{label(r):<22} " + " ".join(f"{c:>15}" for c in cells))
        cells = ["-" if v in UNCALIBRATED else f"{r['variants_f1'][v]:.3f}/{r['in_distribution_variants_f1'][v]:.3f}"
                 for v in VARIANTS]
        print(f"{'  F1 at 0.5':<22} " + " ".join(f"{c:>15}" for c in cells))
    for r in results:
        for name, entry in r["extensions"].items():
            per = "; ".join(f"{c} {v:.3f}" for c, v in entry["per_class"].items())
            line = f"held out {label(r)}: {name} image AUROC {entry['image_auroc']:.3f} ({per})"
            if "object_image_auroc" in entry:
                per = "; ".join(f"{c} {v:.3f}" for c, v in entry["object_per_class"].items())
                line += f", per object (max over views) {entry['object_image_auroc']:.3f} ({per})"
            others = ", ".join(f"{v} {a:.3f}" + (f" / {entry['object_variants'][v]:.3f} per object"
                                                 if "object_variants" in entry else "")
                               for v, a in entry["variants"].items())
            print(f"{line}; {others}")
    for r in results:
        print(f"\nheld out {label(r)}: stage 1's held-out rows of the training categories, image AUROC "
              "of each group of anomalies against their own category's normals (image score / map max; categories, "
              "anomalies)")
        for kind, by_name in r["in_distribution_by"].items():
            for group, entry in by_name["image_score"].items():
                other = by_name["map_max"][group]["auroc"]
                print(f"  {kind:<12} {group:<18} {entry['auroc']:.3f} / {other:.3f}  ({entry['categories']}, "
                      f"{entry['anomalies']})")
    summary = seed_summary(results) if args.seeds is not None else []
    if summary:
        print(f"\nacross seeds {args.seeds}:\n{summary_table(summary, [int(s) for s in seeds if s is not None])}")
    print(json.dumps({"zero_shot_splits": results, **({"seed_summary": summary} if summary else {})}))


if __name__ == "__main__":
    main()
