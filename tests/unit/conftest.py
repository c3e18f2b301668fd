"""Fixtures shared by the unit tests.

``xdist_group``: a module whose tests share an expensive module-scoped fixture (a trained workspace, a Dask
cluster, two-process runs) marks itself ``pytestmark = pytest.mark.xdist_group(NAME)``, so that with
``-n 2 --dist loadgroup`` its tests run on one worker and the fixture is built once, not once per worker.
With pytest 9.2 and pytest-xdist 3.8.0 the mark has no effect: xdist tags the group onto ``item._nodeid``, which
pytest 9.2 no longer reads (the id lives in ``item._id``), so ``loadgroup`` spreads a module's tests like ``load``.
``--dist loadfile`` keeps each module on one worker, which is what every group here asks for.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers this marker itself; declared here too so that --strict-markers accepts it without xdist
    config.addinivalue_line(
        "markers", "xdist_group(name): tests that share an expensive module fixture run on the same xdist worker")
