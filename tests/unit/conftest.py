"""Fixtures shared by the unit tests.

``xdist_group``: a module whose tests share an expensive module-scoped fixture (a trained workspace, a Dask
cluster, two-process runs) marks itself ``pytestmark = pytest.mark.xdist_group(NAME)``, so that with
``-n 2 --dist loadgroup`` its tests run on one worker and the fixture is built once, not once per worker.
With pytest 9.2 and pytest-xdist 3.8.0 the mark has no effect: xdist tags the group onto ``item._nodeid``, which
pytest 9.2 no longer reads (the id lives in ``item._id``), so ``loadgroup`` spreads a module's tests like ``load``.
``--dist loadfile`` keeps each module on one worker, which is what every group here asks for.

``mlflow_store``: a new MLflow SQLite store costs seconds (MLflow creates its tables and runs its schema migrations
on first open). One blank store is made by MLflow once per test process; a test whose subject is what a stage logs,
not how the store comes to exist, copies it into its workspace, as a workspace holds one after its first stage.
The test of the store's creation (tests/unit/test_tracking.py::test_consecutive_workspaces_log_to_their_own_store)
leaves its first workspace bare.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers this marker itself; declared here too so that --strict-markers accepts it without xdist
    config.addinivalue_line(
        "markers", "xdist_group(name): tests that share an expensive module fixture run on the same xdist worker")


@pytest.fixture(scope="session")
def _blank_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    assert path.stat().st_size > 0
    return path


@pytest.fixture
def mlflow_store(_blank_mlflow_db: Path) -> Callable[[Path], Path]:
    """``mlflow_store(workspace)`` puts a blank, current-schema MLflow store at ``workspace/mlflow.db``."""

    def place(workspace: Path) -> Path:
        target = Path(workspace) / "mlflow.db"
        assert not target.exists(), f"{target} exists already"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_blank_mlflow_db, target)
        return target

    return place
