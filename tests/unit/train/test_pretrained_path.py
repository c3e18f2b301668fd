"""The path a user with a real LLaVA-OneVision checkpoint takes (preset llava-onevision-0.5b + model.checkpoint), on the
shrunk checkpoint in the hub's layout (tests/real_layout.py: real config, image processor and Qwen2 tokenizer):
stage 1 loads the tower and the expert only, the official expert can be stage 1's output as released, stage 2 keeps
fp32 master weights and cuts (never stops on) long conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import count_expert_scorings, make_workspace, pretrained_params  # noqa: TID252

# the module's shrunk checkpoint is written once: keep its tests on one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pretrained_path")]


def _write_official_expert(path: Path, hidden: int, grid: int, seed: int = 5) -> dict[str, torch.Tensor]:
    """An expert .pth the release's way: the bare AnomalyOV state dict (release key names), saved in bf16."""
    from anomaly_ov.model.expert import AnomalyExpert

    torch.manual_seed(seed)
    state = {k: v.to(torch.bfloat16) for k, v in AnomalyExpert(hidden_size=hidden, embed_dim=512,
                                                               grid_size=grid).state_dict().items()}
    torch.save(state, path)
    return state


def test_stage1_loads_the_tower_and_expert_never_the_language_model(
    llava_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors
    from transformers.models.qwen2 import modeling_qwen2

    from anomaly_ov.train.expert import run_train_expert

    ws = make_workspace(tmp_path / "ws")
    params = pretrained_params(llava_checkpoint)
    read: list[str] = []
    real_open = safetensors.safe_open

    class SpyOpen:
        def __init__(self, *args, **kwargs) -> None:
            self.inner = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

    def no_llm(*args, **kwargs):
        raise AssertionError("stage 1 built the language model")

    with monkeypatch.context() as patch:
        patch.setattr(modeling_qwen2.Qwen2Model, "__init__", no_llm)
        patch.setattr(safetensors, "safe_open", SpyOpen)
        summary = run_train_expert(params, ws)
    assert summary["steps"] > 0 and summary["expert_source"] == "trained"
    # the hub's key names of the tower (save_pretrained's would be model.vision_tower.*)
    assert read and all(k.startswith(("vision_tower.", "model.vision_tower.")) for k in read), sorted(set(read))[:5]
    info = json.loads((ws / "models/expert/expert.json").read_text())
    assert info["includes_vision_tower"] is False  # the frozen pretrained tower is the checkpoint's

    # the stage-1 artifact loads into the whole model, and the whole model's expert path gives the same numbers
    from anomaly_ov.model.presets import build_expert_model, build_model, load_expert_stage
    from anomaly_ov.model.processing import collate_crops
    from anomaly_ov.train.expert import stage_preprocessor

    full = build_model(params).eval()
    load_expert_stage(full, ws / "models/expert")
    light = build_expert_model(params).eval()
    load_expert_stage(light, ws / "models/expert")
    assert not any(k.startswith(("model.language_model", "lm_head")) for k in light.state_dict())
    for key, value in light.anomaly_expert.state_dict().items():
        assert torch.equal(full.anomaly_expert.state_dict()[key], value), key
    preprocess = stage_preprocessor(params)
    batch = collate_crops([preprocess(ws / "data/raw/weave/test/spot/004.png")])
    with torch.no_grad():
        a = light.expert_forward(batch["pixel_values"], batch["image_sizes"])
        b = full.expert_forward(batch["pixel_values"], batch["image_sizes"])
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.maps, b.maps)



