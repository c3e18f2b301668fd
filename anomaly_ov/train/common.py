"""Shared training machinery: devices, seeding, reproducible data order, atomic checkpoints with exact resume,
divergence detection, progress bars, MLflow logging and training curves.

Both stages run through :func:`run_loop`. Its contract: a stage killed at any point and re-run with the same
params continues from the last checkpoint and ends with the *same* weights as an uninterrupted run (same seed,
same device). That works because

* the data order of epoch ``e`` is a permutation drawn from ``seed + e`` (not from a shared RNG stream), so the
  resumed run rebuilds it and skips the batches already consumed, without loading them;
* the checkpoint holds the weights, optimiser, scheduler, the python / numpy / torch RNG states, the step and
  the position (epoch, next batch) and the metric history;
* checkpoints are written atomically (``anomaly_ov.io``), so a kill during a save leaves the previous one intact.

A non-finite loss stops the run with :class:`TrainingDiverged` *before* the optimiser step, so the last good
checkpoint on disk is the newest one. Distributed runs (``torchrun``) shard every epoch's permutation by rank;
only rank 0 writes checkpoints, logs to MLflow and draws progress bars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_ov.errors import AnomalyOVError, StageFailed

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"


class TrainingDiverged(AnomalyOVError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept on disk."""

    exit_code = StageFailed.exit_code

    def __init__(self, step: int, loss: float, checkpoint: Path | None) -> None:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"training diverged at step {step}: loss is {loss}; {where}. Lower the learning rate "
            "(train.*.lr), enable gradient clipping, or check the inputs of this batch."
        )
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint


# ------------------------------------------------------------------------------------------- devices / ranks
def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is not available is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.*.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", dist_info().local_rank % max(torch.cuda.device_count(), 1))
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.*.device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size from the environment ``torchrun`` sets (single process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    info = dist_info()
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_dicts(local: Mapping[Any, Any]) -> dict[Any, Any]:
    """The union of every rank's ``local`` dict (picklable values), the same on every rank; a copy when single."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(local))
    merged: dict[Any, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


def wrap_distributed(model: Any, device: torch.device) -> Any:
    """DistributedDataParallel around ``model`` when running under torchrun (the model itself otherwise)."""
    if not dist_info().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    init_distributed(device)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: Any) -> Any:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


# ------------------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as a tensor and plain numbers: checkpoints load with torch.load(weights_only=True)
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, Mapping):
        ns = (ns["name"], ns["keys"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"], ns["cached_gaussian"])
    np.random.set_state(ns)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- data order
def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of epoch ``epoch``: a permutation drawn from its own generator (seed, epoch)."""
    import torch

    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen).tolist()


#: batches per length group (see ``epoch_batches``)
LENGTH_GROUP_BATCHES = 8


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True, drop_last: bool = False,
    rank: int = 0, world_size: int = 1, lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """Index batches of one epoch for one rank (the permutation is padded so every rank gets as many batches).

    With ``lengths`` (one per item), each run of ``LENGTH_GROUP_BATCHES`` batches of the permutation is sorted by
    length before it is cut into batches, so a batch pads to a similar length (as transformers' length-grouped
    sampler): the same batch count, still a seeded shuffle, far less padding for text of mixed lengths.
    """
    order = epoch_permutation(n, seed, epoch, shuffle)
    if world_size > 1:
        total = math.ceil(n / world_size) * world_size
        order = (order + order[: total - n]) if total > n else order
        order = order[rank::world_size]
    if lengths is not None:
        if len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} items")
        group = batch_size * LENGTH_GROUP_BATCHES
        order = [i for g in range(0, len(order), group)
                 for i in sorted(order[g : g + group], key=lambda i: -lengths[i])]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def batches_per_epoch(n: int, batch_size: int, *, drop_last: bool = False, world_size: int = 1) -> int:
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def steps_per_epoch(n: int, batch_size: int, grad_accum: int = 1, *, drop_last: bool = False,
                    world_size: int = 1) -> int:
    """Optimiser steps in one epoch (a trailing partial accumulation group still makes a step)."""
    return math.ceil(batches_per_epoch(n, batch_size, drop_last=drop_last, world_size=world_size) / grad_accum)


