"""Fan-out of the data stages (prepare, validate, synthesize, evaluate) over Dask distributed.

One way for every stage: :func:`fanout` opens a :class:`FanOut` from ``params.parallel``; its :meth:`FanOut.map`
splits a list of items (manifest rows, records, images) into contiguous shards, runs a function over each shard
and yields the results shard by shard, in shard order.

- ``parallel.workers: 1`` (the default) and no ``address``: everything runs in this process, in one call over all
  items; no cluster is started and Dask is not imported.
- ``workers: N`` (> 1): a local cluster of N worker processes (one thread each) lives for the stage.
- ``address: tcp://host:8786``: the scheduler of an existing cluster is used (``workers`` is ignored; shard sizes
  follow the cluster's worker count); the cluster's workers must see the same files at the same absolute paths
  (the workspace and the datasets) and run the same version of this package. Each shard runs in the client's
  working directory, so relative paths in the items and in the results mean the same as in one process.

Results do not depend on the number of workers: shards are contiguous runs of the input in its order, every item's
result depends only on the item (per-item seeds come from the item, never from the worker or the order), and
results are gathered in shard order. A shard that raises is retried ``parallel.retries`` times by Dask; when it
still fails the stage stops with :class:`ShardFailed`, which names the shard and its first and last items. Each
shard's result carries its shard number and item count, checked on gather, so a shard is never lost or counted
twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from anomaly_ov.errors import StageFailed

if TYPE_CHECKING:
    from anomaly_ov.config import ParallelParams

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: shards per worker when ``parallel.shard_size`` is 0 (auto): enough to even out slow shards.
SHARDS_PER_WORKER = 4


class ShardFailed(StageFailed):
    """A shard still failed after its retries; the message names the shard, its first and last items and the last
    error, and :attr:`failing` lists every item of the shard."""

    def __init__(self, stage: str, shard: Shard, attempts: int, error: BaseException,
                 items: Sequence[str] = ()) -> None:
        super().__init__(stage, f"{shard.describe()} failed after {attempts} attempt(s): "
                                f"{type(error).__name__}: {error}", failing=items)
        self.shard = shard
        self.error = error


@dataclass(frozen=True)
class Shard:
    """A contiguous run ``[start, stop)`` of a stage's items; ``first``/``last`` name its first and last items."""

    stage: str
    index: int
    count: int  #: shards in the stage
    start: int
    stop: int
    what: str = "items"
    first: str = ""
    last: str = ""

    def describe(self) -> str:
        names = f": {self.first}" + (f" .. {self.last}" if self.last and self.last != self.first else "")
        return (f"{self.stage} shard {self.index + 1}/{self.count} ({self.what} {self.start}-{self.stop - 1}"
                f"{names if self.first else ''})")


