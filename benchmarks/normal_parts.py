"""Which normal images does the expert take for anomalies? Image AUROC by the optional normal parts they carry.

Two evaluation categories carry optional parts that are normal there and look like other families' defects: the
synthetic pcb has 0 or 1 chip (a dark rectangle, a defect's shape on most families), the round part 0 or 3-6 bolt
holes. A zero-shot expert has never seen either category, so it can only learn from the training families that such
a part is normal *for this object*. Four training families (fabric, metal, tiles, leather) carry optional mounted
parts for that reason: modules drawn like the pcb's chip, nameplates and sockets. This script measures what the
expert made of both.

For every category whose renderer records its parts (``Render.normal_parts`` in anomaly_ov/data/synthetic.py) it
scores the workspace's trained expert (its own image score, as ``benchmarks/zero_shot_splits.py`` and the
``evaluate`` stage read it) and prints, for each part, the image AUROC of all the category's anomalies against the
normals with the part and against those without it, each group's size and mean score, and the ``ceiling``: the
category's AUROC if the normals without the part were all scored below every anomaly and those with it kept their
ranks, i.e. what the category can reach while the expert keeps mistaking the part for a defect. The parts come from
the generator, never from the pixels:

- the evaluation categories (default): their evaluation images as ``prepare`` wrote them, each image's render drawn
  again from the seed, part and index its name gives (``visa_sample``);
- ``--families fabric,metal,tiles,leather --draw N``: N normal and N anomalous images of each training family that
  no stage saw, drawn by the generator at indices from ``DRAW_OFFSET`` (far above what ``prepare`` writes) and
  scored from a temporary folder: does the expert know a module is normal on the families it trained on?

    .venv/bin/python benchmarks/normal_parts.py WORKSPACE [--params FILE] [--threads 2] [--json]
        [--families a,b,... [--draw 60]]

WORKSPACE is a pipeline workspace or one of ``benchmarks/zero_shot_splits.py --workdir``'s (``--params`` defaults to
the workspace's params.yaml, else the repository's). Seconds to a minute on 2 CPU cores. Measured on the default's
pipelines: see "The pcb's chip and the round part's bolt holes" in docs/tiny_recipe_experiments.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling zero_shot_splits.py scores as the stages do
from zero_shot_splits import expert_outputs, workspace_params  # noqa: E402

#: ``--draw`` images start at this index of their part: ``prepare`` writes at most a few dozen per part, so no stage
#: has seen them
DRAW_OFFSET = 100_000
MAX_DRAW = 1_000


def render_parts(category: str, image: str, seed: int, size: int, train_normals: int) -> dict[str, int]:
    """The normal parts the generator drew for one image of the synthetic VisA layout (``Render.normal_parts``)."""
    from anomaly_ov.data.synthetic import CATEGORIES, image_rng, visa_sample

    part, index = visa_sample(image, train_normals)
    return CATEGORIES[category].render(image_rng(seed, category, part, index), size).normal_parts


def part_table(scores: list[float], labels: list[int], parts: list[dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per part name: the AUROC of every anomaly against the normals with / without the part, the groups' sizes
    and mean scores, and the ceiling (the normals without the part at AUROC 1, those with it as they are).

    Args:
        scores: [N] image scores, higher = more anomalous.
        labels: [N] 1 = anomalous, 0 = normal.
        parts: [N] each image's ``normal_parts`` (a normal image's parts decide its group; anomalies are not
            grouped).
    """
    from anomaly_ov.evaluate import metrics as M

    anomalies = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    table: dict[str, dict[str, Any]] = {}
    for name in sorted({k for p in parts for k in p}):
        entry: dict[str, Any] = {}
        sizes = {}
        for group, has in (("with", True), ("without", False)):
            normals = [s for s, y, p in zip(scores, labels, parts, strict=True)
                       if y == 0 and (p.get(name, 0) > 0) == has]
            sizes[group] = len(normals)
            auroc = M.image_auroc(normals + anomalies, [0] * len(normals) + [1] * len(anomalies)) \
                if normals and anomalies else None
            entry[group] = {"normals": len(normals), "auroc": auroc,
                            "mean_score": sum(normals) / len(normals) if normals else None}
        total = sizes["with"] + sizes["without"]
        with_auroc = entry["with"]["auroc"]
        entry["ceiling"] = (sizes["without"] + sizes["with"] * with_auroc) / total \
            if total and with_auroc is not None else None
        entry["all"] = M.image_auroc(scores, labels) if anomalies and total else None
        table[name] = entry
    return table