def test_stage1_map_image_loss_pools_each_images_base_view_of_the_real_layout(
    llava_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optional image-level map loss (off by default) on the 0.5B layout: the release recipe has no mask loss and
    keeps every crop view, so the loss must select each image's base view (one 27 x 27 map per image) itself."""
    from anomaly_ov.train import expert as stage1

    ws = make_workspace(tmp_path / "ws")
    params = pretrained_params(llava_checkpoint, "train.expert.pretrained.map_image_loss_weight=1.0")
    assert not params.train.expert.pretrained.mask_loss and not params.train.expert.pretrained.base_view_only
    calls: list[tuple[list[tuple[int, ...]], int, float]] = []
    real_loss = stage1.map_image_loss

    def spy(level_maps, labels, weights, fraction):
        value = real_loss(level_maps, labels, weights, fraction)
        calls.append(([tuple(m.shape) for m in level_maps], labels.numel(), float(value)))
        return value

    views: list[tuple[int, int]] = []  # (crop views in the batch, images)
    real_expert_loss = stage1.expert_loss

    def count_views(out, batch, recipe, weights):
        views.append((out.level_maps[0].shape[0], out.base_index.numel()))
        return real_expert_loss(out, batch, recipe, weights)

    monkeypatch.setattr(stage1, "map_image_loss", spy)
    monkeypatch.setattr(stage1, "expert_loss", count_views)
    summary = stage1.run_train_expert(params, ws)
    assert summary["steps"] > 0 and len(calls) >= summary["steps"]
    assert any(crops > images for crops, images in views), views  # several views per image: the base is selected
    for shapes, images, value in calls:
        assert shapes and all(shape == (images, 1, 27, 27) for shape in shapes), (shapes, images)
        assert torch.isfinite(torch.tensor(value)) and value > 0

def test_stage1_one_cycle_with_the_score_loss_kept_off_the_maps_runs_on_the_real_layout(
    llava_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny recipe's two stage-1 settings on the 0.5B layout (AnyRes crop views, frozen SigLIP tower): OneCycleLR
    runs to its last step, and with the selector detached the mask loss is what trains the maps. The pretrained
    recipe scores its held-out rows after every epoch; the report's final figures are the last epoch's scoring."""
    import json

    from anomaly_ov.train import expert as stage1

    ws = make_workspace(tmp_path / "ws")
    recipe = "train.expert.pretrained"
    params = pretrained_params(llava_checkpoint, f"{recipe}.schedule=one_cycle", f"{recipe}.mask_loss=true",
                               f"{recipe}.score_loss_trains_maps=false")
    scorings = count_expert_scorings(monkeypatch)
    summary = stage1.run_train_expert(params, ws)
    assert summary["steps"] > 0
    report = json.loads((ws / "reports/train_expert.json").read_text())
    assert report["recipe"]["schedule"] == "one_cycle" and report["recipe"]["score_loss_trains_maps"] is False
    assert report["loss_last"] > 0
    epochs = params.train.expert.pretrained.epochs
    assert params.train.expert.pretrained.validate_every == 1 and len(scorings) == epochs  # none after the last
    assert report["val"]["images"] == summary["val_images"] > 0 and report["val"]["per_class"]
    assert report["epoch_metrics"][-1].get("pixel_auroc") == report["val"]["pixel_auroc"]


def test_official_expert_is_stage1_output_as_released(llava_checkpoint: Path, tmp_path: Path, mlflow_store,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The official expert file (release keys, bf16) is stage 1's output as it is, evaluated on the held-out rows.
    With the calibrated image score turned on (an option, not the pretrained default): the release's file has no
    ``score_calibration``, so the strict load takes the identity; the stage tries the calibration on the held-out
    rows at the real tower's 27 x 27 grid, and since this random expert's sum ranks them the wrong way round, it says
    why and saves the identity beside the weights as released."""
    import mlflow

    from anomaly_ov.stages import run_stage

    ws = make_workspace(tmp_path / "ws")
    mlflow_store(ws)
    official = _write_official_expert(tmp_path / "pretrained_expert_05b.pth", hidden=32, grid=27)
    params = pretrained_params(llava_checkpoint, "tracking.enabled=true", "train.expert.pretrained.epochs=0",
                               f"model.expert_checkpoint={tmp_path / 'pretrained_expert_05b.pth'}",
                               "model.expert.image_score=calibrated_fusion")
    with caplog.at_level("WARNING"):
        summary = run_stage("train_expert", params, ws)
    assert summary["expert_source"] == "official_checkpoint" and summary["steps"] == 0
    assert summary["expert_keys_loaded"] == len(official)
    report = json.loads((ws / "reports/train_expert.json").read_text())
    assert report["expert_source"] == "official_checkpoint"
    assert report["val"]["images"] > 0  # the released expert is still evaluated on the held-out rows
    calibration = report["score_calibration"]
    assert calibration["calibrated"] is False and "does not rank the held-out anomalies" in calibration["reason"]
    assert calibration["images"] == report["val"]["images"] and "missing keys" not in caplog.text
    assert "keeps the predictor's score" in caplog.text  # the refusal is also logged, with its reason
    assert report["val_image_auroc"] == calibration["predictor_image_auroc"]
    saved = torch.load(ws / "models/expert/pretrained_expert.pth", weights_only=True)
    assert set(saved) == {*official, "score_calibration"} and saved["score_calibration"].tolist() == [1.0, 0.0, 0.0]
    for key, value in official.items():
        torch.testing.assert_close(saved[key], value.float(), atol=0, rtol=0)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    assert run.data.tags["expert_source"] == "official_checkpoint"
    assert run.data.params["expert_source"] == "official_checkpoint"
    assert run.data.metrics["train_expert.score_calibration.predictor_image_auroc"] == pytest.approx(
        calibration["predictor_image_auroc"])

    with pytest.raises(ValueError, match="expert_checkpoint"):
        run_stage("train_expert", pretrained_params(llava_checkpoint, "train.expert.pretrained.epochs=0"), ws)


def _keep_resume_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave the stage's resume checkpoint on disk after success (it holds the optimiser's master weights)."""
    from anomaly_ov.train import common

    monkeypatch.setattr(common, "remove_checkpoints", lambda *args, **kwargs: None, raising=False)


def test_stage2_cuts_a_too_long_conversation_and_updates_fp32_master_weights_that_bf16_would_round_away(
    llava_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One stage-2 run (two steps of batch 2) on the bf16 checkpoint at the release's lr 1e-5: a conversation longer
    than max_length is cut, not a reason to stop; the optimiser's weights (the resume checkpoint holds them) are fp32
    and moved almost everywhere, while rounded to bf16 most of the moves vanish, which is what updating the bf16
    weights in place did; the saved model is in the checkpoint's dtype again."""
    from safetensors.torch import load_file

    from anomaly_ov.model.presets import build_model, save_expert_stage
    from anomaly_ov.train.common import load_checkpoint
    from anomaly_ov.train.instruct import run_train_instruct

    ws = make_workspace(tmp_path / "ws")
    records = json.loads((ws / "data/instruct/train.json").read_text())
    # a question long enough that max_length falls inside the image that follows it (each 64 px image here is a
    # 1x1 grid of 384 px crops: 1485 visual + 11 anomaly tokens; the other conversations fit in 2000)
    long = dict(records[0], id="long")
    long["conversations"] = [{"from": "human", "value": "Look closely. " * 300 + "\n<image>\nAny defect?"},
                             {"from": "gpt", "value": "No"}]
    (ws / "data/instruct/train.json").write_text(json.dumps([*records[2:5], long]))  # normal and anomalous
    params = pretrained_params(llava_checkpoint, "train.instruct.pretrained.max_length=2000",
                               "train.instruct.pretrained.lr=1e-5", "train.instruct.pretrained.warmup_ratio=0.0",
                               "train.instruct.checkpoint_every=1000")
    save_expert_stage(build_model(params), ws / "models/expert")  # a stage-1 artifact (untrained expert)
    _keep_resume_state(monkeypatch)
    summary = run_train_instruct(params, ws)
    assert summary["steps"] == 2 and summary["truncated_records"] == 1 and summary["max_length"] == 2000
    assert summary["longest_record_tokens"] > 2000
    assert summary["answerless_records"] == 1  # the cut took the image, hence the question and its answer
    assert "1 of them lose every answer and train nothing: raise train.instruct.pretrained.max_length" in caplog.text
    report = json.loads((ws / "reports/train_instruct.json").read_text())
    assert report["truncated_records"] == 1

    state = load_checkpoint(ws / "checkpoints/instruct")["model"]
    hub = load_file(str(llava_checkpoint / "model.safetensors"))
    for name in ("multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight"):
        trained, before = state["model." + name], hub[name]
        assert trained.dtype == torch.float32 and before.dtype == torch.bfloat16
        moved = float((trained != before.float()).float().mean())
        in_bf16 = float((trained.to(torch.bfloat16) != before).float().mean())
        assert moved > 0.9 and in_bf16 < 0.3, (name, moved, in_bf16)
    saved = load_file(str(ws / "models/anomaly_ov/model.safetensors"))
    (key,) = [k for k in saved if k.endswith("multi_modal_projector.linear_1.weight")]
    assert saved[key].dtype == torch.bfloat16


def test_projector_alignment_on_the_real_layout_freezes_the_qwen2_llm_and_moves_the_projector(
    llava_checkpoint: Path, tmp_path: Path
) -> None:
    """The pretrained recipe has no alignment (align_epochs 0), but a user may set it: on the hub-layout checkpoint
    (bf16 weights, fp32 master copies of what trains) one step moves the projector and leaves every Qwen2 weight and
    the LM head as loaded."""
    from functools import partial

    from anomaly_ov.data.loaders import InstructDataset, collate_instruct
    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.train import instruct as stage2

    ws = make_workspace(tmp_path / "ws")
    records = json.loads((ws / "data/instruct/train.json").read_text())[2:4]  # a normal and an anomalous image
    params = pretrained_params(llava_checkpoint, "train.instruct.pretrained.align_epochs=1",
                               "train.instruct.pretrained.batch_size=2", "train.instruct.pretrained.align_lr=1e-3",
                               "train.instruct.pretrained.warmup_ratio=0.0")
    processor = build_processor(params)
    model = build_model(params, tokenizer=processor.tokenizer)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    stage2.fp32_master_weights(model)
    before = stage2.frozen_snapshot(model, ["multi_modal_projector", "language_model", "lm_head"])
    dataset = InstructDataset(records, ws, stage2.make_encoder(processor, 4000))
    result = stage2.align_projector(model, dataset, partial(collate_instruct, pad_token_id=processor.pad_token_id),
                                    params.instruct_recipe, seed=0, device=torch.device("cpu"),
                                    checkpoint_dir=tmp_path / "ckpt", checkpoint_every=100, progress=False)
    assert result is not None and result.step == 1
    after = dict(model.named_parameters())
    llm = [n for n in before if "language_model" in n or n.startswith("lm_head")]
    assert llm and all(torch.equal(after[n], before[n]) for n in llm), "a Qwen2 weight moved"
    assert any(not torch.equal(after[n], v) for n, v in before.items() if "multi_modal_projector" in n)
    assert all(p.requires_grad for p in model.model.language_model.parameters()), "the LLM is trainable again"


def test_a_real_size_image_fits_the_release_max_length(llava_checkpoint: Path) -> None:
    """A 1500 x 1000 image takes thousands of tokens at 384 px crops (~8.8k at full size; ~5k after the release's
    1024-px resize): the old max_length 2048 stopped stage 2 on it; the release's model_max_length (32768) holds it
    whole."""
    from PIL import Image

    from anomaly_ov.model.presets import build_processor

    params = pretrained_params(llava_checkpoint)
    assert params.instruct_recipe.max_length == 32768
    from anomaly_ov.model.processing import fitted_size
    proc = build_processor(params)
    image = Image.new("RGB", (1500, 1000), (120, 120, 120))
    conv = [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "gpt", "value": "No"}]
    out = proc([image], conv, max_length=params.instruct_recipe.max_length, return_labels=True)
    lay = proc.layout(*fitted_size(1000, 1500, proc.max_image_side))
    full = proc.layout(1000, 1500)  # without the resize (a processor with max_image_side unset)
    assert 4000 < lay.visual + lay.anomaly < 32768 and 8000 < full.visual + full.anomaly < 10000
    ids = out["input_ids"][0]
    assert int((ids == proc.image_token_id).sum()) == lay.visual
    assert int((ids == proc.anomaly_token_id).sum()) == lay.anomaly
    assert out["labels"][0][-2].item() != -100  # the answer survived


