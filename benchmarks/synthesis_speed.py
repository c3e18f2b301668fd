"""Instruction-synthesis speed: conversations per second on a generated manifest, extrapolated to 100k records.

    .venv/bin/python benchmarks/synthesis_speed.py [--records 5000] [--workers 1 2] [--workspace DIR]

1. Generates the default synthetic dataset (the `prepare` stage) in a temporary workspace.
2. Times the whole `synthesize` stage on the default set (synthesis, GX validation, benchmark files, reports) and
   the synthesis alone.
3. Replicates the training rows (new source names; roots are symlinks, in a temporary folder, to the real ones)
   so that every record is distinct and every anomalous row's region facts are recomputed, up to about
   ``--records`` records; times ``synthesize_records`` with each ``--workers`` value; extrapolates to 100k.
   Target: the default set in well under a minute, 100k records in under 10 minutes on 2 cores.

``--workspace`` reuses a scratch workspace that already has ``data/manifest.parquet``; the stage writes its
outputs (data/instruct, data/bench, reports) there, so never point it at a real project.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workspace", type=Path, default=None, help="reuse a workspace with data/manifest.parquet")
    args = parser.parse_args()

    import pandas as pd

    from anomaly_ov.config import load_params
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.instruct.run import run_synthesize
    from anomaly_ov.instruct.synthesize import summarize_records, synthesize_records

    params = load_params(None)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="anomaly-ov-synth-bench-"))
    if not (workspace / params.data.manifest).exists():
        from anomaly_ov.data.prepare import run_prepare

        started = time.perf_counter()
        run_prepare(params, workspace)
        print(f"prepare (default synthetic set): {time.perf_counter() - started:.1f} s")
    frame = read_manifest(workspace / params.data.manifest)
    train = frame[frame["role"] == "train"]

    started = time.perf_counter()
    summary = run_synthesize(params, workspace)
    stage_s = time.perf_counter() - started
    started = time.perf_counter()
    records = synthesize_records(train, params, workspace)
    synth_s = time.perf_counter() - started
    stats = summarize_records(records)
    print(f"default set: {len(train)} training rows -> {stats['records']} records, {stats['turns']} turns")
    print(f"  synthesize stage (synthesis + GX validation + benchmark + reports): {stage_s:.1f} s")
    print(f"  synthesis alone: {synth_s:.2f} s = {len(records) / synth_s:.0f} records/s")
    print(f"  yes share {stats['yes_share']}, distinct-answer ratios {stats['distinct_answer_ratio']}, "
          f"benchmark: {summary['bench_detection_images']} detection images, "
          f"{summary['bench_reasoning_items']} reasoning items")

    copies = max(1, math.ceil(args.records / len(records)))
    parts = []
    links = Path(tempfile.mkdtemp(prefix="anomaly-ov-synth-links-"))  # outside the workspace: nothing to clean there
    for k in range(copies):
        roots = {}
        for i, root in enumerate(train["root"].unique()):
            link = links / f"copy{k}_{i}"
            link.symlink_to((workspace / root).resolve(), target_is_directory=True)
            roots[root] = str(link)
        parts.append(train.assign(source=train["source"] + f"_copy{k}", root=train["root"].map(roots)))
    big = pd.concat(parts, ignore_index=True)
    results = {}
    for workers in args.workers:
        cfg = params.instruct.model_copy(update={"workers": workers})
        p = params.model_copy(update={"instruct": cfg})
        started = time.perf_counter()
        out = synthesize_records(big, p, workspace)
        seconds = time.perf_counter() - started
        rate = len(out) / seconds
        results[workers] = {"records": len(out), "seconds": round(seconds, 2), "records_per_s": round(rate, 1),
                            "extrapolated_100k_min": round(100_000 / rate / 60, 2)}
        print(f"scale: {len(big)} rows -> {len(out)} records with workers={workers}: {seconds:.1f} s = "
              f"{rate:.0f} records/s -> 100k records in about {100_000 / rate / 60:.1f} min")
    shutil.rmtree(links)  # removes the symlinks only (rmtree never follows them)
    print(json.dumps({"default_stage_s": round(stage_s, 2), "default_synthesis_s": round(synth_s, 2),
                      "scale": results}))


if __name__ == "__main__":
    main()
