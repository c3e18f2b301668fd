"""Pixel metrics at benchmark size: time and memory of the streaming ``PixelScoreTable`` for one VisA-sized class.

    .venv/bin/python benchmarks/pixel_metrics_memory.py [--images 200] [--size 1024] [--limit 4000000] [--check 24]

Feeds ``--images`` saturated maps of ``--size`` x ``--size`` (as the expert makes them at temperature 100: a 2-way
softmax of 100 x cosine gaps on a 27 x 27 grid, upsampled bilinearly; normal pixels mostly below 1e-3) into one
table, the way the evaluation does for a class, and prints: seconds, the table's entries, dropped bits (0 =
exact), the table's MiB, the process's peak resident MiB, and what holding every map for the exact functions
would take. With ``--check N`` it also compares the table on the first N maps with scikit-learn's exact
``roc_auc_score`` and the exact AUPRO, and shows what 1000 equal-width bins would have given. Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def saturated_maps(n: int, size: int, seed: int = 0, grid: int = 27):
    """(map float32 [size, size], mask bool [size, size]) pairs; two images in three carry a defect."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    cell = size / grid
    for i in range(n):
        gap = rng.normal(-0.11, 0.025, (grid, grid))
        mask = np.zeros((size, size), dtype=bool)
        if i % 3:
            y, x = rng.integers(0, grid - 4, 2)
            h, w = rng.integers(1, 4, 2)
            gap[y : y + h, x : x + w] += rng.uniform(0.02, 0.12)
            mask[int(y * cell) : int((y + h) * cell), int(x * cell) : int((x + w) * cell)] = True
        coarse = (1.0 / (1.0 + np.exp(-100.0 * gap))).astype(np.float32)
        yield np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32), mask


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=4_000_000, help="evaluate.exact_pixel_limit")
    parser.add_argument("--check", type=int, default=24, help="maps compared with the exact functions (0 = none)")
    args = parser.parse_args()

    from anomaly_ov.evaluate import metrics as M

    out: dict[str, object] = {"images": args.images, "size": args.size, "limit": args.limit}
    baseline = _peak_mib()
    table = M.PixelScoreTable(args.limit)
    started = time.perf_counter()
    for amap, mask in saturated_maps(args.images, args.size):
        table.add(amap, mask)
    values = {"pixel_auroc": table.pixel_auroc(), "pixel_f1_max": table.pixel_f1_max()[0], "aupro": table.aupro()}
    out.update(
        seconds=round(time.perf_counter() - started, 1), entries=len(table.keys), dropped_bits=table.shift,
        exact=table.exact, table_mib=round(table.nbytes / 2**20, 1), peak_rss_mib=round(_peak_mib(), 1),
        rss_before_mib=round(baseline, 1),
        all_maps_and_masks_mib=round(args.images * args.size**2 * 5 / 2**20, 1), **values,
    )
    if args.check:
        from sklearn.metrics import roc_auc_score

        pairs = list(saturated_maps(args.check, args.size))
        maps, masks = [a for a, _ in pairs], [k for _, k in pairs]
        small = M.PixelScoreTable(args.limit)
        for amap, mask in pairs:
            small.add(amap, mask)
        scores = np.concatenate([a.ravel() for a in maps])
        labels = np.concatenate([k.ravel() for k in masks])
        out["check"] = {
            "images": args.check, "table_exact": small.exact,
            "table_pixel_auroc": small.pixel_auroc(), "sklearn_pixel_auroc": float(roc_auc_score(labels, scores)),
            "table_aupro": small.aupro(), "exact_aupro": M.aupro(maps, masks),
            "bins_1000_pixel_auroc": float(roc_auc_score(labels, np.minimum(np.floor(scores * 1000.0), 999))),
            "normal_pixels_below_1e-3": float(np.mean(scores[~labels] < 1e-3)),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
