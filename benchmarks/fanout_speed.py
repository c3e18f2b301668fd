"""Fan-out speed: validation, synthesis and expert-only evaluation in one process vs on 1 and 2 Dask workers.

    .venv/bin/python benchmarks/fanout_speed.py [--rows 100000] [--files 2000] [--records 100000] [--images 64]
                                                [--workers 1 2] [--only validate synthesize evaluate]

The issue's sizes are the defaults; on an idle 2-core machine run them with

    nice -n 10 .venv/bin/python benchmarks/fanout_speed.py > fanout.out 2> fanout.log

At these sizes it took 477 s on the idle 2-core development machine (2026-12-03; the figures are in the README's
"Scaling out"); at a load of 6-8 from other jobs a tenth of them took 155 s.

Each part runs in one process (``parallel.workers: 1``, today's path) and then on a local Dask cluster of each
``--workers`` size, reached by address (the clusters are started, and their workers import the shards' modules,
before the clock; both printed apart), and prints wall seconds, the ratio to the in-process run (> 1 = faster) and
the CPU seconds of the run (this process plus the cluster's workers: on a shared machine the wall-clock ratios
follow the other load, the CPU seconds what the work cost). The outputs of every run are checked to be equal.
Progress goes to stderr; the last line of stdout is the JSON of every figure, with the load average (1/5/15 min)
at the start, after each part and at the end.

1. Validation: a manifest of ``--rows`` rows, each naming its own image file (a third anomalies with their own
   mask file): GX table checks, path containment and the per-file checks (which are what is sharded). The files
   are hard links to a pool of ``--files`` distinct 64 px PNGs per role (and 4 masks), so each row's file is
   opened, verified and decoded by its own path while the input costs seconds to make; the pool's repeated
   pixels make ``duplicate_content`` (a warning) the one failing check, said so in the output.
2. Synthesis: a small generated training set (64 px, 20 + 20 images per category), its rows replicated under
   new source names (roots are symlinks to the real folders, so every anomalous row's region facts are
   recomputed) up to about ``--records`` records; times ``synthesize_records`` (region facts + conversations).
3. Expert-only evaluation: the tiny preset (random init, saved and loaded as the stage does) scores ``--images``
   synthetic 128 px images (score + anomaly map, no answers) with ``run_detection``; each worker loads the model
   once (a first, untimed run warms them up; its time is printed as "cold").

Shards are coarse (about 4 per worker, each one task carrying its items: ~150 B a validation row, ~600 B a
synthesis record); the in-process path already uses the machine in places (validation's thread pool decodes
images on every core), so on a 2-core machine the ratios say what the fan-out costs or gains there; a cluster of
more machines is what it is for.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np


def _warm_imports() -> None:
    """What each part's shards import in a worker (seconds per fresh process), loaded before the clock."""
    import anomaly_ov.evaluate.detection  # noqa: F401
    import anomaly_ov.instruct.regions  # noqa: F401
    import anomaly_ov.instruct.synthesize  # noqa: F401
    import anomaly_ov.validate.files  # noqa: F401


def _cluster(workers: int, stack: ExitStack) -> tuple[str, float, float]:
    """A local cluster of ``workers`` processes: its address, start-up seconds and the workers' import seconds."""
    from distributed import Client

    from anomaly_ov.parallel import local_cluster

    started = time.perf_counter()
    cluster = stack.enter_context(local_cluster(workers))
    client = stack.enter_context(Client(cluster, set_as_default=False))
    client.wait_for_workers(workers)
    up = time.perf_counter() - started
    started = time.perf_counter()
    client.run(_warm_imports)
    return cluster.scheduler_address, up, time.perf_counter() - started


def _with(params, **parallel):
    return params.model_copy(update={"parallel": params.parallel.model_copy(update=parallel)})


def _runs(params, addresses: dict[int, str]) -> list[tuple[str, object]]:
    """(name, params) of each timed run: in this process, then on each cluster by its address."""
    return [("in-process", params), *((f"{w} worker(s)", _with(params, address=a)) for w, a in addresses.items())]


def _cpu(address: str | None) -> float:
    """CPU seconds used so far by this process (all its threads) or, given an address, by the cluster's workers."""
    if address is None:
        return time.process_time()
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        return sum(client.run(time.process_time).values())


