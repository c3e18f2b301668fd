"""Detection-evaluation speed: images per second with the tiny preset on CPU, and the cost of the pixel metrics.

    .venv/bin/python benchmarks/eval_speed.py [--images 24] [--size 128] [--threads 2] [--max-new-tokens 48]

1. Builds the tiny preset (random init; speed does not depend on the weights' values) and saves/loads it the way
   the evaluate stage does.
2. Times ``run_detection`` over ``--images`` synthetic images with answers off (expert score + map only) and on
   (greedy answer of up to ``--max-new-tokens`` tokens), and extrapolates to VisA-D&R's 1761 images.
3. Times the pixel metrics (pixel AUROC, F1-max, AUPRO) for 1761 maps at the evaluation resolution: the exact
   in-memory functions vs the streaming ``PixelScoreTable`` the evaluation uses, and prints how far apart they are
   (memory at benchmark size: benchmarks/pixel_metrics_memory.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

VISA_DR_IMAGES = 1761


def _images(ws: Path, n: int, size: int) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = (rng.random((size, size, 3)) * 120).astype(np.uint8)
        mask_rel = ""
        if i % 2:
            img[size // 4 : size // 2, size // 4 : size // 2] = 230
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4 : size // 2, size // 4 : size // 2] = 255
            mask_rel = f"img/{i}_mask.png"
            Image.fromarray(mask).save(ws / mask_rel)
        Image.fromarray(img).save(ws / f"img/{i}.png")
        items.append({"image": f"S/c{i % 2}/{i}.png", "file": f"img/{i}.png", "anomaly": bool(i % 2),
                      "mask": mask_rel, "category": f"c{i % 3}"})
    return items


def _pixel_sets(n: int, res: int):
    rng = np.random.default_rng(1)
    for i in range(n):
        mask = np.zeros((res, res), bool)
        if i % 2:
            y, x = rng.integers(0, res - 20, 2)
            mask[y : y + 16, x : x + 12] = True
        amap = np.clip(0.5 * mask + 0.6 * rng.random((res, res)), 0, 1).astype(np.float32)
        yield amap, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--pixel-images", type=int, default=VISA_DR_IMAGES)
    args = parser.parse_args()

    import torch

    from anomaly_ov.config import Params
    from anomaly_ov.evaluate import metrics as M
    from anomaly_ov.evaluate.detection import normalise_test_item, run_detection
    from anomaly_ov.evaluate.run import load_predictor
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="anomaly-ov-eval-bench-") as tmp:
        ws = Path(tmp)
        (ws / "img").mkdir()
        params = Params()
        tokenizer = train_tokenizer(["Yes, there is a defect.", "No, the object looks normal."] * 4)
        save_pretrained(build_model(params, tokenizer), build_processor(params, tokenizer), ws / "model")
        predictor = load_predictor(ws / "model", "cpu")
        items = [normalise_test_item(x, i) for i, x in enumerate(_images(ws, args.images, args.size))]
        run_detection(predictor, items[:2], params.evaluate, ws)  # warm-up
        for generate in (False, True):
            cfg = params.evaluate.model_copy(
                update={"generate_answers": generate, "max_new_tokens": args.max_new_tokens, "figures_per_kind": 0}
            )
            started = time.perf_counter()
            run_detection(predictor, items, cfg, ws)
            seconds = time.perf_counter() - started
            name = "with_answers" if generate else "expert_only"
            results[f"{name}.images_per_s"] = round(len(items) / seconds, 3)
            results[f"{name}.visa_dr_minutes"] = round(VISA_DR_IMAGES * seconds / len(items) / 60, 2)

    res = params.evaluate.resolution
    sets = list(_pixel_sets(args.pixel_images, res))
    started = time.perf_counter()
    maps, masks = [a for a, _ in sets], [k for _, k in sets]
    exact = (M.pixel_auroc(maps, masks), M.pixel_f1_max(maps, masks)[0], M.aupro(maps, masks))
    results["pixel_metrics.exact_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    table = M.PixelScoreTable(params.evaluate.exact_pixel_limit)
    for amap, mask in sets:
        table.add(amap, mask)
    streamed = (table.pixel_auroc(), table.pixel_f1_max()[0], table.aupro())
    results["pixel_metrics.table_seconds"] = round(time.perf_counter() - started, 2)
    results["pixel_metrics.table_exact"] = table.exact
    results["pixel_metrics.max_abs_difference"] = float(
        max(abs(a - b) for a, b in zip(exact, streamed, strict=True))
    )
    results["pixel_metrics.table_mib"] = round(table.nbytes / 2**20, 1)
    results["pixel_metrics.maps_mib"] = round(sum(a.nbytes + k.nbytes for a, k in sets) / 2**20, 1)
    print(json.dumps({"images": args.images, "size": args.size, "threads": args.threads,
                      "eval_resolution": res, "pixel_images": args.pixel_images, **results}, indent=2))


if __name__ == "__main__":
    main()
