"""Benchmark: table validation (GX suite + pandas group checks, no file checks) of a synthetic manifest.

    .venv/bin/python benchmarks/validate_speed.py [--rows 100000] [--files 0] [--thread-sizes]

Prints the seconds for Great Expectations' import + context, the first validation and a second one; the target
is under 30 s for 100k rows on the 2-core development machine. ``--files N`` also writes N small PNG images
(a third of them anomalies with masks) to a temporary folder and times the per-file checks (images/s).
``--thread-sizes`` (alone) times the per-file checks of images from 64 px to 1500 x 1000 (PNG, JPEG) in one thread
and in a thread pool, alternated twice, with the process's CPU time: where the pool pays off, which is what
``anomaly_ov.validate.files.THREADS_FROM_PIXELS`` (one thread below it) is set from.
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
    parser.add_argument("--thread-sizes", action="store_true",
                        help="only time the file checks in one thread vs a thread pool, per image size")
    args = parser.parse_args()
    if args.thread_sizes:
        time_threads_per_size()
        return

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


#: (files, height, width, format) for --thread-sizes: about the same seconds of work each
THREAD_SIZES = [(3000, 64, 64, "png"), (2000, 128, 128, "png"), (1000, 180, 180, "png"), (600, 256, 256, "png"),
                (100, 1000, 1500, "png"), (200, 1000, 1500, "jpeg")]


def time_threads_per_size() -> None:
    """ms per file of :func:`inspect_tasks` in one thread and in the default pool, per image size."""
    import os
    import resource
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from anomaly_ov.validate.files import THREADS_FROM_PIXELS, default_workers, inspect_tasks, pool_threads

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    pool = pool_threads()
    print(f"one thread vs a pool of {pool} on {os.cpu_count()} CPU(s); load average {os.getloadavg()}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="validate-threads-") as tmp:
        for count, height, width, fmt in THREAD_SIZES:
            folder = Path(tmp) / f"{width}x{height}-{fmt}"
            folder.mkdir()
            base = (rng.random((height, width, 3)) * 60 + 90).astype(np.uint8)
            tasks = []
            for i in range(count):  # distinct pixels per file (one bright row), as a real dataset's
                pixels = base.copy()
                pixels[i % height] = 255
                path = folder / f"{i}.{fmt}"
                Image.fromarray(pixels).save(path)
                tasks.append({"row": i, "file": str(path), "mask": "", "label": "normal", "role": "train",
                              "manifest_size": (width, height)})
            kb = np.mean([os.path.getsize(t["file"]) for t in tasks[:20]]) / 1024
            ms: dict[int, list[float]] = {1: [], pool: []}
            cpu_ms: dict[int, list[float]] = {1: [], pool: []}
            for workers in (1, pool, 1, pool):
                started, cpu_started = time.perf_counter(), cpu()
                inspect_tasks(tasks, workers=workers)
                ms[workers].append(1000 * (time.perf_counter() - started) / count)
                cpu_ms[workers].append(1000 * (cpu() - cpu_started) / count)
            one, many = min(ms[1]), min(ms[pool])
            chosen = default_workers(tasks)
            print(f"{width} x {height} {fmt} ({kb:.0f} KB) x {count}: one thread {one:.2f} ms/file "
                  f"(cpu {min(cpu_ms[1]):.2f}), pool {many:.2f} ms/file (cpu {min(cpu_ms[pool]):.2f}), "
                  f"pool x{one / many:.2f}; default: {'pool' if chosen > 1 else 'one thread'} "
                  f"(threshold {THREADS_FROM_PIXELS} px)")


if __name__ == "__main__":
    main()