def shard_bounds(n_items: int, workers: int, shard_size: int = 0, multiple_of: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` of each shard of ``n_items``: ``shard_size`` items each (0 = about
    :data:`SHARDS_PER_WORKER` shards per worker), rounded up to a multiple of ``multiple_of`` (e.g. a batch size,
    so that shards batch their items exactly as one process does)."""
    if n_items <= 0:
        return []
    size = shard_size or math.ceil(n_items / (max(1, workers) * SHARDS_PER_WORKER))
    size = max(1, math.ceil(size / max(1, multiple_of)) * max(1, multiple_of))
    return [(start, min(start + size, n_items)) for start in range(0, n_items, size)]


def _run_shard(
    fn: Callable[[list[Any]], Sequence[Any]], index: int, items: list[Any], cwd: str
) -> tuple[int, int, list[Any]]:
    """Worker side: ``fn`` over one shard, run in the client's working directory (relative paths in items and in
    the outputs mean the same there), tagged with the shard number and item count for the checks on gather."""
    before = os.getcwd()
    os.chdir(cwd)
    try:
        results = list(_call(fn, index, items))
    finally:
        os.chdir(before)
    return index, len(items), results


def _call(fn: Callable[[list[Any]], Sequence[Any]], index: int, items: list[Any]) -> Sequence[Any]:
    """The one place a shard's function is called (kept separate so a test's worker plugin can inject faults)."""
    return fn(items)


class FanOut:
    """Maps a function over shards of items: in this process, or on a Dask cluster (see the module docstring)."""

    def __init__(self, settings: ParallelParams, client: Any = None) -> None:
        self.settings = settings
        self.client = client

    @property
    def distributed(self) -> bool:
        return self.client is not None

    @property
    def workers(self) -> int:
        """Worker count: the cluster's when connected, else ``parallel.workers``."""
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def map(
        self,
        stage: str,
        fn: Callable[[list[T]], Sequence[R]],
        items: Sequence[T],
        *,
        name: Callable[[T], str] | None = None,
        what: str = "items",
        multiple_of: int = 1,
        per_item: bool = True,
        same: Callable[[T, R], bool] | None = None,
    ) -> Generator[tuple[Shard, list[R]], None, None]:
        """Yield ``(shard, fn(shard's items))`` for each shard of ``items``, in shard order.

        Args:
            stage: the stage's name, for errors and task keys.
            fn: a picklable function (module-level, or a ``functools.partial`` of one) from a list of items to a
                list of as many results, each depending only on its item.
            items: the work, in output order.
            name: names an item in errors (a file, a record id); default: its position.
            what: what the items are, in errors ("rows", "records", "images").
            multiple_of: shard sizes are a multiple of this (a batch size).
            per_item: ``fn`` returns one result per item (checked on gather); False: any list (e.g. per batch).
            same: ``same(item, result)`` says whether a gathered result belongs to its item (e.g. same row id);
                checked on gather when given.

        Raises:
            ShardFailed: a shard still raised after ``parallel.retries`` retries.
        """
        items = list(items)
        if self.client is None:
            if items:
                yield Shard(stage, 0, 1, 0, len(items), what), list(fn(items))
            return
        bounds = shard_bounds(len(items), self.workers, self.settings.shard_size, multiple_of)
        shards = [
            Shard(stage, i, len(bounds), start, stop, what,
                  name(items[start]) if name else "", name(items[stop - 1]) if name else "")
            for i, (start, stop) in enumerate(bounds)
        ]
        run = uuid.uuid4().hex[:8]
        futures = [
            self.client.submit(_run_shard, fn, shard.index, items[shard.start:shard.stop], os.getcwd(),
                               key=f"{stage}-{run}-shard-{shard.index}", retries=self.settings.retries, pure=False)
            for shard in shards
        ]
        log.info("%s: %d %s in %d shard(s) on %d worker(s)", stage, len(items), what, len(shards), self.workers)
        seen: set[int] = set()
        try:
            for shard, future in zip(shards, futures, strict=True):
                try:
                    index, count, results = future.result()
                except Exception as exc:
                    named = [name(item) for item in items[shard.start:shard.stop]] if name else []
                    raise ShardFailed(stage, shard, self.settings.retries + 1, exc, named) from exc
                expected = shard.stop - shard.start
                if index != shard.index or index in seen or count != expected or (
                        per_item and len(results) != expected):
                    raise StageFailed(stage, f"{shard.describe()}: gathered shard {index} with {len(results)} "
                                             f"result(s) for {count} item(s), expected {expected}; not merged")
                if same is not None:
                    strays = [i for i, (item, result) in enumerate(zip(items[shard.start:shard.stop], results,
                                                                       strict=True)) if not same(item, result)]
                    if strays:
                        raise StageFailed(stage, f"{shard.describe()}: {len(strays)} gathered result(s) do not belong "
                                                 f"to their item (first at item {shard.start + strays[0]}); not merged")
                seen.add(index)
                future.release()
                yield shard, results
        finally:
            for future in futures:
                future.cancel()

    def run_on_workers(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once in every worker (e.g. assign devices); nothing in-process."""
        if self.client is not None:
            self.client.run(fn, *args)


@contextlib.contextmanager
def fanout(settings: ParallelParams, stage: str = "") -> Iterator[FanOut]:
    """A :class:`FanOut` for ``settings`` (``params.parallel``): in-process, a local cluster, or a remote one.

    A local cluster is closed on exit; a remote one is only disconnected from.
    """
    if settings.address is None and settings.workers <= 1:
        yield FanOut(settings)
        return
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if settings.address is not None:
            log.info("%s: connecting to the Dask scheduler at %s", stage, settings.address)
            try:
                client = stack.enter_context(Client(settings.address, timeout=settings.connect_timeout_s,
                                                    set_as_default=False))
            except OSError as exc:
                raise StageFailed(stage or "parallel", f"cannot reach the Dask scheduler at parallel.address="
                                  f"{settings.address!r} ({exc}); start it or set parallel.address: null") from None
        else:
            cluster = stack.enter_context(local_cluster(settings.workers, settings.threads_per_worker,
                                                        settings.memory_limit))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        yield FanOut(settings, client)


def local_cluster(workers: int, threads_per_worker: int = 1, memory_limit: str = "auto") -> Any:
    """A Dask ``LocalCluster`` of ``workers`` processes on this machine: listening on 127.0.0.1 only, no
    dashboard (the scheduler's small HTTP endpoint takes a free local port), worker logs at WARNING."""
    from distributed import LocalCluster

    # Dask's nannies write their workers' environment (OMP/MKL/OPENBLAS_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_) into
    # this process's os.environ and leave it there; every later subprocess of the stage would inherit one BLAS
    # thread (and compute differently from this process). The workers get it at spawn time regardless.
    environ = dict(os.environ)
    try:
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            host="127.0.0.1", dashboard_address=None, memory_limit=memory_limit,
                            silence_logs=logging.WARNING, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    finally:
        os.environ.clear()
        os.environ.update(environ)


def worker_index() -> int | None:
    """This Dask worker's position among the cluster's workers sorted by name (None outside a worker)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    name = worker.name
    return int(name) if isinstance(name, int) or (isinstance(name, str) and name.isdigit()) else None
