"""Fan-out speed: validation, synthesis and expert-only evaluation in one process vs on 1 and 2 Dask workers.

    .venv/bin/python benchmarks/fanout_speed.py [--rows 100000] [--files 2000] [--records 100000] [--images 64]
                                                [--workers 1 2] [--only validate synthesize evaluate]

Each part runs in one process (``parallel.workers: 1``, today's path) and then on a local Dask cluster of each
``--workers`` size, reached by address (the cluster is started before the clock, its start-up time printed apart),
and prints seconds and the ratio to the in-process run (> 1 = faster); the outputs are checked to be equal.

1. Validation: a manifest of ``--rows`` rows (GX table checks + the per-file checks, which are what is sharded);
   the rows name ``--files`` distinct small PNGs in turn (a third anomalies with masks), so every row's files are
   opened and decoded.
2. Synthesis: a small generated training set (64 px, 40 images per category), its rows replicated under new
   source names (roots are symlinks to the real folders, so every anomalous row's region facts are recomputed) up
   to about ``--records`` records; times ``synthesize_records`` (region facts + conversations).
3. Expert-only evaluation: the tiny preset (random init, saved and loaded as the stage does) scores ``--images``
   synthetic 128 px images (score + anomaly map, no answers) with ``run_detection``; each worker loads the model
   once (a first, untimed run warms them up; its time is printed as "cold").

The in-process path already uses the machine in places (validation's thread pool decodes images on every core),
so on a 2-core machine the ratios say what the fan-out costs or gains there; a cluster of more machines is what
it is for.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np


def _cluster(workers: int, stack: ExitStack) -> tuple[str, float]:
    from distributed import Client

    from anomaly_ov.parallel import local_cluster

    started = time.perf_counter()
    cluster = stack.enter_context(local_cluster(workers))
    stack.enter_context(Client(cluster, set_as_default=False)).wait_for_workers(workers)
    return cluster.scheduler_address, time.perf_counter() - started


def _with(params, **parallel):
    return params.model_copy(update={"parallel": params.parallel.model_copy(update=parallel)})


def _row(name: str, seconds: dict[str, float], base: str = "in-process") -> dict[str, float]:
    ratios = {k: round(seconds[base] / v, 2) for k, v in seconds.items()}
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s (x{ratios[k]})" for k, v in seconds.items()), flush=True)
    return {"seconds": {k: round(v, 2) for k, v in seconds.items()}, "ratio_to_in_process": ratios}


# ------------------------------------------------------------------------------------------------ validation
def validation(params, args, addresses: dict[int, str]) -> dict:
    from PIL import Image
    from validate_speed import synthetic_manifest

    from anomaly_ov.validate.run import validate_manifest

    workspace = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-validate-"))
    files = synthetic_manifest(args.files, categories=50).assign(root="data/raw/bench", width=64, height=64)
    rng = np.random.default_rng(0)
    for item in files.itertuples(index=False):
        (workspace / item.root / item.image_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(workspace / item.root / item.image_path)
        if item.mask_path:
            mask = np.zeros((64, 64), np.uint8)
            mask[16:32, 16:32] = 255
            Image.fromarray(mask).save(workspace / item.root / item.mask_path)
    frame = files.iloc[np.arange(args.rows) % len(files)].reset_index(drop=True)
    from anomaly_ov.validate.gx import gx_context

    gx_context()  # Great Expectations' import and context (seconds), paid before the clock
    seconds, reports = {}, {}
    for name, p in (("in-process", params), *((f"{w} worker(s)", _with(params, address=a))
                                               for w, a in addresses.items())):
        started = time.perf_counter()
        report = validate_manifest(frame, p, workspace, sources=[], subject="bench")
        seconds[name] = time.perf_counter() - started
        reports[name] = [(c.name, c.passed, c.failing) for c in report.checks]
    assert all(r == reports["in-process"] for r in reports.values()), "reports differ"
    shutil.rmtree(workspace)
    return {"rows": args.rows, "files": args.files, **_row(f"validation of {args.rows} rows", seconds)}


# ------------------------------------------------------------------------------------------------- synthesis
#: a smaller generated set (64 px, fewer images) than the default: it is replicated up to ``--records`` anyway.
SMALL_SET = ["data.synthetic.image_size=64", "data.synthetic.training_normals_per_category=20",
             "data.synthetic.training_anomalies_per_category=20"]

def synthesis(params, args, addresses: dict[int, str]) -> dict:
    import pandas as pd

    from anomaly_ov.config import load_params
    from anomaly_ov.data.manifest import read_manifest
    from anomaly_ov.data.prepare import run_prepare
    from anomaly_ov.instruct.synthesize import synthesize_records

    workspace = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-synth-"))
    run_prepare(load_params(None, SMALL_SET), workspace)
    train = read_manifest(workspace / params.data.manifest).query("role == 'train'")
    per_copy = len(synthesize_records(train, params, workspace))
    links = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-links-"))
    parts = []
    for k in range(max(1, math.ceil(args.records / per_copy))):
        roots = {}
        for i, root in enumerate(train["root"].unique()):
            link = links / f"copy{k}_{i}"
            link.symlink_to((workspace / root).resolve(), target_is_directory=True)
            roots[root] = str(link)
        parts.append(train.assign(source=train["source"] + f"_copy{k}", root=train["root"].map(roots)))
    big = pd.concat(parts, ignore_index=True)
    seconds, outputs = {}, {}
    for name, p in (("in-process", params), *((f"{w} worker(s)", _with(params, address=a))
                                               for w, a in addresses.items())):
        from anomaly_ov.parallel import fanout

        started = time.perf_counter()
        with fanout(p.parallel, "synthesize") as fan:
            records = synthesize_records(big, p, workspace, fan=fan)
        seconds[name] = time.perf_counter() - started
        outputs[name] = json.dumps(records)
    assert all(o == outputs["in-process"] for o in outputs.values()), "records differ"
    shutil.rmtree(links)
    shutil.rmtree(workspace)
    return {"rows": len(big), "records": len(records), **_row(f"synthesis of {len(records)} records", seconds)}


# ------------------------------------------------------------------------------------------------ evaluation
def evaluation(params, args, addresses: dict[int, str]) -> dict:
    import torch
    from PIL import Image

    from anomaly_ov.evaluate.detection import PredictorSpec, run_detection
    from anomaly_ov.evaluate.run import load_predictor
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer
    from anomaly_ov.parallel import fanout

    workspace = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-eval-"))
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["Yes, there is a scratch.", "No, the object looks normal."] * 5)
    model_dir = save_pretrained(build_model(params, tokenizer).eval(), build_processor(params, tokenizer),
                                workspace / "model")
    rng = np.random.default_rng(0)
    items = []
    for i in range(args.images):
        file = workspace / f"img_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(file)
        mask = ""
        if i % 2:
            mask = str(workspace / f"mask_{i:04d}.png")
            m = np.zeros((128, 128), np.uint8)
            m[32:64, 40:80] = 255
            Image.fromarray(m).save(mask)
        items.append({"file": str(file), "anomaly": bool(i % 2), "mask": mask, "category": f"c{i % 4}",
                      "image": file.name})
    cfg = params.evaluate.model_copy(update={"generate_answers": False})
    predictor = load_predictor(model_dir, "cpu")
    spec = PredictorSpec(str(model_dir), "cpu")
    seconds, cold, records = {}, {}, {}
    for name, p in (("in-process", params), *((f"{w} worker(s)", _with(params, address=a))
                                               for w, a in addresses.items())):
        with fanout(p.parallel, "evaluate") as fan:
            started = time.perf_counter()
            run_detection(predictor, items, cfg, workspace, fan=fan, spec=spec)  # warms the workers' model
            cold[name] = time.perf_counter() - started
            started = time.perf_counter()
            result = run_detection(predictor, items, cfg, workspace, fan=fan, spec=spec)
            seconds[name] = time.perf_counter() - started
        records[name] = result.records
    assert all(r == records["in-process"] for r in records.values()), "records differ"
    print("  cold (first run, workers load the model): " + ", ".join(f"{k} {v:.1f} s" for k, v in cold.items()))
    shutil.rmtree(workspace)
    return {"images": args.images, "cold_seconds": {k: round(v, 2) for k, v in cold.items()},
            **_row(f"expert-only evaluation of {args.images} images", seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=["validate", "synthesize", "evaluate"],
                        default=["validate", "synthesize", "evaluate"])
    args = parser.parse_args()

    import torch

    from anomaly_ov.config import load_params

    torch.set_num_threads(1)  # as in each single-threaded Dask worker
    params = load_params(None)
    results: dict = {}
    with ExitStack() as stack:
        addresses = {}
        for workers in args.workers:
            addresses[workers], started = _cluster(workers, stack)
            print(f"local cluster of {workers} worker(s) up in {started:.1f} s", flush=True)
        parts = {"validate": validation, "synthesize": synthesis, "evaluate": evaluation}
        for name in args.only:
            results[name] = parts[name](params, args, addresses)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
