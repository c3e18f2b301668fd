"""A stage-shaped toy target for the torchrun launch test (imported by path inside the child processes)."""

from __future__ import annotations

from pathlib import Path

import torch

from anomaly_ov.train import common


class _Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 3, generator=gen)
        self.y = self.x.sum(1)

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def run(params, workspace: Path) -> dict:
    info = common.dist_info()
    device = common.select_device("cpu")
    common.seed_everything(params.train.seed)
    model = common.wrap_distributed(torch.nn.Linear(3, 1), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = common.LoopSettings(epochs=2, batch_size=4, seed=0, checkpoint_dir=Path(workspace) / "ckpt",
                                   checkpoint_every=2, fingerprint="ddp", progress=False, grad_accum=2)
    micro_synced: list[bool] = []

    def step(m, batch):
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        if grads and info.distributed:  # the second micro-step of a group: the gradient so far is the first one's
            flat = torch.cat([g.flatten() for g in grads])
            parts = [torch.zeros_like(flat) for _ in range(info.world_size)]
            torch.distributed.all_gather(parts, flat)
            micro_synced.append(all(torch.equal(parts[0], q) for q in parts))
        x, y = batch
        return common.StepOutput(torch.nn.functional.mse_loss(m(x).squeeze(-1), y), len(x))

    result = common.run_loop(model, opt, None, _Data(), None, step, settings)
    weights = torch.cat([p.detach().flatten() for p in common.unwrap(model).parameters()])
    (Path(workspace) / f"rank{info.rank}.pt").write_bytes(b"")
    torch.save(weights, Path(workspace) / f"rank{info.rank}.pt")
    return {"steps": result.step, "world_size": info.world_size, "loss_last": result.history[-1]["loss"],
            "micro_steps_checked": len(micro_synced), "micro_steps_synced": sum(micro_synced)}