def make_loader(dataset: Any, batch_indices: Sequence[Sequence[int]], collate: Callable | None,
                num_workers: int, seed: int, epoch: int) -> Any:
    """A DataLoader over precomputed index batches (worker seeds are fixed by (seed, epoch))."""
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(int(seed) * 7919 + int(epoch))
    return DataLoader(dataset, batch_sampler=list(batch_indices), collate_fn=collate, num_workers=num_workers,
                      generator=gen, persistent_workers=False)


# ---------------------------------------------------------------------------------------------- checkpoints
def fingerprint(*parts: Any) -> str:
    """Short hash identifying a training run's inputs; a checkpoint is only resumed when it matches."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's whole content (see :func:`anomaly_ov.io.file_digest`)."""
    from anomaly_ov.io import file_digest as digest

    return digest(path)


def file_signature(path: str | Path) -> str:
    """Identity of an input file: its size and the hash of its whole content."""
    path = Path(path)
    if not path.exists():
        return "missing"
    return f"{path.stat().st_size}:{file_digest(path)[:16]}"


def data_fingerprint(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One short hash over the content of every file in ``paths`` (named relative to ``root`` when under it).

    This is what a training stage reads (images, masks, the stage-1 output), so a checkpoint is only resumed for
    the very same data: a mask fixed in place (same size, even same mtime) starts the stage afresh.
    """
    from anomaly_ov.io import content_digest

    return content_digest(paths, root)[:16]


def remove_checkpoints(directory: str | Path) -> None:
    """Delete the resume state under ``directory`` (every ``last.pt``) once the stage's outputs are written.

    A finished checkpoint kept on disk would be resumed by the next run of the stage as "already done"; the
    outputs are the result now, and the next run (new data, ``--force``) trains afresh.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for ckpt in sorted(directory.rglob(CHECKPOINT_FILE)):
        ckpt.unlink(missing_ok=True)


def model_state(model: Any, trainable_only: bool) -> dict[str, Any]:
    """Weights to checkpoint: everything, or only trainable parameters plus buffers (frozen weights are rebuilt)."""
    module = unwrap(model)
    state = module.state_dict()
    if not trainable_only:
        return state
    keep = {name for name, p in module.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in module.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


def save_checkpoint(directory: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``directory/last.pt`` atomically."""
    import torch

    from anomaly_ov.io import atomic_path

    target = Path(directory) / CHECKPOINT_FILE
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(dict(payload), tmp)
    return target


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` (None when there is none); a corrupt file is an error that says what to do."""
    import torch

    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        # weights only: tensors and plain containers/numbers (no pickled objects, so no code runs on load)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a pickled object: not written by this code, maybe tampered with
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise RuntimeError(f"{path}: unreadable checkpoint (it holds objects other than tensors and plain values: "
                           f"{detail or 'refused by weights-only loading'}); delete it to start the stage afresh"
                           ) from None
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise RuntimeError(f"{path}: unreadable checkpoint ({exc}); delete it to start the stage afresh") from exc


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class StepOutput:
    """What a stage's step function returns for one micro-batch."""

    loss: Any  # scalar tensor with grad
    items: int  # images or tokens in the batch (for throughput)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int
    seed: int
    checkpoint_dir: Path
    checkpoint_every: int
    grad_accum: int = 1
    max_grad_norm: float | None = None
    drop_last: bool = False
    num_workers: int = 0
    log_every: int = 1
    desc: str = "train"
    items_name: str = "images"
    fingerprint: str = ""
    trainable_only_checkpoint: bool = True
    progress: bool = True
    log_prefix: str = "train"  # MLflow metric prefix (a second loop of the same stage logs under its own)
    lengths: Sequence[int] | None = None  # per item: batch items of similar length together (see epoch_batches)


@dataclass
class LoopResult:
    step: int
    history: list[dict[str, float]]
    epoch_metrics: list[dict[str, float]]
    seconds: float
    items: int
    resumed_from_step: int | None

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def last(self, key: str, window: int = 1) -> float | None:
        values = [h[key] for h in self.history if key in h]
        if not values:
            return None
        tail = values[-window:]
        return float(sum(tail) / len(tail))


StepFn = Callable[[Any, Any], StepOutput]
EpochEndFn = Callable[[int, Any], Mapping[str, float]]
StepHook = Callable[[int, Mapping[str, float]], None]


def run_loop(
    model: Any,
    optimizer: Any,
    scheduler: Any | None,
    dataset: Any,
    collate: Callable | None,
    step_fn: StepFn,
    settings: LoopSettings,
    *,
    on_epoch_end: EpochEndFn | None = None,
    on_step_end: StepHook | None = None,
) -> LoopResult:
    """Train ``model`` for ``settings.epochs`` epochs, resuming from ``settings.checkpoint_dir`` when possible.

    ``step_fn(model, batch)`` computes the loss of one micro-batch (the loop calls backward, clipping, the
    optimiser and the scheduler step). ``on_epoch_end(epoch, model)`` may return validation metrics; they are
    logged and kept in the history. ``on_step_end(step, metrics)`` runs after each optimiser step (and after
    a checkpoint due at that step was written).
    """
    import torch

    from anomaly_ov import tracking

    info = dist_info()
    ckpt_dir = Path(settings.checkpoint_dir)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{settings.desc}: the training set is empty")
    n_batches = batches_per_epoch(n, settings.batch_size, drop_last=settings.drop_last, world_size=info.world_size)
    if n_batches == 0:
        raise ValueError(f"{settings.desc}: {n} items make no full batch of {settings.batch_size} (drop_last)")
    per_epoch = steps_per_epoch(n, settings.batch_size, settings.grad_accum, drop_last=settings.drop_last,
                                world_size=info.world_size)
    total_steps = per_epoch * settings.epochs

    step, epoch, next_batch = 0, 0, 0
    history: list[dict[str, float]] = []
    epoch_metrics: list[dict[str, float]] = []
    resumed_from: int | None = None
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt is not None and ckpt.get("fingerprint") != settings.fingerprint:
        if info.is_main:
            log.warning("%s: checkpoint in %s belongs to other inputs/params; starting afresh", settings.desc, ckpt_dir)
        ckpt = None
    if ckpt is not None:
        missing = set(model_state(model, settings.trainable_only_checkpoint)) - set(ckpt["model"])
        if missing:
            raise RuntimeError(f"{ckpt_dir / CHECKPOINT_FILE}: checkpoint lacks weights {sorted(missing)[:5]}; "
                               "delete it to start afresh")
        unwrap(model).load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step, epoch, next_batch = ckpt["step"], ckpt["epoch"], ckpt["next_batch"]
        history, epoch_metrics = list(ckpt["history"]), list(ckpt["epoch_metrics"])
        resumed_from = step
        if info.is_main:
            log.info("%s: resuming from step %d (epoch %d, batch %d)", settings.desc, step, epoch, next_batch)

    last_good: Path | None = ckpt_dir / CHECKPOINT_FILE if ckpt is not None else None

    def checkpoint() -> None:
        nonlocal last_good
        if info.is_main:
            last_good = save_checkpoint(ckpt_dir, {
                "fingerprint": settings.fingerprint,
                "model": model_state(model, settings.trainable_only_checkpoint),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": get_rng_state(),
                "step": step, "epoch": epoch, "next_batch": next_batch,
                "history": history, "epoch_metrics": epoch_metrics,
            })
        barrier()

    progress = _Progress(settings.desc, total_steps, step, enabled=settings.progress and info.is_main)
    started = time.perf_counter()
    items_done = 0
    window_items, window_t = 0, time.perf_counter()
    model.train()
    try:
        while epoch < settings.epochs:
            batches = epoch_batches(n, settings.batch_size, settings.seed, epoch, drop_last=settings.drop_last,
                                    rank=info.rank, world_size=info.world_size, lengths=settings.lengths)
            first = next_batch
            loader = make_loader(dataset, batches[first:], collate, settings.num_workers, settings.seed, epoch)
            accum_loss, accum_metrics, accum_n = 0.0, {}, 0
            for offset, batch in enumerate(loader):
                b = first + offset
                out = step_fn(model, batch)
                loss_value = float(out.loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(step + 1, loss_value, last_good)
                (out.loss / settings.grad_accum).backward()
                accum_loss += loss_value
                accum_n += 1
                for key, value in out.metrics.items():
                    accum_metrics[key] = accum_metrics.get(key, 0.0) + float(value)
                items_done += out.items
                window_items += out.items
                end_of_epoch = b + 1 == len(batches)
                if accum_n < settings.grad_accum and not end_of_epoch:
                    continue
                if settings.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], settings.max_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                now = time.perf_counter()
                record = {
                    "step": float(step), "epoch": epoch + (b + 1) / len(batches),
                    "loss": accum_loss / accum_n, "lr": float(optimizer.param_groups[0]["lr"]),
                    f"{settings.items_name}_per_s": window_items / max(now - window_t, 1e-9),
                    **{k: v / accum_n for k, v in accum_metrics.items()},
                }
                window_items, window_t = 0, now
                history.append(record)
                accum_loss, accum_metrics, accum_n = 0.0, {}, 0
                if info.is_main and (step % settings.log_every == 0 or step == total_steps):
                    tracking.log_metrics({k: v for k, v in record.items() if k != "step"}, step=step,
                                         prefix=settings.log_prefix)
                progress.advance(record["loss"])
                if end_of_epoch:
                    model.eval()
                    with torch.no_grad():
                        val = dict(on_epoch_end(epoch, model) or {}) if on_epoch_end else {}
                    model.train()
                    epoch_metrics.append({"epoch": float(epoch + 1), "step": float(step), **val})
                    if info.is_main and val:
                        tracking.log_metrics(val, step=step, prefix="val")
                    epoch, next_batch = epoch + 1, 0
                else:
                    next_batch = b + 1
                if step % settings.checkpoint_every == 0 or step == total_steps:
                    checkpoint()
                if on_step_end is not None:
                    on_step_end(step, record)
            if next_batch != 0:  # the loader ended early (can only happen when batches were skipped oddly)
                epoch, next_batch = epoch + 1, 0
    finally:
        progress.close()
    return LoopResult(step=step, history=history, epoch_metrics=epoch_metrics,
                      seconds=time.perf_counter() - started, items=items_done, resumed_from_step=resumed_from)


class _Progress:
    """A rich progress bar with ETA on a terminal; without one (a DVC stage inside a Prefect flow, CI logs) a plain
    line about every 10 % of the steps, so a long training stage is never silent in the flow's log."""

    def __init__(self, desc: str, total: int, done: int, enabled: bool) -> None:
        import sys
        import time

        self._bar = None
        self._plain = enabled and not sys.stdout.isatty()
        self._desc, self._total, self._done = desc, max(int(total), 1), int(done)
        self._every = max(self._total // 10, 1)
        self._started, self._start_step = time.perf_counter(), int(done)
        if not enabled or self._plain:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                             TimeRemainingColumn(), transient=False)
        self._task = self._bar.add_task(desc, total=total, completed=done, loss="-")
        self._bar.start()

    def advance(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, loss=f"{loss:.4f}")
        elif self._plain:
            self._done += 1
            if self._done % self._every == 0 or self._done == self._total:
                print(self._line(loss), flush=True)

    def _line(self, loss: float) -> str:
        import time

        elapsed = time.perf_counter() - self._started
        rate = (self._done - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self._total - self._done) / rate if rate > 0 else float("nan")
        return (f"{self._desc}: step {self._done}/{self._total} loss {loss:.4f} "
                f"elapsed {elapsed:.0f}s ETA {eta:.0f}s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ------------------------------------------------------------------------------------------------ reporting
def plot_curves(result: LoopResult, target: Path, title: str, keys: Sequence[str] = ("loss", "lr")) -> Path | None:
    """Training curves (per-step keys and per-epoch validation metrics) as a PNG, written atomically."""
    if not result.history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anomaly_ov.io import atomic_path

    val_keys = sorted({k for e in result.epoch_metrics for k in e if k not in ("epoch", "step")})
    panels = [k for k in keys if any(k in h for h in result.history)] + (["validation"] if val_keys else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    steps = [h["step"] for h in result.history]
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "validation":
            for vk in val_keys:
                pts = [(e["step"], e[vk]) for e in result.epoch_metrics if vk in e]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=vk)
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, [h.get(key, float("nan")) for h in result.history])
            if key == "loss":
                ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(target)


def summarise_history(result: LoopResult, window: int = 10) -> dict[str, float]:
    """First/last loss (mean over ``window`` steps) for reports."""
    losses = [h["loss"] for h in result.history]
    if not losses:
        return {}
    head, tail = losses[:window], losses[-window:]
    return {"loss_first": sum(head) / len(head), "loss_last": sum(tail) / len(tail), "loss_final_step": losses[-1]}
