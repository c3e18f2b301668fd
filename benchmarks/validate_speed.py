"""Benchmark: table validation (GX suite + pandas group checks, no file checks) of a synthetic manifest.

    .venv/bin/python benchmarks/validate_speed.py [--rows 100000] [--files 0]

Prints the seconds for Great Expectations' import + context, the first validation and a second one; the target
is under 30 s for 100k rows on the 2-core development machine. ``--files N`` also writes N small PNG images
(a third of them anomalies with masks) to a temporary folder and times the per-file checks (images/s).
"""

from __future__ import annotations

import argparse
import time


def synthetic_manifest(rows: int, categories: int = 50):
    """A valid manifest of ``rows`` rows: per category 1/3 anomalies with masks, split between roles."""
    import numpy as np
    import pandas as pd

    index = np.arange(rows)
    category = index % categories
    anomaly = (index // categories) % 3 == 0
    role = np.where(category < categories // 2, "train", "eval")
    frame = pd.DataFrame(
        {
            "image_path": [f"cat{c}/img_{i:07d}.png" for c, i in zip(category, index, strict=True)],
            "root": "data/raw/bench",
            "mask_path": np.where(anomaly, [f"cat{c}/mask_{i:07d}.png" for c, i in zip(category, index, strict=True)],
                                  ""),
            "source": np.where(role == "train", "bench_train", "bench_eval"),
            "category": [f"cat{c}" for c in category],
            "split": np.where(anomaly, "test", "train"),
            "role": role,
            "label": np.where(anomaly, "anomaly", "normal"),
            "defect_type": np.where(anomaly, "crack", "good"),
            "modality": "industrial",
            "view": "",
            "group": "",
            "width": np.full(rows, 256, dtype=np.int64),
            "height": np.full(rows, 256, dtype=np.int64),
        }
    )
    return frame.astype({c: object for c in frame.columns if c not in ("width", "height")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=0, help="also time the file checks on N written images")
    args = parser.parse_args()

    from anomaly_ov.config import params_from_dict
    from anomaly_ov.validate.gx import gx_context
    from anomaly_ov.validate.run import validate_manifest

    params = params_from_dict({"validate": {"check_files": False}, "data": {"sources": []}})
    started = time.perf_counter()
    frame = synthetic_manifest(args.rows)
    print(f"built {len(frame)} rows in {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    gx_context()
    print(f"great_expectations import + ephemeral context: {time.perf_counter() - started:.2f} s")
    for attempt in ("first", "second"):
        started = time.perf_counter()
        report = validate_manifest(frame, params)
        seconds = time.perf_counter() - started
        print(f"{attempt} validation of {len(frame)} rows: {seconds:.2f} s, {len(report.checks)} checks, "
              f"ok={report.ok}, failed={[c.name for c in report.checks if not c.passed]}")
    print(f"target < 30 s: {'met' if seconds < 30 else 'MISSED'}")
    if args.files:
        time_file_checks(args.files, params)


def time_file_checks(count: int, params) -> None:
    """Write ``count`` 128x128 PNGs (+ masks for a third) and time :func:`file_checks` over them."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from anomaly_ov.validate.files import file_checks

    with tempfile.TemporaryDirectory(prefix="validate-bench-") as tmp:
        root = Path(tmp)
        frame = synthetic_manifest(count, categories=4).assign(root=str(root))
        rng = np.random.default_rng(0)
        for item in frame.itertuples(index=False):
            (root / item.image_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(root / item.image_path)
            if item.mask_path:
                mask = np.zeros((128, 128), np.uint8)
                mask[32:64, 32:64] = 255
                Image.fromarray(mask).save(root / item.mask_path)
        started = time.perf_counter()
        checks, _, opened = file_checks(frame.assign(width=128, height=128), params.validation, root)
        seconds = time.perf_counter() - started
        failed = [c.name for c in checks if not c.passed]
        print(f"file checks over {opened} images: {seconds:.2f} s ({opened / seconds:.0f} images/s), failed={failed}")


if __name__ == "__main__":
    main()
