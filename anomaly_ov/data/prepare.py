"""The ``prepare`` stage: (re)generate the synthetic data when enabled, read every source, write the manifest.

DVC decides whether the stage is stale; when it runs, the generator always rebuilds its folder (into a temporary
folder swapped into place), so the output depends only on params and seed. Sources are read in params order and
concatenated; an image listed twice (same root and path) stops the stage.

Extension point: :data:`GENERATORS` lists functions ``(params, workspace) -> dict`` run before the sources are
read (the industrial generator by default); :func:`sources_for` lists the sources that are read. The medical
and 3D extensions add theirs there when they join training.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.config import Params, SourceParams, SyntheticParams
from anomaly_ov.errors import StageFailed
from anomaly_ov.paths import in_workspace

if TYPE_CHECKING:
    from anomaly_ov.parallel import FanOut

Summary = dict[str, Any]


def generate_synthetic(params: Params, workspace: Path) -> Summary:
    """Run the industrial generator when ``data.synthetic.enabled``; return its summary (empty when off).

    With ``params.parallel`` set to more than one worker (or a cluster address), the images are rendered on the
    Dask workers in shards of the generator's images (:func:`prerendered`) and written here as today."""
    synthetic = params.data.synthetic
    if not synthetic.enabled:  # still a declared DVC output of prepare: present (empty), or `dvc repro` fails
        in_workspace(workspace, synthetic.out_dir).mkdir(parents=True, exist_ok=True)
        return {}
    from anomaly_ov.data.synthetic import generate_industrial
    from anomaly_ov.parallel import fanout

    with fanout(params.parallel, "prepare") as fan, prerendered(synthetic, params.seed, fan):
        return generate_industrial(synthetic, in_workspace(workspace, synthetic.out_dir), params.seed)


SampleKey = tuple[str, int, int, str, int, "str | None"]


def sample_plan(synthetic: SyntheticParams, seed: int) -> list[SampleKey]:
    """Every image the industrial generator draws, as ``make_sample`` arguments ``(category, size, seed, part,
    index, defect)``, in the order it writes them (training categories in MVTec layout, then evaluation ones)."""
    from anomaly_ov.data.synthetic import defects_for

    size = synthetic.image_size
    keys: list[SampleKey] = []
    for categories, normals, anomalies in (
        (synthetic.train_categories, synthetic.training_normals_per_category or synthetic.train_normal_per_category,
         synthetic.training_anomalies_per_category or synthetic.test_anomaly_per_category),
        (synthetic.eval_categories, synthetic.train_normal_per_category, synthetic.test_anomaly_per_category),
    ):
        for category in categories:
            defects = defects_for(synthetic, category)
            keys += [(category, size, seed, "train_good", i, None) for i in range(normals)]
            keys += [(category, size, seed, "test_good", i, None) for i in range(synthetic.test_normal_per_category)]
            keys += [(category, size, seed, "test_anomaly", i, defects[i % len(defects)]) for i in range(anomalies)]
    return keys


def render_samples(keys: list[SampleKey]) -> list[Any]:
    """Worker side: ``make_sample`` for each key (BLAS on one thread, as the generator runs it)."""
    from anomaly_ov.data.synthetic import _single_threaded_blas, make_sample

    with _single_threaded_blas():
        return [make_sample(*key) for key in keys]


@contextlib.contextmanager
def prerendered(synthetic: SyntheticParams, seed: int, fan: FanOut) -> Iterator[None]:
    """While open, the generator's ``make_sample`` takes its images from ``fan``'s workers.

    Each image depends only on its key (seed, category, part, index, defect), so an image rendered on a worker is
    the one the generator would draw itself; the generator still writes every file, in its order. The renders
    are requested in :func:`sample_plan` order, which is the order the generator asks for them, and each is
    dropped once used; an image the plan does not list is drawn in-process. In-process ``fan``: nothing changes.
    """
    if not fan.distributed:
        yield
        return
    from unittest import mock

    from anomaly_ov.data import synthetic as generator

    keys = sample_plan(synthetic, seed)
    shards = fan.map("prepare", render_samples, keys, name=lambda k: f"{k[0]}/{k[3]}/{k[4]}", what="images")
    planned, ready = set(keys), dict[tuple[Any, ...], Any]()
    draw = generator.make_sample

    def lookup(category: str, size: int, seed: int, part: str, index: int, defect: str | None = None) -> Any:
        key = (category, size, seed, part, index, defect)
        if key not in planned:
            return draw(*key)
        while key not in ready:
            shard, results = next(shards)
            ready.update(zip(keys[shard.start:shard.stop], results, strict=True))
        planned.discard(key)
        return ready.pop(key)

    with mock.patch.object(generator, "make_sample", lookup):
        try:
            yield
        finally:
            shards.close()


#: name -> generator run (in order) before the sources are read.
GENERATORS: dict[str, Callable[[Params, Path], Summary]] = {"synthetic": generate_synthetic}


def sources_for(params: Params) -> list[SourceParams]:
    """The sources the manifest is built from (``data.sources``)."""
    return list(params.data.sources)