class Clock:
    """Wall seconds of a run, and the CPU seconds it cost (this process + the cluster's workers, if any): on a
    shared machine the wall-clock ratios follow the other load, the CPU seconds say what the work itself cost."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def __enter__(self) -> Clock:
        self.workers0 = _cpu(self.address) if self.address else 0.0
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        if self.address:
            self.cpu += _cpu(self.address) - self.workers0


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPU(s)"


def _row(name: str, seconds: dict[str, float], cpu: dict[str, float], base: str = "in-process", per: int = 0,
         unit: str = "item") -> dict[str, object]:
    """Print and return one part's wall seconds, ratios to the in-process run (> 1 = faster) and CPU seconds."""
    ratios = {k: round(seconds[base] / v, 2) for k, v in seconds.items()}
    each = (lambda v: f", {1000 * v / per:.2f} ms/{unit}") if per else (lambda v: "")
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s{each(v)} (x{ratios[k]}; cpu {cpu[k]:.1f} s)"
                                  for k, v in seconds.items()), flush=True)
    return {"seconds": {k: round(v, 2) for k, v in seconds.items()}, "ratio_to_in_process": ratios,
            "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()}}


# ------------------------------------------------------------------------------------------------ validation
def validation_workspace(rows: int, files: int, side: int = 64) -> tuple[Path, Any]:
    """A workspace whose manifest of ``rows`` rows (unique paths, 50 categories, a third anomalies with masks)
    names ``rows`` files: hard links to a pool of ``files`` distinct ``side`` px PNGs per role (and 4 masks).

    Every row's image and mask is a file of its own name, opened, verified and decoded by the file checks;
    hard links only share the bytes, so the pool's pixels repeat: ``duplicate_content`` (a warning) lists the
    repeats, and a pool per role keeps ``duplicate_across_roles`` (critical) clean."""
    import os

    from PIL import Image
    from validate_speed import synthetic_manifest

    workspace = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-validate-"))
    atexit.register(shutil.rmtree, workspace, True)  # also when a part fails
    frame = synthetic_manifest(rows, categories=50).assign(root="data/raw/bench", width=side, height=side)
    rng = np.random.default_rng(0)
    pool = workspace / "pool"
    pool.mkdir()
    for role in ("train", "eval"):
        for k in range(files):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(pool / f"{role}_{k}.png")
    for k in range(4):
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4:side // 2, k * side // 8:k * side // 8 + side // 4] = 255
        Image.fromarray(mask).save(pool / f"mask_{k}.png")
    root = workspace / "data/raw/bench"
    made: set[Path] = set()
    started = time.perf_counter()
    for i, (image, mask, role) in enumerate(zip(frame["image_path"], frame["mask_path"], frame["role"],
                                                strict=True)):
        target = root / image
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.link(pool / f"{role}_{i % files}.png", target)
        if mask:
            os.link(pool / f"mask_{i % 4}.png", root / mask)
        if (i + 1) % 20000 == 0:
            _progress(f"  linked {i + 1}/{rows} rows ({time.perf_counter() - started:.0f} s)")
    return workspace, frame


def validation(params, args, addresses: dict[int, str]) -> dict:
    from anomaly_ov.validate.gx import gx_context
    from anomaly_ov.validate.run import validate_manifest

    _progress(f"validation: writing {2 * args.files} pool images and linking {args.rows} rows")
    workspace, frame = validation_workspace(args.rows, args.files)
    gx_context()  # Great Expectations' import and context (seconds), paid before the clock
    seconds, cpu, reports = {}, {}, {}
    for name, p in _runs(params, addresses):
        _progress(f"validation of {args.rows} rows: {name} ...")
        with Clock(p.parallel.address) as clock:
            report = validate_manifest(frame, p, workspace, sources=[], subject="bench")
        seconds[name], cpu[name] = clock.wall, clock.cpu
        _progress(f"  {name}: {clock.wall:.1f} s ({1000 * clock.wall / args.rows:.2f} ms/row), cpu {clock.cpu:.1f} s")
        reports[name] = [c.to_dict() for c in report.checks]
    assert all(r == reports["in-process"] for r in reports.values()), "reports differ"
    failed = sorted(c["name"] for c in reports["in-process"] if not c["passed"])
    assert report.summary["files_checked"] == args.rows and set(failed) <= {"duplicate_content"}, (failed,
                                                                                                 report.summary)
    shutil.rmtree(workspace)
    print(f"validation input: {args.rows} rows, each with its own image file (a third with a mask file), hard "
          f"links to {args.files} distinct 64 px PNGs per role: every file is opened and decoded; the only "
          "failing check is duplicate_content (the pool's repeated pixels) when rows > files, as expected", flush=True)
    return {"rows": args.rows, "files": args.files, "failed_checks": failed, "load_after": _load(),
            **_row(f"validation of {args.rows} rows", seconds, cpu, per=args.rows, unit="row")}


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
    atexit.register(shutil.rmtree, workspace, True)
    _progress("synthesis: preparing a small generated training set")
    run_prepare(load_params(None, SMALL_SET), workspace)
    train = read_manifest(workspace / params.data.manifest).query("role == 'train'")
    per_copy = len(synthesize_records(train, params, workspace))
    _progress(f"synthesis: {len(train)} training rows give {per_copy} records; replicating to {args.records}")
    links = Path(tempfile.mkdtemp(prefix="anomaly-ov-fanout-links-"))
    atexit.register(shutil.rmtree, links, True)
    parts = []
    for k in range(max(1, math.ceil(args.records / per_copy))):
        roots = {}
        for i, root in enumerate(train["root"].unique()):
            link = links / f"copy{k}_{i}"
            link.symlink_to((workspace / root).resolve(), target_is_directory=True)
            roots[root] = str(link)
        parts.append(train.assign(source=train["source"] + f"_copy{k}", root=train["root"].map(roots)))
    big = pd.concat(parts, ignore_index=True)
    seconds, cpu, outputs = {}, {}, {}
    for name, p in _runs(params, addresses):
        from anomaly_ov.parallel import fanout

        _progress(f"synthesis of {len(big)} rows: {name} ...")
        with Clock(p.parallel.address) as clock, fanout(p.parallel, "synthesize") as fan:
            records = synthesize_records(big, p, workspace, fan=fan)
        seconds[name], cpu[name] = clock.wall, clock.cpu
        _progress(f"  {name}: {clock.wall:.1f} s, cpu {clock.cpu:.1f} s, {len(records)} records")
        outputs[name] = json.dumps(records)
    assert all(o == outputs["in-process"] for o in outputs.values()), "records differ"
    shutil.rmtree(links)
    shutil.rmtree(workspace)
    return {"rows": len(big), "records": len(records), "load_after": _load(),
            **_row(f"synthesis of {len(records)} records", seconds, cpu, per=len(records), unit="record")}


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
    atexit.register(shutil.rmtree, workspace, True)
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
    seconds, cpu, cold, records = {}, {}, {}, {}
    for name, p in _runs(params, addresses):
        _progress(f"expert-only evaluation of {args.images} images: {name} ...")
        with fanout(p.parallel, "evaluate") as fan:
            started = time.perf_counter()
            run_detection(predictor, items, cfg, workspace, fan=fan, spec=spec)  # warms the workers' model
            cold[name] = time.perf_counter() - started
            with Clock(p.parallel.address) as clock:
                result = run_detection(predictor, items, cfg, workspace, fan=fan, spec=spec)
            seconds[name], cpu[name] = clock.wall, clock.cpu
        _progress(f"  {name}: {clock.wall:.1f} s, cpu {clock.cpu:.1f} s (cold {cold[name]:.1f} s)")
        records[name] = result.records
    assert all(r == records["in-process"] for r in records.values()), "records differ"
    print("  cold (first run, workers load the model): " + ", ".join(f"{k} {v:.1f} s" for k, v in cold.items()))
    shutil.rmtree(workspace)
    return {"images": args.images, "cold_seconds": {k: round(v, 2) for k, v in cold.items()}, "load_after": _load(),
            **_row(f"expert-only evaluation of {args.images} images", seconds, cpu, per=args.images, unit="image")}


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
    load_start = _load()
    print(f"load average at start: {load_start}", flush=True)
    results: dict = {"load_start": load_start, "args": vars(args)}
    started = time.perf_counter()
    with ExitStack() as stack:
        addresses = {}
        for workers in args.workers:
            addresses[workers], took, imports = _cluster(workers, stack)
            print(f"local cluster of {workers} worker(s) up in {took:.1f} s, workers' imports {imports:.1f} s "
                  "(both before the clock)", flush=True)
        parts = {"validate": validation, "synthesize": synthesis, "evaluate": evaluation}
        for name in args.only:
            results[name] = parts[name](params, args, addresses)
    results["load_end"] = _load()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"load average at end: {results['load_end']}; wall {results['wall_seconds']:.0f} s", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
