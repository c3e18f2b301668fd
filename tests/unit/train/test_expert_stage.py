"""Stage 1 on a tiny model and a dozen images: outputs, report, exact resume after a kill, frozen parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anomaly_ov.train import common
from anomaly_ov.train import expert as stage1

from .conftest import count_expert_scorings, make_workspace, sigkill_stage_at, tiny_params  # noqa: TID252

#: stage 1 with a checkpoint every 3 steps: 8 training images, batch 2, 2 epochs = 8 steps (4 per epoch), so a kill
#: after step 4 lies between two checkpoints and mid-epoch; with the calibrated image score (an option), so the
#: SIGKILL test also compares the calibration the resumed run fits
STRAIGHT = ("train.expert.checkpoint_every=3", "train.expert.tiny.epochs=2", "train.expert.tiny.batch_size=2",
            "train.expert.tiny.validate_every=2", "model.expert.image_score=calibrated_fusion")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted stage-1 run: the workspace and its summary (read only). The output test reads it and the
    SIGKILL test takes it as the reference its killed run must reproduce."""
    ws = make_workspace(tmp_path_factory.mktemp("straight") / "ws")
    with pytest.MonkeyPatch.context() as patch:  # module scope: the function-scoped fixture is not available
        scorings = count_expert_scorings(patch)
        summary = stage1.run_train_expert(tiny_params(*STRAIGHT), ws)
    return ws, {**summary, "scorings": len(scorings)}


@pytest.mark.slow
def test_stage1_writes_expert_and_report(straight_run: tuple[Path, dict]) -> None:
    workspace, summary = straight_run
    assert summary["steps"] == 2 * 4  # 8 training images, batch 2, 2 epochs
    assert summary["val_images"] == 4
    assert summary["val_image_auroc"] is not None and 0 <= summary["val_image_auroc"] <= 1
    assert summary["loss_last"] > 0 and summary["images_per_s"] > 0
    out = workspace / "models/expert"
    assert {"pretrained_expert.pth", "expert.json", "vision_tower.safetensors"} <= {p.name for p in out.iterdir()}
    report = json.loads((workspace / "reports/train_expert.json").read_text())
    assert report["recipe"]["mask_loss"] is True and report["recipe"]["temperature"] == 10.0
    assert report["recipe"]["schedule"] == "one_cycle"  # the tiny recipe's; it ran to its last step without error
    # validate_every=2: the held-out rows are scored after the second epoch only
    assert len(report["epoch_metrics"]) == 2 and "pixel_auroc" not in report["epoch_metrics"][0]
    assert report["epoch_metrics"][1]["pixel_auroc"] is not None and report["recipe"]["validate_every"] == 2
    assert summary["scorings"] == 1  # the report's final figures are the second epoch's scoring, not a new one
    assert (workspace / "reports/train_expert_curves.png").exists()