#: Written by the ``sources`` stage, a dependency of ``prepare`` in dvc.yaml (keep the two in sync).
SOURCES_FINGERPRINT = "data/sources.fingerprint.json"


def run_sources(params: Params, workspace: Path) -> Summary:
    """Stage ``sources``: a content hash of every dataset in ``data.sources`` -> :data:`SOURCES_FINGERPRINT`.

    Sources may live outside the workspace (``/data/mvtec``), where DVC does not look, so ``prepare`` would not
    notice new or fixed images there. This stage is ``always_changed`` in dvc.yaml: it re-hashes every source on
    each ``dvc repro`` and rewrites the file only in content when the data changed, which is what makes
    ``prepare`` stale. Hashes are of file contents (an image fixed in place with the same size and mtime counts),
    streamed, in a thread pool: about the disk's read speed. Sources inside the synthetic generator's folder are
    ``prepare``'s own output (DVC tracks them) and are listed without a hash.
    """
    from anomaly_ov.io import atomic_write_json, tree_digest

    workspace = Path(workspace)
    synthetic = params.data.synthetic
    generated = in_workspace(workspace, synthetic.out_dir).resolve() if synthetic.enabled else None
    entries: dict[str, dict[str, Any]] = {}
    for source in sources_for(params):
        root = in_workspace(workspace, source.path).resolve()
        entry: dict[str, Any] = {"path": source.path}
        if generated is not None and root.is_relative_to(generated):
            entry["generated_by_prepare"] = True
        elif not root.exists():
            entry["missing"] = True  # prepare will stop with the reader's message
        else:
            entry.update(tree_digest(root))
        entries[source.name] = entry
    atomic_write_json(in_workspace(workspace, SOURCES_FINGERPRINT), {"sources": entries})
    hashed = [e for e in entries.values() if "sha256" in e]
    return {"sources": len(entries), "hashed_sources": len(hashed), "files": sum(e["files"] for e in hashed),
            "bytes": sum(e["bytes"] for e in hashed), "fingerprint": SOURCES_FINGERPRINT}


def run_prepare(params: Params, workspace: Path) -> Summary:
    """Generate, read every source, check uniqueness and write ``data.manifest``; return counts and timings."""
    import pandas as pd

    from anomaly_ov.data.manifest import empty_manifest, write_manifest
    from anomaly_ov.data.sources import LayoutError, read_source

    workspace = Path(workspace)
    started = time.perf_counter()
    generated: dict[str, Summary] = {}
    for name, generator in GENERATORS.items():
        result = generator(params, workspace)
        if result:
            generated[name] = result
    generator_seconds = time.perf_counter() - started

    sources = sources_for(params)
    if not sources:
        raise StageFailed("prepare", "data.sources is empty; list at least one dataset in params.yaml")
    frames = []
    per_source: dict[str, int] = {}
    for source in sources:
        try:
            frame = read_source(source, workspace)
        except LayoutError as exc:
            raise StageFailed("prepare", f"source {source.name!r} ({source.format} at {source.path}): {exc}") from exc
        if frame.empty:
            raise StageFailed("prepare", f"source {source.name!r} ({source.format} at {source.path}) has no images")
        per_source[source.name] = len(frame)
        frames.append(frame)
    from anomaly_ov.data.extensions import extension_sources  # medical / 3D training sets (role train)

    for frame in extension_sources(params, workspace):
        per_source.update({str(k): int(v) for k, v in frame.groupby("source").size().items()})
        frames.append(frame)
    manifest = pd.concat(frames, ignore_index=True) if frames else empty_manifest()

    dupes = manifest[manifest.duplicated(["root", "image_path"], keep=False)]
    if len(dupes):
        first = dupes.iloc[0]
        owners = sorted(set(dupes["source"]))
        raise StageFailed(
            "prepare",
            f"{len(dupes)} manifest rows repeat an image (root, image_path), e.g. {first['root']}/{first['image_path']}"
            f" from sources {owners}; two sources point at the same files: remove one or narrow its categories",
        )
    target = in_workspace(workspace, params.data.manifest)
    write_manifest(manifest, target)

    summary: Summary = {
        "rows": len(manifest),
        "images_train_role": int((manifest["role"] == "train").sum()),
        "images_eval_role": int((manifest["role"] == "eval").sum()),
        "anomalies": int((manifest["label"] == "anomaly").sum()),
        "normals": int((manifest["label"] == "normal").sum()),
        "per_source": per_source,
        "per_role_label": {
            f"{role}/{label}": int(n) for (role, label), n in manifest.groupby(["role", "label"]).size().items()
        },
        "categories": {
            role: sorted(set(manifest.loc[manifest["role"] == role, "category"])) for role in ("train", "eval")
        },
        "manifest": str(params.data.manifest),
        "generator_seconds": round(generator_seconds, 3),
        "prepare_seconds": round(time.perf_counter() - started, 3),
    }
    if generated:
        summary["generated"] = {name: _small(result) for name, result in generated.items()}
    return summary


def _small(result: Summary) -> Summary:
    """Keep a generator summary JSON-able and short (drop per-image details)."""
    return {k: v for k, v in result.items() if k in ("images", "seconds", "per_category", "out_dir", "images_per_s")}
