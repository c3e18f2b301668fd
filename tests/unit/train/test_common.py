"""The generic loop: exact resume after a kill, divergence handling, data order, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomaly_ov.train import common


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int = 40) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))


def _step(model, batch) -> common.StepOutput:
    x, y = batch
    loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
    return common.StepOutput(loss=loss, items=len(x))


class _Kill(Exception):
    pass


def _train(ckpt: Path, kill_after: int | None = None, nan_after: int | None = None, epochs: int = 3,
           grad_accum: int = 1):
    common.seed_everything(0)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3)
    settings = common.LoopSettings(epochs=epochs, batch_size=6, seed=3, checkpoint_dir=ckpt, checkpoint_every=4,
                                   grad_accum=grad_accum, fingerprint="toy", progress=False)

    def hook(step, record):
        if kill_after is not None and step == kill_after:
            raise _Kill()

    step_fn = _step
    if nan_after is not None:
        def step_fn(model, batch, _calls=[0]):  # noqa: B006 - counter shared across calls on purpose
            _calls[0] += 1
            out = _step(model, batch)
            if _calls[0] > nan_after:
                out.loss = out.loss * float("nan")
            return out

    result = common.run_loop(model, opt, sched, _Toy(), None, step_fn, settings, on_step_end=hook,
                             on_epoch_end=lambda e, m: {"val_loss": float(e)})
    return model, result


@pytest.mark.parametrize("kill_after,grad_accum", [(6, 1), (9, 1), (7, 2)])
def test_kill_and_resume_gives_identical_weights(tmp_path: Path, kill_after: int, grad_accum: int) -> None:
    reference, ref_result = _train(tmp_path / "a", grad_accum=grad_accum)
    with pytest.raises(_Kill):
        _train(tmp_path / "b", kill_after=kill_after, grad_accum=grad_accum)
    resumed, result = _train(tmp_path / "b", grad_accum=grad_accum)
    assert result.resumed_from_step is not None and result.resumed_from_step <= kill_after
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in result.history] == [h["loss"] for h in ref_result.history]
    assert len(result.epoch_metrics) == 3


def test_finished_run_is_not_retrained(tmp_path: Path) -> None:
    first, _ = _train(tmp_path)
    again, result = _train(tmp_path)
    assert result.resumed_from_step == result.step
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_changed_fingerprint_starts_afresh(tmp_path: Path) -> None:
    _train(tmp_path)
    ckpt = torch.load(tmp_path / common.CHECKPOINT_FILE, weights_only=True)
    ckpt["fingerprint"] = "other"
    torch.save(ckpt, tmp_path / common.CHECKPOINT_FILE)
    _, result = _train(tmp_path)
    assert result.resumed_from_step is None


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(common.TrainingDiverged, match="diverged at step 10") as info:
        _train(tmp_path, nan_after=9)
    assert info.value.checkpoint == tmp_path / common.CHECKPOINT_FILE
    ckpt = torch.load(info.value.checkpoint, weights_only=True)
    assert ckpt["step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not list(tmp_path.glob(".last.pt*")), "no temporary files left behind"


def test_epoch_batches_cover_each_item_once_and_shard_by_rank() -> None:
    one = common.epoch_batches(10, 3, seed=5, epoch=2)
    assert sorted(i for b in one for i in b) == list(range(10))
    assert one == common.epoch_batches(10, 3, seed=5, epoch=2)
    assert one != common.epoch_batches(10, 3, seed=5, epoch=3)
    shards = [common.epoch_batches(10, 3, seed=5, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == common.batches_per_epoch(10, 3, world_size=2)
    assert set(i for s in shards for b in s for i in b) == set(range(10))


def test_length_grouped_batches_pad_less_and_keep_the_shuffle() -> None:
    lengths = [int(v) for v in torch.randint(5, 200, (300,), generator=torch.Generator().manual_seed(0))]
    plain = common.epoch_batches(300, 8, seed=1, epoch=0)
    grouped = common.epoch_batches(300, 8, seed=1, epoch=0, lengths=lengths)
    assert sorted(i for b in grouped for i in b) == list(range(300))
    assert [len(b) for b in grouped] == [len(b) for b in plain]

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.8 * padded(plain)
    assert grouped == common.epoch_batches(300, 8, seed=1, epoch=0, lengths=lengths)
    assert grouped != common.epoch_batches(300, 8, seed=1, epoch=1, lengths=lengths)
    with pytest.raises(ValueError, match="3 lengths for 300 items"):
        common.epoch_batches(300, 8, seed=1, epoch=0, lengths=[1, 2, 3])


def test_select_device_cpu_and_errors() -> None:
    assert common.select_device("cpu").type == "cpu"
    assert common.select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            common.select_device("cuda")


def test_plot_curves_writes_png(tmp_path: Path) -> None:
    _, result = _train(tmp_path / "c", epochs=1)
    png = common.plot_curves(result, tmp_path / "curves.png", "toy")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    summary = common.summarise_history(result, window=2)
    assert summary["loss_last"] > 0


def test_checkpoint_loads_weights_only_and_refuses_pickled_objects(tmp_path: Path) -> None:
    """The whole resume state (numpy RNG included) is tensors and plain values; a checkpoint that would run
    code on load (a pickled object) is refused with a message that says what to do."""
    _train(tmp_path, epochs=1)
    state = torch.load(tmp_path / common.CHECKPOINT_FILE, weights_only=True)  # old code: numpy state -> error
    assert state["step"] == 7
    torch.save({**state, "evil": _Toy(2)}, tmp_path / common.CHECKPOINT_FILE)
    with pytest.raises(RuntimeError, match="unreadable checkpoint.*delete it"):
        common.load_checkpoint(tmp_path)


def test_data_fingerprint_sees_an_in_place_fix_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    import os

    files = [tmp_path / f"m{i}.png" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 4096)
    before = common.data_fingerprint(files, tmp_path)
    stat = files[1].stat()
    files[1].write_bytes(b"\x07" + bytes([1]) * 4095)  # same size
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime (cp -p, a restore)
    assert common.data_fingerprint(files, tmp_path) != before
    # named relative to the root: the same data in another folder has the same fingerprint
    other = tmp_path / "copy"
    other.mkdir()
    for f in files:
        (other / f.name).write_bytes(f.read_bytes())
    assert common.data_fingerprint(files, tmp_path) == common.data_fingerprint(list(other.iterdir()), other)
    # more data is other data
    assert common.data_fingerprint(files[:2], tmp_path) != common.data_fingerprint(files, tmp_path)


def test_file_signature_hashes_beyond_the_first_8_mib(tmp_path: Path) -> None:
    big = tmp_path / "train.json"
    big.write_bytes(b"a" * (9 << 20))
    before = common.file_signature(big)
    with big.open("r+b") as fh:
        fh.seek((9 << 20) - 1)
        fh.write(b"b")
    assert common.file_signature(big) != before


def test_remove_checkpoints_clears_every_phase(tmp_path: Path) -> None:
    _train(tmp_path, epochs=1)
    _train(tmp_path / "text_warmup", epochs=1)
    common.remove_checkpoints(tmp_path)
    assert not list(tmp_path.rglob(common.CHECKPOINT_FILE))
    _, result = _train(tmp_path, epochs=1)
    assert result.resumed_from_step is None