@pytest.mark.slow
def test_stage1_validation_leaves_the_training_as_it_is(straight_run: tuple[Path, dict], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring the held-out rows after every other epoch or never trains the same weights, so ``validate_every``
    is a matter of time alone; and the report's final figures, which the straight run takes from its last epoch's
    scoring, are those of scoring the final weights once more."""
    straight, _ = straight_run
    scorings = count_expert_scorings(monkeypatch)
    never = make_workspace(tmp_path / "never")
    stage1.run_train_expert(tiny_params(*STRAIGHT, "train.expert.tiny.validate_every=3"), never)
    assert len(scorings) == 1  # no epoch's end scored (2 epochs, every 3rd): the stage scored the final weights
    report = json.loads((never / "reports/train_expert.json").read_text())
    assert not any("image_auroc" in e for e in report["epoch_metrics"])
    a, b = _weights(straight / "models/expert"), _weights(never / "models/expert")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    reference = json.loads((straight / "reports/train_expert.json").read_text())
    # the last epoch's scoring gave the predictor's figure; the calibration fit on those same scores
    assert reference["epoch_metrics"][-1]["image_auroc"] == reference["score_calibration"]["predictor_image_auroc"]
    assert report["val"] == reference["val"]  # per category too
    assert report["score_calibration"] == reference["score_calibration"]


@pytest.mark.slow
def test_stage1_calibrates_the_image_score_on_its_held_out_rows_and_saves_it(straight_run: tuple[Path, dict]
                                                                            ) -> None:
    """The ``calibrated_fusion`` score on the tiny preset: fit on the last epoch's scoring of the held-out rows (no
    extra pass), reported, and saved with the expert, whose reloaded scores on those rows are the reported ones."""
    from anomaly_ov.data.loaders import ExpertDataset, collate_expert
    from anomaly_ov.model.presets import build_expert_model, expert_config, load_expert_stage

    workspace, summary = straight_run
    params = tiny_params(*STRAIGHT)
    assert expert_config(params)["image_score"] == "calibrated_fusion"
    report = json.loads((workspace / "reports/train_expert.json").read_text())
    calibration = report["score_calibration"]
    assert calibration["calibrated"] is True and calibration["slope"] > 0 and calibration["images"] == 4
    assert summary["score_calibration"] == calibration
    assert report["val"]["image_auroc"] == calibration["image_auroc"] == summary["val_image_auroc"]
    assert calibration["predictor_image_auroc"] == report["epoch_metrics"][-1]["image_auroc"]

    model = build_expert_model(params)
    load_expert_stage(model, workspace / "models/expert")
    weights = model.anomaly_expert.score_calibration.tolist()
    assert weights == pytest.approx(calibration["weights"]) and weights != [1.0, 0.0, 0.0]
    _, held_out = stage1.split_training_rows(params, workspace)
    dataset = ExpertDataset(held_out, workspace, stage1.stage_preprocessor(params), int(model.config.grid_size),
                            params.evaluate.resolution)
    scored = stage1.score_images(stage1.stage_forward(torch.device("cpu")), stage1.ExpertStage(model, True),
                                 dataset, collate_expert, batch_size=4)
    assert scored.similarity is not None
    logit = torch.tensor(scored.logits) * weights[0] + torch.tensor(scored.similarity) * weights[1] + weights[2]
    torch.testing.assert_close(torch.tensor(scored.scores), torch.sigmoid(logit), atol=1e-6, rtol=0)
    assert stage1.expert_metrics(scored)["per_class"] == report["val"]["per_class"]


class _Killed(Exception):
    pass


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a stage-1 output (the expert and the vision tower)."""
    from safetensors.torch import load_file

    out = {f"expert.{k}": v for k, v in torch.load(directory / "pretrained_expert.pth").items()}
    tower = directory / "vision_tower.safetensors"
    assert tower.exists(), "the tiny recipe trains the tower: it must be part of the comparison"
    out.update({f"tower.{k}": v for k, v in load_file(tower).items()})
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_stage1_sigkill_between_checkpoints_resumes_to_identical_weights(straight_run: tuple[Path, dict],
                                                                         tmp_path: Path) -> None:
    """A real SIGKILL of the `anomaly-ov stage train_expert` process after step 4 (checkpoints at 3 and 6): the
    re-run resumes from step 3, mid-epoch, and ends with the uninterrupted run's (``straight_run``) weights, tower
    included."""
    params = tiny_params(*STRAIGHT)
    straight, reference = straight_run
    assert reference["steps"] == 8

    killed = make_workspace(tmp_path / "b")
    common.seed_everything(123)  # the re-run must not depend on this process's RNG state
    sigkill_stage_at("train_expert", killed, params, "train", 4)
    ckpt = torch.load(killed / "checkpoints/expert/last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["next_batch"]) == (3, 0, 3)
    assert not (killed / "models/expert").exists(), "no output before the stage completes"
    summary = stage1.run_train_expert(params, killed)
    assert summary["resumed_from_step"] == 3
    a, b = _weights(straight / "models/expert"), _weights(killed / "models/expert")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert summary["loss_last"] == reference["loss_last"]


def _kill_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real_loop = common.run_loop

    def loop(*args, **kwargs):
        def hook(s, record):
            if s == step:
                raise _Killed()
        kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    monkeypatch.setattr(common, "run_loop", loop)


@pytest.mark.slow
def test_stage1_mask_fixed_in_place_is_not_trained_on_stale_checkpoint(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask fixed in place (same size, same mtime) after a crash: the re-run must not resume the checkpoint made
    from the old mask, and a finished stage leaves no checkpoint behind for the next run to reuse."""
    import os

    import numpy as np
    from PIL import Image

    ws = make_workspace(tmp_path / "ws")
    # one epoch of 4 steps (batch 2), a checkpoint every step, killed at step 2 (mid-epoch)
    params = tiny_params("train.expert.checkpoint_every=1", "train.expert.tiny.epochs=1",
                         "train.expert.tiny.batch_size=2")
    _kill_at(2, monkeypatch)
    with pytest.raises(_Killed):
        stage1.run_train_expert(params, ws)
    monkeypatch.undo()
    assert (ws / "checkpoints/expert/last.pt").exists(), "the killed run left a checkpoint to resume"
    mask = next((ws / "data/raw").rglob("*_mask.png"))
    stat = mask.stat()
    fixed = np.asarray(Image.open(mask)).copy()
    fixed[:, :] = 0
    fixed[40:56, 40:56] = 255  # the defect is elsewhere
    Image.fromarray(fixed).save(mask)
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    summary = stage1.run_train_expert(params, ws)
    assert summary["resumed_from_step"] is None, "resumed a checkpoint trained on the old mask"
    assert not (ws / "checkpoints/expert/last.pt").exists(), "the finished checkpoint is left for the next run"
    again = stage1.run_train_expert(params, ws)
    assert again["resumed_from_step"] is None


@pytest.mark.slow
def test_frozen_tower_stays_unchanged_with_pretrained_style_recipe(tiny_workspace: Path) -> None:
    from anomaly_ov.data.loaders import ExpertDataset, collate_expert
    from anomaly_ov.model.presets import build_model, processor_for
    from anomaly_ov.model.processing import ImagePreprocessor
    from anomaly_ov.model.tokenizer import train_tokenizer

    params = tiny_params("train.expert.tiny.train_vision_tower=false", "train.expert.tiny.epochs=1")
    tok = train_tokenizer((), vocab_size=400)
    model = build_model(params, tokenizer=tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "anomaly_expert" not in n}
    expert_before = {n: p.detach().clone() for n, p in model.anomaly_expert.named_parameters()}
    rows, _ = stage1.split_training_rows(params, tiny_workspace)
    ds = ExpertDataset(rows, tiny_workspace, ImagePreprocessor(processor_for(model, tok).image_processor),
                       model.config.grid_size, 32)
    module = stage1.ExpertStage(model, base_view_only=False)
    stage1.fit_expert(module, stage1.stage_forward(torch.device("cpu")), list(model.anomaly_expert.parameters()),
                      ds, None, collate_expert, params.expert_recipe, seed=0,
                      checkpoint_dir=tiny_workspace / "ckpt", checkpoint_every=10, progress=False)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), f"{name} changed although frozen"
    assert any(not torch.equal(p, expert_before[n]) for n, p in model.anomaly_expert.named_parameters())


def test_a_128_px_image_scores_the_same_as_stage_1_trains_it_and_as_inference_runs_it() -> None:
    """The processor gives a 128 px image its base view and one AnyRes crop with the same pixels; the tiny recipe's
    stage 1 (``base_view_only``) runs the expert on the base view, evaluation and the LLM on both. The scores must
    agree, also where eps weighs (here 1.0, next to significance weights near 1; the tiny preset's 1e-6 weighs as much
    next to a confidently normal crop's 4e-7)."""
    import numpy as np
    from PIL import Image

    from anomaly_ov.model.presets import build_model, processor_for
    from anomaly_ov.model.processing import ImagePreprocessor
    from anomaly_ov.model.tokenizer import train_tokenizer

    tok = train_tokenizer((), vocab_size=400)
    model = build_model(tiny_params(), tokenizer=tok).eval()
    model.anomaly_expert.eps = 1.0
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(2)]
    preprocess = ImagePreprocessor(processor_for(model, tok).image_processor)
    items = [preprocess(image) for image in images]
    assert all(pv.shape[0] == 2 and torch.equal(pv[0], pv[1]) for pv, _ in items)  # base view + identical crop
    pixels = torch.cat([pv for pv, _ in items])
    sizes = torch.tensor([list(size) for _, size in items])
    with torch.no_grad():
        trained_as = stage1.ExpertStage(model, base_view_only=True)(pixels, sizes, [2, 2])
        inferred_as = model.expert_forward(pixels, sizes)
    torch.testing.assert_close(inferred_as.global_tokens, trained_as.global_tokens, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(inferred_as.scores, trained_as.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("base_view_only", [True, False])
def test_stage_module_keeps_the_score_loss_off_the_tower_when_the_recipe_says_so(base_view_only: bool) -> None:
    from anomaly_ov.model.presets import build_model
    from anomaly_ov.model.tokenizer import train_tokenizer

    model = build_model(tiny_params(), tokenizer=train_tokenizer((), vocab_size=400))
    pixels = torch.randn(4, 3, 128, 128)  # two 128 px images: a base view and one AnyRes crop each
    sizes = torch.tensor([[128, 128], [128, 128]])

    def tower_grad(score_loss_trains_maps: bool) -> float:
        model.zero_grad(set_to_none=True)
        module = stage1.ExpertStage(model, base_view_only, score_loss_trains_maps)
        module(pixels, sizes, [2, 2]).score_logits.sum().backward()
        return sum(float(p.grad.abs().sum()) for p in model.expert_tower.parameters() if p.grad is not None)

    assert tower_grad(True) > 0
    assert tower_grad(False) == 0.0


def _learning_rates(recipe, steps_per_epoch: int) -> list[float]:
    """The learning rate each optimiser step of a whole run of ``recipe`` uses."""
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = stage1.make_optimizer(list(model.parameters()), recipe, steps_per_epoch)
    rates = []
    for _ in range(steps_per_epoch * recipe.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_one_cycle_warms_up_once_and_decays_to_the_end_of_the_run() -> None:
    recipe = tiny_params("train.expert.tiny.epochs=4", "train.expert.tiny.warmup_ratio=0.1").expert_recipe
    assert recipe.schedule == "one_cycle"
    rates = _learning_rates(recipe, steps_per_epoch=10)  # 40 steps: OneCycleLR refuses a step past its total
    peak = max(range(len(rates)), key=rates.__getitem__)
    assert rates[peak] == pytest.approx(recipe.lr) and peak == 3  # after 10 % of 40 steps (OneCycleLR counts from 0)
    assert rates[0] == pytest.approx(recipe.lr / 25)
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:], strict=False)), "no restart after the peak"
    assert len(rates) == 40 and rates[-1] < recipe.lr * 1e-3


def test_restarts_schedule_is_the_release_s_and_returns_to_lr_every_cycle() -> None:
    recipe = tiny_params("model.preset=llava-onevision-0.5b").expert_recipe
    assert recipe.schedule == "restarts" and recipe.restarts_per_epoch == 2
    rates = _learning_rates(recipe, steps_per_epoch=10)  # 2 epochs, cycles of 5 steps
    assert [i for i, r in enumerate(rates) if r == pytest.approx(recipe.lr)] == [0, 5, 10, 15]
    assert recipe.lr * 0.01 <= min(rates) < recipe.lr * 0.2  # each cycle decays towards lr / 100


def test_losses_behave() -> None:
    prob = torch.full((2, 1, 4, 4), 0.5)
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, :2, :2] = 1
    better = target * 0.9 + 0.05
    assert stage1.focal_loss(better, target) < stage1.focal_loss(prob, target)
    assert stage1.dice_loss(better, target) < stage1.dice_loss(prob, target)
    w = stage1.class_balance([0, 0, 0, 1])
    assert w[0] * 3 == pytest.approx(w[1])
    with pytest.raises(ValueError, match="normal and anomalous"):
        stage1.class_balance([0, 0])
    cells = target.clone()
    none_eligible = stage1.mask_loss([prob], target, cells, torch.tensor([False, False]))
    assert float(none_eligible) == 0.0
    # per level: a level that matches the mask lowers the loss even when another level does not
    both_flat = stage1.mask_loss([prob, prob], target, cells, torch.tensor([True, True]))
    one_good = stage1.mask_loss([better, prob], target, cells, torch.tensor([True, True]))
    assert float(one_good) < float(both_flat)


def test_cell_bce_weighs_defect_cells_and_reaches_thin_defects() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = 0.3  # a thin defect covering under half of one cell: a 0.5-thresholded mask would drop it
    flat = torch.full((1, 1, 4, 4), 0.1)
    lit = flat.clone()
    lit[0, 0, 1, 1] = 0.3
    assert stage1.cell_bce(lit, target, 5.0) < stage1.cell_bce(flat, target, 5.0)
    # pos_weight raises the cost of missing the defect cell only
    assert stage1.cell_bce(flat, target, 5.0) > stage1.cell_bce(flat, target, 1.0)
    assert stage1.cell_bce(flat, torch.zeros_like(target), 5.0) == pytest.approx(
        float(stage1.cell_bce(flat, torch.zeros_like(target), 1.0)))
    saturated = torch.zeros(1, 1, 4, 4)  # probabilities of exactly 0 stay finite
    assert torch.isfinite(stage1.cell_bce(saturated, target, 5.0))


def test_map_image_loss_charges_a_normal_image_for_its_hot_spot() -> None:
    calm = torch.full((1, 1, 10, 10), 0.1)
    spot = calm.clone()
    spot[0, 0, 4, 4] = 0.95  # one hot cell: 1 % of the map, what the pixel-mean losses barely see
    normal, anomalous, balanced = torch.tensor([0.0]), torch.tensor([1.0]), (1.0, 1.0)
    assert stage1.top_cells_mean(spot, 0.01).item() == pytest.approx(0.95)
    assert stage1.top_cells_mean(spot, 0.02).item() == pytest.approx((0.95 + 0.1) / 2)
    assert stage1.top_cells_mean(calm, 1e-6).item() == pytest.approx(0.1)  # at least one cell
    loss = stage1.map_image_loss
    assert loss([spot], normal, balanced, 0.01) > 10 * loss([calm], normal, balanced, 0.01)
    assert loss([spot], anomalous, balanced, 0.01) < loss([calm], anomalous, balanced, 0.01) / 10
    assert loss([spot], normal, (3.0, 1.0), 0.01) == pytest.approx(3 * float(loss([spot], normal, balanced, 0.01)))
    spot.requires_grad_(True)
    loss([spot], normal, balanced, 0.01).backward()
    assert spot.grad[0, 0, 4, 4] > 0 and spot.grad.count_nonzero() == 1  # only the pooled cell is pushed down


def test_map_image_loss_joins_the_stage_1_loss_only_when_weighted() -> None:
    from types import SimpleNamespace

    maps = torch.full((2, 1, 4, 4), 0.2)
    out = SimpleNamespace(score_logits=torch.zeros(2, 1), level_maps=[maps], base_index=torch.tensor([0, 1]),
                          maps=maps)
    batch = {"labels": torch.tensor([0.0, 1.0])}
    recipe = tiny_params().expert_recipe.model_copy(update={"mask_loss": False})
    off, metrics_off = stage1.expert_loss(out, batch, recipe, (1.0, 1.0))
    on, metrics_on = stage1.expert_loss(out, batch, recipe.model_copy(update={"map_image_loss_weight": 2.0}),
                                        (1.0, 1.0))
    assert "map_image_loss" not in metrics_off
    assert float(on) == pytest.approx(float(off) + 2.0 * metrics_on["map_image_loss"])


def test_augment_turns_images_and_masks_together_and_is_seeded_by_the_batch() -> None:
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 0, 0] = 1  # a corner pixel: every turn or flip moves it, so the pose is visible
    cells = mask[:, :, ::2, ::2].clone()
    batch = {"index": torch.tensor([4, 7]), "pixel_values": image, "masks": mask, "mask_grids": cells, "labels": 1}
    poses = set()
    for seed in range(24):
        out = stage1.augment_batch(batch, seed)
        again = stage1.augment_batch(batch, seed)
        assert torch.equal(out["pixel_values"], again["pixel_values"])  # resume replays the same augmentation
        corner = tuple(int(v) for v in (out["masks"][0, 0] == 1).nonzero()[0])
        # the image moved with the mask: the pixel now under the mask's corner is the original corner pixel
        assert out["pixel_values"][0, :, corner[0], corner[1]].tolist() == image[0, :, 0, 0].tolist()
        cell = tuple(int(v) for v in (out["mask_grids"][0, 0] == 1).nonzero()[0])
        assert cell == (corner[0] // 2, corner[1] // 2)
        poses.add(out["pixel_values"][0, 0].flatten().tolist().__repr__())
        assert out["labels"] == 1 and batch["pixel_values"] is image  # other keys kept, input untouched
    assert len(poses) >= 6  # of the 8 poses, most appear over 24 seeds


def test_colour_augmentation_reorders_each_images_channels_in_pixel_space() -> None:
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    norm = torch.tensor(mean).reshape(3, 1, 1), torch.tensor(std).reshape(3, 1, 1)
    colour = torch.rand(6, 3, 8, 8)
    colour[5] = colour[5, :1]  # a grey image: every channel the same
    batch = {"index": torch.arange(6), "pixel_values": (colour - norm[0]) / norm[1], "masks": torch.zeros(6, 1, 8, 8),
             "mask_grids": torch.zeros(6, 1, 4, 4)}
    orders = set()
    for seed in range(12):
        plain = stage1.augment_batch(batch, seed)
        out = stage1.augment_batch(batch, seed, (mean, std))
        assert torch.equal(out["masks"], plain["masks"])  # the same pose as without colours
        assert torch.equal(out["pixel_values"], stage1.augment_batch(batch, seed, (mean, std))["pixel_values"])
        turned = plain["pixel_values"] * norm[1] + norm[0]  # the posed images, in pixel space
        seen = out["pixel_values"] * norm[1] + norm[0]
        for i in range(6):
            order = next(o for o in stage1.CHANNEL_ORDERS if torch.allclose(seen[i], turned[i][list(o)], atol=1e-5))
            orders.add(order)
        assert torch.allclose(seen[5], turned[5], atol=1e-5)  # grey stays grey
    assert orders == set(stage1.CHANNEL_ORDERS)  # every order is drawn


def test_colour_augmentation_needs_the_batch_augmentation() -> None:
    recipe = tiny_params().expert_recipe
    with pytest.raises(ValueError, match="augment_colours: true .* needs augment: true"):
        type(recipe).model_validate({**recipe.model_dump(), "augment": False, "augment_colours": True})