def draw_rows(category: str, count: int, params: Any, folder: Path) -> tuple[Any, list[dict[str, int]]]:
    """``count`` normal and ``count`` anomalous images of ``category`` that ``prepare`` never wrote (indices from
    :data:`DRAW_OFFSET`, the family's defect types in turn), saved as PNG under ``folder``: their manifest rows
    (``root`` absolute, role ``eval``) and each image's ``normal_parts``."""
    from PIL import Image

    from anomaly_ov.data.manifest import ManifestRow, from_rows, validate_schema
    from anomaly_ov.data.synthetic import CATEGORIES, defects_for, image_rng, make_sample

    synthetic, seed = params.data.synthetic, params.seed
    size, defects = synthetic.image_size, defects_for(synthetic, category)
    rows, parts = [], []
    for k in range(count):
        for part, defect in (("test_good", None), ("test_anomaly", defects[k % len(defects)])):
            index = DRAW_OFFSET + k
            _, image, mask = make_sample(category, size, seed, part, index, defect)
            name = f"{category}/{defect or 'good'}/{index}.png"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / name)
            mask_name = ""
            if mask is not None:
                mask_name = f"{category}/{defect}/{index}_mask.png"
                Image.fromarray(mask).save(folder / mask_name)
            rows.append(ManifestRow(name, str(folder), "normal_parts_draw", category, "test", "eval",
                                    "normal" if defect is None else "anomaly", defect or "good", mask_name,
                                    width=size, height=size))
            parts.append(CATEGORIES[category].render(image_rng(seed, category, part, index), size).normal_parts)
    return validate_schema(from_rows(rows), "drawn images"), parts


def measure_draws(workspace: Path, params: Any, families: list[str], count: int) -> dict[str, Any]:
    """:func:`part_table` of each training family in ``families`` on :func:`draw_rows`'s images."""
    import tempfile

    import pandas as pd

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="normal_parts_") as tmp:
        drawn = [draw_rows(family, count, params, Path(tmp)) for family in families]
        frame = pd.concat([rows for rows, _ in drawn], ignore_index=True)
        parts = [p for _, family_parts in drawn for p in family_parts]
        outputs = expert_outputs(workspace, params, frame)
    for family in families:
        own = [i for i, c in enumerate(outputs["categories"]) if c == family]
        results[family] = part_table([outputs["image_score"][i] for i in own],
                                     [int(outputs["labels"][i]) for i in own], [parts[i] for i in own])
    return results


def measure(workspace: Path, params: Any) -> dict[str, Any]:
    """Each evaluation category with recorded parts: its rows scored by the expert, grouped by :func:`part_table`."""
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.data.synthetic import CATEGORIES

    synthetic = params.data.synthetic
    frame = read_manifest(workspace / params.data.manifest)
    frame = frame[(frame["role"] == "eval") & frame["source"].str.startswith("synthetic")]
    outputs = expert_outputs(workspace, params, frame)
    images = frame["image_path"].tolist()
    results: dict[str, Any] = {}
    for category in synthetic.eval_categories:
        if category not in CATEGORIES:
            continue
        own = [i for i, c in enumerate(outputs["categories"]) if c == category]
        parts = [render_parts(category, images[i], params.seed, synthetic.image_size,
                              synthetic.train_normal_per_category) for i in own]
        if not any(parts):
            continue
        results[category] = part_table([outputs["image_score"][i] for i in own],
                                       [int(outputs["labels"][i]) for i in own], parts)
    return results


def _cell(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workspace", type=Path, help="a pipeline (or zero_shot_splits) workspace with models/expert")
    parser.add_argument("--params", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--families", default="", help="training families to draw unseen images of, comma-separated "
                        "(instead of the evaluation categories)")
    parser.add_argument("--draw", type=int, default=60, help="with --families: normal and anomalous images each")
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not 1 <= args.threads <= 64:
        parser.error("--threads must be 1 to 64")
    if families and not 1 <= args.draw <= MAX_DRAW:
        parser.error(f"--draw must be 1 to {MAX_DRAW}")

    import torch

    torch.set_num_threads(args.threads)
    params_file, params = workspace_params(parser, args.workspace, args.params)
    if not params.data.synthetic.enabled:
        parser.error(f"{params_file}: data.synthetic.enabled is false; the parts are the generator's")
    if families:
        from anomaly_ov.data.synthetic import CATEGORIES, image_rng

        wrong = [f for f in families if f not in params.data.synthetic.train_categories or f not in CATEGORIES]
        if wrong:
            parser.error(f"--families {wrong}: not synthetic training families of {params_file}")
        plain = [f for f in families if not CATEGORIES[f].render(image_rng(0, f, "test_good", 0), 32).normal_parts]
        if plain:
            parser.error(f"--families {plain}: their renders record no normal parts (fabric, metal, tiles and "
                         "leather do)")
        results = measure_draws(args.workspace.resolve(), params, families, args.draw)
    else:
        results = measure(args.workspace.resolve(), params)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| category | part | all | normals with it: n / AUROC / mean score | without it: n / AUROC / mean score "
          "| ceiling |")
    print("|---|---|---|---|---|---|")
    for category, table in results.items():
        for name, e in table.items():
            w, wo = e["with"], e["without"]
            print(f"| {category} | {name} | {_cell(e['all'])} | {w['normals']} / {_cell(w['auroc'])} / "
                  f"{_cell(w['mean_score'])} | {wo['normals']} / {_cell(wo['auroc'])} / {_cell(wo['mean_score'])} "
                  f"| {_cell(e['ceiling'])} |")
    if not results:
        print("no category measured records normal parts (pcb, round_part, fabric, metal, tiles and leather do)")


if __name__ == "__main__":
    main()
