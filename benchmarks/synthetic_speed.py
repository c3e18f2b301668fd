"""How fast the synthetic industrial generator writes the default dataset (and a larger image size).

Run: ``.venv/bin/python benchmarks/synthetic_speed.py [--size 128] [--repeat 1]``. Prints images/s and total
seconds per run, plus the time spent per category in rendering + painting alone (no file writes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from anomaly_ov.config import SyntheticParams
from anomaly_ov.data.synthetic import CATEGORIES, _single_threaded_blas, generate_industrial, make_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=None, help="image size (default: params default)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--per-category", type=int, default=10, help="samples per category in the render timing")
    args = parser.parse_args()
    params = SyntheticParams() if args.size is None else SyntheticParams(image_size=args.size)
    print(
        f"default set: {len(params.train_categories)} train + {len(params.eval_categories)} eval categories, "
        f"{params.image_size}px"
    )
    for run in range(args.repeat):
        cpu = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            summary = generate_industrial(params, Path(tmp) / "synthetic", seed=run)
        cpu = time.process_time() - cpu
        rate = summary["images_per_s"]
        print(
            f"run {run}: {summary['images']} images in {summary['seconds']:.2f} s wall = {rate:.1f} images/s "
            f"({cpu:.2f} s CPU; wall > CPU means other processes share the cores)"
        )
    print(f"render + paint only, {args.per_category} normal + {args.per_category} anomalous per category:")
    for name, category in CATEGORIES.items():
        started = time.perf_counter()
        with _single_threaded_blas():
            for i in range(args.per_category):
                make_sample(name, params.image_size, 0, "train_good", i)
                defect = category.defects[i % len(category.defects)]
                make_sample(name, params.image_size, 0, "test_anomaly", i, defect)
        ms = (time.perf_counter() - started) * 1000 / (2 * args.per_category)
        print(f"  {name:<11} {ms:6.1f} ms/image")


if __name__ == "__main__":
    main()
