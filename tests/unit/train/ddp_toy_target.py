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
                                   checkpoint_every=2, fingerprint="ddp", progress=False)

    def step(m, batch):
        x, y = batch
        return common.StepOutput(torch.nn.functional.mse_loss(m(x).squeeze(-1), y), len(x))

    result = common.run_loop(model, opt, None, _Data(), None, step, settings)
    weights = torch.cat([p.detach().flatten() for p in common.unwrap(model).parameters()])
    (Path(workspace) / f"rank{info.rank}.pt").write_bytes(b"")
    torch.save(weights, Path(workspace) / f"rank{info.rank}.pt")
    return {"steps": result.step, "world_size": info.world_size, "loss_last": result.history[-1]["loss"]}
