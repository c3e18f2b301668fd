"""Test-session set-up: a hermetic, offline environment before any library import.

The variables and why they are needed: docs/architecture.md, 'Offline, hermetic runs'.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

_OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    "GIT_AUTHOR_NAME": "anomaly-ov tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "anomaly-ov tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}
for _key, _value in _OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
# A temporary Prefect home per test process (removed when it exits); PREFECT_API_URL must be unset (not empty) for
# the local server.
_PREFECT_HOME = tempfile.mkdtemp(prefix="anomaly-ov-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Under pytest-xdist (`make test` runs `-n 2`), each worker gets its share of the cores for torch's intra-op threads
# (two workers x two BLAS threads on two cores would fight). Set before any test module imports torch, and
# inherited by every subprocess a test starts, so a stage run in a child computes with the same thread count as
# the same code in the worker (tests compare weights bit for bit). An explicit OMP_NUM_THREADS wins.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _threads = str(max(1, _cores // _XDIST_WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ real-layout checkpoints (tests/real_layout.py)
sys.path.insert(0, str(Path(__file__).parent))  # helpers beside this file: `real_layout`, `hostile`, `session_servers`


@pytest.fixture(scope="session")
def qwen2_tokenizer():
    """llava-hf's Qwen2 tokenizer (real BPE, <image> 151646); session-wide, do not modify."""
    from real_layout import build_qwen2_tokenizer

    return build_qwen2_tokenizer()


@pytest.fixture(scope="session")
def real_layout_checkpoint(tmp_path_factory, qwen2_tokenizer) -> Path:
    """A shrunk llava-onevision-qwen2-0.5b-ov-hf directory in the hub's layout (session-wide, read-only)."""
    from real_layout import write_real_layout_checkpoint

    root = tmp_path_factory.mktemp("real_layout")
    return write_real_layout_checkpoint(root / "hub", layout="hub", tokenizer=qwen2_tokenizer)


@pytest.fixture(scope="session")
def real_layout_checkpoints(tmp_path_factory, real_layout_checkpoint, qwen2_tokenizer) -> dict[str, Path]:
    """``{"hub": dir, "save_pretrained": dir}``: the same weights (seed 0) in both key layouts (read-only)."""
    from real_layout import write_real_layout_checkpoint

    root = tmp_path_factory.mktemp("real_layout_sp")
    saved = write_real_layout_checkpoint(root / "save_pretrained", layout="save_pretrained", tokenizer=qwen2_tokenizer)
    return {"hub": real_layout_checkpoint, "save_pretrained": saved}


# ------------------------------------------------------------------ the order files are handed to the workers
#: The slowest test files, longest first, with their seconds in one `make test` on 2 cores (2026-12-03, a per-test
#: timing plugin; CI's `--durations` shows the slowest tests). `make test` hands whole files to the two xdist
#: workers in collection order (``--dist loadfile --no-loadscope-reorder``), each taking the next file as it runs
#: out. Longest first lets the two finish together: in collection order one worker still ran test_sharded.py (57
#: s) after the other had finished. test_sharded.py comes before test_flows.py so that the first two files do not
#: both wait for the session's Prefect server to start. A file not listed keeps its collection order after these;
#: a renamed or removed one is ignored, so the list only needs refreshing when the balance drifts.
SLOWEST_FILES_FIRST = (
    "tests/integration/test_pipeline_real.py",  # 124
    "tests/unit/train/test_sharded.py",  # 57
    "tests/integration/test_flows.py",  # 62
    "tests/unit/train/test_instruct_stage.py",  # 47
    "tests/integration/test_real_checkpoint_path.py",  # 38
    "tests/unit/test_parallel.py",  # 34
    "tests/integration/test_schedule.py",  # 32
    "tests/unit/train/test_pretrained_path.py",  # 28
    "tests/integration/test_serving_http.py",  # 20
    "tests/unit/train/test_expert_stage.py",  # 16
    "tests/integration/test_extensions.py",  # 15
    "tests/unit/train/test_launch.py",  # 15
    "tests/unit/model/test_real_layout.py",  # 14
    "tests/integration/test_registry_gate.py",  # 14
    "tests/unit/test_tracking.py",  # 12
    "tests/integration/test_evaluate_stage.py",  # 12
    "tests/integration/test_sources_stage.py",  # 11
    "tests/integration/test_work_pool.py",  # 10
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: position for position, path in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: in-file order kept


# ------------------------------------------------------------------ servers shared by the run's processes
def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the main process (xdist workers inherit its environment)
        from session_servers import open_run

        open_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # after every worker has finished
        from session_servers import close_run

        close_run()


# ------------------------------------------------------------------ per-file durations (--durations-per-file N)
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--durations-per-file", type=int, default=None, metavar="N",
        help="print the N test files that took longest (setup + call + teardown of their tests, module and session "
             "fixtures counted where they are first used; 0 = every file) and the suite's total")


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    count = config.getoption("--durations-per-file")
    if count is None or not _FILE_SECONDS:
        return
    ranked = sorted(_FILE_SECONDS.items(), key=lambda item: item[1], reverse=True)
    total = sum(_FILE_SECONDS.values())
    shown = ranked if count == 0 else ranked[:count]
    title = "seconds per test file" + ("" if count == 0 else f" ({len(shown)} slowest of {len(ranked)})")
    terminalreporter.write_sep("=", title)
    for path, seconds in shown:
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}%  {path}")
    terminalreporter.write_line(f"{total:8.1f}s total test time in {len(ranked)} files")


# ------------------------------------------------------------------ blank MLflow stores
# ``mlflow_store``: a new MLflow SQLite store costs seconds (MLflow creates its tables and runs its schema migrations
# on first open). One blank store is made by MLflow once per test process; a test whose subject is what a stage logs,
# not how the store comes to exist, copies it into its workspace, as a workspace holds one after its first stage.
# The test of the store's creation (tests/unit/test_tracking.py::test_consecutive_workspaces_log_to_their_own_store)
# leaves its first workspace bare.


@pytest.fixture(scope="session")
def blank_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    assert path.stat().st_size > 0
    return path


@pytest.fixture
def mlflow_store(blank_mlflow_db: Path) -> Callable[[Path], Path]:
    """``mlflow_store(workspace)`` puts a blank, current-schema MLflow store at ``workspace/mlflow.db``."""

    def place(workspace: Path) -> Path:
        target = Path(workspace) / "mlflow.db"
        assert not target.exists(), f"{target} exists already"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blank_mlflow_db, target)
        return target

    return place