def test_real_layout_model_uses_the_release_maths_and_lays_out_uncropped_images_as_the_release(
    llava_checkpoint: Path,
) -> None:
    """On the checkpoint: the expert has no eps (release maths); two images in one sample are not cropped and each
    one's anomaly tokens are 1 + 4 + image_newline, filled by the model where the processor put them."""
    from PIL import Image

    from anomaly_ov.model.presets import build_model, build_processor

    params = pretrained_params(llava_checkpoint)
    model = build_model(params).eval()
    assert model.anomaly_expert.eps == 0.0 and model.config.expert_config["eps"] == 0.0
    proc = build_processor(params)
    views = [Image.new("RGB", (200, 150), (100 + 50 * k, 90, 90)) for k in range(2)]
    inputs = proc([views], [[{"from": "human", "value": "<image><image>\nAny defect?"}]])
    anomaly_at = (inputs["input_ids"][0] == model.config.anomaly_token_index).nonzero()[:, 0]
    assert len(anomaly_at) == 2 * (1 + 4 + 1)
    with torch.no_grad():
        embeds, encoded = model.build_inputs_embeds(inputs["input_ids"], inputs["pixel_values"],
                                                    inputs["image_sizes"], inputs["batch_num_images"])
        out = model(**inputs)
    assert encoded.expert.scores.shape == (2, 1) and torch.isfinite(out.logits).all()
    for last in (anomaly_at[5], anomaly_at[11]):
        torch.testing.assert_close(embeds[0, last], model.model.image_newline.to(embeds.dtype))


