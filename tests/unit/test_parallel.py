"""The data stages fanned out on a real Dask cluster (2 worker processes) give the bytes of one process.

One local cluster is shared by the module (starting one takes seconds); the stages reach it by address, as a
remote cluster is used, except ``prepare``, which starts its own local cluster from ``parallel.workers: 2``. A
test-only :class:`~distributed.diagnostics.plugin.WorkerPlugin` injects faults into one named shard inside the
worker processes: once (Dask's retry must recover, with the same report) or always (the stage must name the shard).
Reports carry their creation time and durations, which differ between two single-process runs as well: those
keys alone are left out of the comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest

from anomaly_ov.config import load_params
from anomaly_ov.errors import StageFailed
from anomaly_ov.parallel import ShardFailed, local_cluster, shard_bounds

# one Dask cluster and workspace per module: keep its tests on one xdist worker
pytestmark = pytest.mark.xdist_group("dask_cluster")

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.synthetic.image_size=64",
    "data.synthetic.train_categories=[fabric,screw]",
    "data.synthetic.eval_categories=[pcb]",
    "data.synthetic.train_normal_per_category=3",
    "data.synthetic.test_normal_per_category=2",
    "data.synthetic.test_anomaly_per_category=4",
    "data.synthetic.training_normals_per_category=4",
    "data.synthetic.training_anomalies_per_category=6",
    "tracking.enabled=false",
    # the extensions that join training run in-process (not fanned out): at their smallest
    "extensions.medical.image_size=32",
    "extensions.medical.train_normal_per_modality=2",
    "extensions.medical.train_anomaly_per_modality=2",
    "extensions.threed.image_size=32",
    "extensions.threed.views=2",
    "extensions.threed.points_per_object=500",
    "extensions.threed.train_normal_per_shape=1",
    "extensions.threed.train_anomaly_per_shape=1",
]
TIMING = {"created_at", "seconds", "synthesis_seconds", "records_per_s", "speed.detection_images_per_s"}

# The fault plugins below travel to the workers by value (the workers cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FailShard(distributed.WorkerPlugin):
    """In each worker, makes shard ``index`` of ``stage`` raise: on its first attempt only (a marker file, created
    atomically, records that it happened) or on every attempt."""

    def __init__(self, stage: str, index: int, marker: str, always: bool = False) -> None:
        self.stage, self.index, self.marker, self.always = stage, index, marker, always

    def setup(self, worker) -> None:
        from anomaly_ov import parallel

        self.original = original = parallel._call
        plugin = self

        def faulty(fn, index, items):
            if index == plugin.index and distributed.get_worker().get_current_task().startswith(plugin.stage):
                try:
                    os.close(os.open(plugin.marker, os.O_CREAT | os.O_EXCL))
                    first = True
                except FileExistsError:
                    first = False
                if first or plugin.always:
                    raise OSError(f"injected fault in shard {index}")
            return original(fn, index, items)

        parallel._call = faulty

    def teardown(self, worker) -> None:
        from anomaly_ov import parallel

        parallel._call = self.original


#: what Dask's nannies write into their parent's os.environ (and local_cluster must take back)
NANNY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of 2 worker processes (one thread each), a client for plugins, and this process's
    environment just before and just after ``local_cluster`` started it (started once per module: a cluster's
    start and close take seconds, so the environment test looks at this one instead of starting its own)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in NANNY_ENV:
            patch.delenv(name, raising=False)
        before = dict(os.environ)
        local = local_cluster(2)
        after = dict(os.environ)
    with local, distributed.Client(local, set_as_default=False) as client:
        yield local.scheduler_address, client, (before, after)


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory, cluster):
    """A workspace built by ``prepare`` on a local cluster the stage starts itself, then rebuilt in-process at the
    same path (some generated files record their folder); returns it and the files of the 2-worker build."""
    from anomaly_ov.data.prepare import run_prepare

    one = tmp_path_factory.mktemp("fanout") / "one"
    one.mkdir()
    shutil.copy(REPO / "params.yaml", one / "params.yaml")
    run_prepare(_params("parallel.workers=2"), one)
    fanned = _files(one / "data")
    shutil.rmtree(one / "data")
    run_prepare(_params("parallel.workers=1"), one)
    return one, fanned


def _params(*more: str):
    return load_params(REPO / "params.yaml", [*SMALL, *more])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _without_timing(data):
    if isinstance(data, dict):
        return {k: _without_timing(v) for k, v in data.items() if k not in TIMING}
    if isinstance(data, list):
        return [_without_timing(v) for v in data]
    return data


def _same_report(a: Path, b: Path) -> None:
    if a.suffix == ".json":
        assert _without_timing(json.loads(a.read_text())) == _without_timing(json.loads(b.read_text())), a.name
    else:  # Markdown: the same lines apart from the ones stating a time
        keep = [[line for line in p.read_text().splitlines() if " s" not in line and "UTC" not in line and
                 "created" not in line.lower() and "seconds" not in line] for p in (a, b)]
        assert keep[0] == keep[1], a.name


def test_shards_cover_items_once_in_order():
    assert shard_bounds(10, 2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert shard_bounds(10, 2, multiple_of=4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_bounds(10, 1, shard_size=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_bounds(0, 4) == []


def test_prepare_on_two_workers_writes_the_same_bytes(workspaces):
    one, fanned = workspaces
    files = _files(one / "data")
    assert "manifest.parquet" in files and len(files) > 40
    # the 3D renders' cache stamp hashes its inputs' mtimes, so it differs between any two builds: its name only
    stamps = {name for name in files if name.endswith("render.json")}
    assert stamps == {name for name in fanned if name.endswith("render.json")}
    assert {k: v for k, v in fanned.items() if k not in stamps} == {k: v for k, v in files.items() if k not in stamps}


def test_validate_report_is_the_same_on_two_workers(workspaces, cluster):
    from anomaly_ov.validate.run import run_validate

    one, _ = workspaces
    single = run_validate(_params("validate.report_json=reports/v1.json", "validate.report_md=reports/v1.md"), one)
    fanned = run_validate(_params(f"parallel.address={cluster[0]}", "validate.report_json=reports/v2.json",
                                  "validate.report_md=reports/v2.md"), one)
    assert single["files_checked"] == fanned["files_checked"] == len(pd.read_parquet(one / "data/manifest.parquet"))
    _same_report(one / "reports/v1.json", one / "reports/v2.json")
    _same_report(one / "reports/v1.md", one / "reports/v2.md")


def test_a_shard_failing_once_is_retried_and_the_report_unchanged(workspaces, cluster, tmp_path):
    from anomaly_ov.validate.run import run_validate

    address, client, _ = cluster
    one, _ = workspaces
    marker = tmp_path / "fault-fired"
    run_validate(_params("validate.report_json=reports/r1.json", "validate.report_md=reports/r1.md"), one)
    client.register_plugin(FailShard("validate", 1, str(marker)), name="fail-once")
    try:
        run_validate(_params(f"parallel.address={address}", "parallel.retries=1",
                             "validate.report_json=reports/r2.json", "validate.report_md=reports/r2.md"), one)
    finally:
        client.unregister_worker_plugin("fail-once")
    assert marker.exists(), "the fault was never injected"
    _same_report(one / "reports/r1.json", one / "reports/r2.json")


def test_a_shard_that_always_fails_is_named(workspaces, cluster, tmp_path):
    from anomaly_ov.validate.run import run_validate

    address, client, _ = cluster
    one, _ = workspaces
    client.register_plugin(FailShard("validate", 2, str(tmp_path / "fired"), always=True), name="fail-always")
    try:
        with pytest.raises(ShardFailed) as failed:
            run_validate(_params(f"parallel.address={address}", "parallel.retries=1", "parallel.shard_size=10",
                                 "validate.report_json=reports/f.json", "validate.report_md=reports/f.md"), one)
    finally:
        client.unregister_worker_plugin("fail-always")
    manifest = pd.read_parquet(one / "data/manifest.parquet")
    first, last = (f"{manifest.root[i]}/{manifest.image_path[i]}" for i in (20, 29))
    message = str(failed.value)
    assert isinstance(failed.value, StageFailed) and failed.value.exit_code == 4
    assert f"validate shard 3/{-(-len(manifest) // 10)} (rows 20-29: " in message
    assert first in message and last in message
    assert "after 2 attempt(s): OSError: injected fault in shard 2" in message
    assert failed.value.failing == [f"{one / manifest.root[i]}/{manifest.image_path[i]}" for i in range(20, 30)]
    assert not (one / "reports/f.json").exists()


def test_synthesize_writes_the_same_files_on_two_workers(workspaces, cluster, tmp_path):
    from anomaly_ov.instruct.run import run_synthesize

    one, _ = workspaces
    copy = tmp_path / "copy"
    shutil.copytree(one, copy, symlinks=True)
    run_synthesize(_params(), one)
    run_synthesize(_params(f"parallel.address={cluster[0]}", "parallel.shard_size=7"), copy)
    for folder in ("data/instruct", "data/bench"):
        assert _files(copy / folder) == _files(one / folder) != {}
    for name in ("reports/instruct.json", "reports/instruct_validation.json", "reports/instruct_validation.md"):
        _same_report(one / name, copy / name)


def test_expert_only_evaluation_is_the_same_on_two_workers(workspaces, cluster, tmp_path):
    import torch

    from anomaly_ov.evaluate.detection import PredictorSpec, load_test_items
    from anomaly_ov.evaluate.run import evaluate_dataset, load_predictor
    from anomaly_ov.instruct.run import run_synthesize
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    one, _ = workspaces
    if not (one / "data/bench/test_data.json").exists():
        run_synthesize(_params(), one)
    torch.manual_seed(0)
    # one sample figure per (class, kind): the shards still each pick theirs and the merge keeps the run's first
    fast = ("evaluate.generate_answers=false", "evaluate.figures_per_kind=1")
    params = _params(*fast)
    tokenizer = train_tokenizer(["Yes, there is a scratch.", "No, the object looks normal."] * 5)
    model_dir = save_pretrained(build_model(params, tokenizer).eval(), build_processor(params, tokenizer),
                                tmp_path / "model")
    items = load_test_items(one / "data/bench/test_data.json")
    predictor = load_predictor(model_dir, "cpu")
    spec = PredictorSpec(str(model_dir), "cpu")
    outputs = {}
    for name, more in (("one", []), ("two", [f"parallel.address={cluster[0]}"])):
        outputs[name] = tmp_path / name
        flat = evaluate_dataset(predictor, items, None, _params(*fast, *more),
                                outputs[name], one, log_to_mlflow=False, predictor_spec=spec)
        assert flat["counts.images"] == len(items)
    single, fanned = _files(outputs["one"]), _files(outputs["two"])
    assert single.keys() == fanned.keys() and "predictions.parquet" in single
    for name in single:
        if name.endswith((".json", ".md")):
            _same_report(outputs["one"] / name, outputs["two"] / name)
        else:
            assert fanned[name] == single[name], name


def test_the_evaluate_stage_loads_the_model_in_the_workers_only_when_it_fans_out(workspaces, cluster, tmp_path,
                                                                                  monkeypatch):
    """A fanned-out detection holds no copy of the model in the stage process (on a multi-GPU machine it would sit
    on GPU 0 beside worker 0's); in process the stage loads it once. A spy on the loader counts this process's
    loads (the cluster's workers are other processes)."""
    import torch

    from anomaly_ov.evaluate import run
    from anomaly_ov.instruct.run import run_synthesize
    from anomaly_ov.model.presets import build_model, build_processor, save_pretrained
    from anomaly_ov.model.tokenizer import train_tokenizer

    one, _ = workspaces
    if not (one / "data/bench/test_data.json").exists():
        run_synthesize(_params(), one)
    ws = tmp_path / "ws"
    shutil.copytree(one, ws, symlinks=True)
    torch.manual_seed(0)
    expert_only = ("evaluate.generate_answers=false", "evaluate.reasoning=false")
    tokenizer = train_tokenizer(["Yes, there is a scratch.", "No, the object looks normal."] * 5)
    save_pretrained(build_model(_params(*expert_only), tokenizer).eval(),
                    build_processor(_params(*expert_only), tokenizer), ws / "models/anomaly_ov")
    real, loads = run.load_predictor, []
    monkeypatch.setattr(run, "load_predictor", lambda model, device="auto": loads.append(model) or real(model, device))

    fanned = run.run_evaluate(_params(*expert_only, f"parallel.address={cluster[0]}"), ws)
    assert loads == [] and fanned["images"] > 0
    single = run.run_evaluate(_params(*expert_only), ws)
    assert len(loads) == 1 and single["images"] == fanned["images"]


def test_one_worker_runs_in_process_without_importing_dask():
    import subprocess

    code = ("import sys\nfrom anomaly_ov.config import ParallelParams\nfrom anomaly_ov.parallel import fanout\n"
            "with fanout(ParallelParams()) as fan:\n"
            "    out = [r for _, part in fan.map('s', lambda xs: [x * 2 for x in xs], [1, 2, 3]) for r in part]\n"
            "assert not fan.distributed and out == [2, 4, 6], out\n"
            "assert 'distributed' not in sys.modules and 'dask' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_an_unreachable_scheduler_is_a_stage_error_naming_the_address():
    import socket

    from anomaly_ov.config import ParallelParams
    from anomaly_ov.parallel import fanout

    with socket.socket() as s:  # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ParallelParams(address=f"tcp://127.0.0.1:{port}", connect_timeout_s=1)
    expected = rf"stage 'validate' failed: cannot reach the Dask scheduler at parallel.address='tcp://127.0.0.1:{port}'"
    with pytest.raises(StageFailed, match=expected), fanout(settings, "validate"):
        pass


def _drop_last(items: list[int]) -> list[int]:
    return items[:-1] if 4 in items else items


def _negate(items: list[int]) -> list[int]:
    return [-x for x in items]


def test_a_shard_returning_too_few_or_foreign_results_is_not_merged(cluster):
    from anomaly_ov.config import ParallelParams
    from anomaly_ov.parallel import FanOut

    fan = FanOut(ParallelParams(shard_size=3), cluster[1])
    assert [r for _, part in fan.map("t", _negate, range(7)) for r in part] == [0, -1, -2, -3, -4, -5, -6]
    with pytest.raises(StageFailed, match=r"t shard 2/3 \(items 3-5\): gathered shard 1 with 2 result\(s\) for 3"):
        list(fan.map("t", _drop_last, range(7)))
    with pytest.raises(StageFailed, match=r"t shard 1/3 \(items 0-2\): 2 gathered result\(s\) do not belong to "
                                          r"their item \(first at item 1\)"):
        list(fan.map("t", _negate, range(7), same=lambda item, result: item == result))


def test_a_local_cluster_leaves_this_process_environment_alone(cluster):
    """Dask's nannies write OMP/MKL/OPENBLAS_NUM_THREADS=1 into the parent's os.environ; every later subprocess of
    the stage (and of a test run) would then compute with one BLAS thread. The module's cluster was started with
    those variables unset."""
    _, client, (before, after) = cluster
    assert not set(NANNY_ENV) & before.keys()
    assert after == before
    # the workers did get the nannies' settings: there was something to leak
    assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}