def test_stage2_loss_on_the_bf16_real_layout_under_cuda_like_autocast(
    llava_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 2 on a GPU computes under bf16 autocast, which runs softmax in float32 (the expert's maps) while the
    frozen expert's tokens stay bf16: that mix once stopped the first step on an H200. The CPU emulates it (CPU
    autocast for the bf16 matmuls, autocast's float32 softmax patched in) on the hub-layout bf16 checkpoint."""
    from PIL import Image

    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.train import instruct as stage2

    params = pretrained_params(llava_checkpoint)
    processor = build_processor(params)
    # in the checkpoint's dtype, as a GPU loads it (a CPU build is float32); the expert stays bf16, frozen
    model = build_model(params, tokenizer=processor.tokenizer).to(torch.bfloat16)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    stage2.fp32_master_weights(model)
    conv = [{"from": "human", "value": "<image>\nAny defect?"}, {"from": "gpt", "value": "Yes"}]
    batch = dict(processor([Image.new("RGB", (96, 64), (120, 90, 60))], conv, return_labels=True))
    softmax = torch.Tensor.softmax
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **k: softmax(self.float(), *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = stage2.conversation_loss(model, batch, params.instruct_recipe.loss_reduction)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.anomaly_expert.positive_embedding.dtype == torch.bfloat16
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None


def test_word_margins_compare_the_answer_tokens_qwen2_learns(llava_checkpoint: Path) -> None:
    """``word_margins`` reads the logits of "Yes" and "No" as one token each; with Qwen2's real tokenizer those are the
    first answer tokens stage 2's labels hold for a "Yes" / "No" answer, and the hub-layout model gives a finite
    margin per word (text only, no image)."""
    from anomaly_ov.model.presets import build_model, build_processor
    from anomaly_ov.model.tokenizer import ADVERB_WORDS, DETECTION_PROMPT
    from anomaly_ov.train import instruct as stage2

    params = pretrained_params(llava_checkpoint)
    processor = build_processor(params)
    for answer in ("Yes", "No"):
        ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        conv = [{"from": "human", "value": f"<image>\n{DETECTION_PROMPT}"}, {"from": "gpt", "value": answer}]
        _, labels = processor.encode_text_only(conv, ["highly"], add_generation_prompt=False)
        assert ids == [next(t for t in labels if t != -100)], f"{answer!r} is not one answer token for Qwen2"
    model = build_model(params, tokenizer=processor.tokenizer)
    margins = stage2.word_margins(model, processor, torch.device("cpu"))
    assert list(margins) == list(ADVERB_WORDS)
    assert all(torch.isfinite(torch.tensor(m)) for m in margins.values())
