"""Stage 2 on a tiny model: output directory, report with samples, frozen tower/expert, falling loss, LoRA."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ov.model.processing import adverb_for_score
from anomaly_ov.train import instruct as stage2

from .conftest import sigkill_stage_at, tiny_params  # noqa: TID252

# each test trains a tiny model for a few steps, most on the module's stage-1 workspace (one xdist worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("instruct_stage")]


def test_stage2_trains_projector_and_llm_only(trained_expert_workspace: Path) -> None:
    from safetensors.torch import load_file

    from anomaly_ov.model.presets import load_pretrained

    ws = trained_expert_workspace
    # 12 steps of batch 2: loss_first and loss_last are means over 10 steps, so the curve needs more than 10
    params = tiny_params("train.instruct.tiny.epochs=2", "train.instruct.tiny.batch_size=2",
                         "train.instruct.tiny.lr=0.003")
    summary = stage2.run_train_instruct(params, ws)
    assert summary["steps"] == 2 * 6  # 12 records, batch 2
    assert summary["loss_last"] < summary["loss_first"], "the loss curve falls"
    assert summary["tokens_per_s"] > 0
    report = json.loads((ws / "reports/train_instruct.json").read_text())
    labels = [s["label"] for s in report["samples"]]
    assert labels == ["normal", "anomaly"]
    assert all(isinstance(s["detection_answer"], str) for s in report["samples"])
    assert (ws / "reports/train_instruct_curves.png").exists()

    model, processor = load_pretrained(ws / "models/anomaly_ov")
    expert = torch.load(ws / "models/expert/pretrained_expert.pth")
    for key, value in expert.items():
        assert torch.equal(model.anomaly_expert.state_dict()[key], value), f"expert {key} changed in stage 2"
    tower = load_file(str(ws / "models/expert/vision_tower.safetensors"))
    own = model.model.vision_tower.state_dict()
    for key, value in tower.items():
        assert torch.equal(own[key], value), f"vision tower {key} changed in stage 2"
    assert "<anomaly>" in processor.tokenizer.get_vocab()


def test_stage2_lora_merges_into_a_plain_model(trained_expert_workspace: Path) -> None:
    from anomaly_ov.model.presets import load_pretrained

    ws = trained_expert_workspace
    params = tiny_params("train.instruct.lora.enabled=true", "train.instruct.lora.r=4", "train.instruct.tiny.epochs=1",
                         "train.instruct.max_records=4", "train.instruct.output_dir=models/lora",
                         "train.instruct.report=reports/lora.json", "train.instruct.checkpoint_dir=checkpoints/lora")
    summary = stage2.run_train_instruct(params, ws)
    assert summary["steps"] == 1  # 4 of the 12 records, batch 4: one update of the adapters is enough to merge
    model, _ = load_pretrained(ws / "models/lora")
    assert not any("lora_" in name for name, _ in model.named_parameters())


def _tiny_model(records: list[dict]):
    from anomaly_ov.model.presets import build_model, processor_for
    from anomaly_ov.model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tokenizer(stage2.conversation_texts(records), vocab_size=400)
    model = build_model(tiny_params(), tokenizer=tokenizer)
    return model, processor_for(model, tokenizer)


def test_expert_words_are_the_adverbs_of_the_models_own_scores(tiny_workspace: Path) -> None:
    records = json.loads((tiny_workspace / "data/instruct/train.json").read_text())[:3]
    model, processor = _tiny_model(records)
    words = stage2.expert_adverbs(model, processor, records, tiny_workspace, torch.device("cpu"), batch_size=2)
    assert list(words) == [(rec["image"],) for rec in records]
    inputs = processor([Image.open(tiny_workspace / records[2]["image"])], records[2]["conversations"])
    with torch.no_grad():
        score = float(model(**inputs).anomaly_scores)
    assert words[(records[2]["image"],)] == [adverb_for_score(score, model.config.suspicious_thresholds)]


def test_text_warmup_trains_the_llm_and_leaves_the_projector(tiny_workspace: Path) -> None:
    from functools import partial

    from anomaly_ov.data.loaders import collate_instruct

    records = json.loads((tiny_workspace / "data/instruct/train.json").read_text())
    model, processor = _tiny_model(records)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    words = {(rec["image"],): ["highly" if rec["label"] == "anomaly" else "slightly"] for rec in records}
    items = stage2.text_warmup_items(records, processor, words, max_length=256)
    assert all(processor.image_token_id not in it["input_ids"] for it in items)
    before = stage2.frozen_snapshot(model, ["multi_modal_projector", "language_model"])
    recipe = tiny_params("train.instruct.tiny.text_warmup_epochs=6", "train.instruct.tiny.text_warmup_batch_size=4",
                         "train.instruct.tiny.lr=0.003").instruct_recipe
    result = stage2.warm_up_language(model, items, partial(collate_instruct, pad_token_id=processor.pad_token_id),
                                     recipe, seed=0, device=torch.device("cpu"),
                                     checkpoint_dir=tiny_workspace / "ckpt", checkpoint_every=100, progress=False)
    assert result.step == 6 * 3
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-3:]) < sum(losses[:3]), "the text loss falls"
    after = dict(model.named_parameters())
    projector = [n for n in before if "multi_modal_projector" in n]
    assert projector and all(torch.equal(after[n], before[n]) for n in projector), "the projector moved"
    assert any(not torch.equal(after[n], v) for n, v in before.items() if "language_model" in n)
    assert all(p.requires_grad for p in model.model.multi_modal_projector.parameters()), "projector unfrozen again"


def test_word_margins_tell_whether_the_answer_follows_the_expert_word(tiny_workspace: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from functools import partial

    from anomaly_ov.data.loaders import collate_instruct
    from anomaly_ov.model.tokenizer import ADVERB_WORDS, DETECTION_PROMPT

    records = [{"image": rec["image"], "label": rec["label"],
                "conversations": [{"from": "human", "value": f"<image>\n{DETECTION_PROMPT}"},
                                  {"from": "gpt", "value": "Yes" if rec["label"] == "anomaly" else "No"}]}
               for rec in json.loads((tiny_workspace / "data/instruct/train.json").read_text())]
    assert {rec["label"] for rec in records} == {"normal", "anomaly"}
    model, processor = _tiny_model(records)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    cpu = torch.device("cpu")
    untrained = stage2.word_margins(model, processor, cpu)
    assert list(untrained) == list(ADVERB_WORDS)
    with caplog.at_level("WARNING", logger=stage2.__name__):
        stage2.warn_if_word_ignored(untrained, "untrained")
    assert "hardly depends on the expert's word" in caplog.text, "an untrained LLM ignores the word"

    # the word says the answer: "highly" for every anomalous record, "slightly" for every normal one
    words = {(rec["image"],): ["highly" if rec["label"] == "anomaly" else "slightly"] for rec in records}
    items = stage2.text_warmup_items(records, processor, words, max_length=256)
    recipe = tiny_params("train.instruct.tiny.text_warmup_epochs=80", "train.instruct.tiny.text_warmup_batch_size=4",
                         "train.instruct.tiny.lr=0.003").instruct_recipe
    stage2.warm_up_language(model, items, partial(collate_instruct, pad_token_id=processor.pad_token_id), recipe,
                            seed=0, device=cpu, checkpoint_dir=tiny_workspace / "ckpt_words", checkpoint_every=1000,
                            progress=False)
    trained = stage2.word_margins(model, processor, cpu)
    assert trained["slightly"] < 0 < trained["highly"], trained
    assert model.training, "the margins leave the model in the mode they found it"
    caplog.clear()
    with caplog.at_level("WARNING", logger=stage2.__name__):
        stage2.warn_if_word_ignored(trained, "trained")
    assert caplog.text == ""


def test_projector_alignment_trains_the_projector_and_leaves_the_llm(tiny_workspace: Path) -> None:
    from functools import partial

    from anomaly_ov.data.loaders import InstructDataset, collate_instruct

    records = json.loads((tiny_workspace / "data/instruct/train.json").read_text())
    model, processor = _tiny_model(records)
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    dataset = InstructDataset(records, tiny_workspace, stage2.make_encoder(processor, 1024))
    before = stage2.frozen_snapshot(model, ["multi_modal_projector", "language_model", "lm_head", "image_newline"])
    recipe = tiny_params("train.instruct.tiny.align_epochs=2", "train.instruct.tiny.batch_size=4",
                         "train.instruct.tiny.align_lr=0.003").instruct_recipe
    result = stage2.align_projector(model, dataset, partial(collate_instruct, pad_token_id=processor.pad_token_id),
                                    recipe, seed=0, device=torch.device("cpu"),
                                    checkpoint_dir=tiny_workspace / "ckpt_align", checkpoint_every=100, progress=False)
    assert result is not None and result.step == 2 * 3  # 12 records, batch 4, 2 epochs
    after = dict(model.named_parameters())
    llm = [n for n in before if "language_model" in n or n.startswith("lm_head")]
    assert llm and all(torch.equal(after[n], before[n]) for n in llm), "the LLM moved"
    assert any(not torch.equal(after[n], v) for n, v in before.items() if "multi_modal_projector" in n)
    assert all(p.requires_grad for p in model.model.language_model.parameters()), "LLM unfrozen again"


def test_projector_alignment_is_skipped_under_fsdp(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # FSDP2 fixes which parameters train when it first gathers them: a phase with the LLM frozen cannot follow
    from anomaly_ov.train import common

    monkeypatch.setattr(common, "dist_info", lambda: common.DistInfo(rank=0, world_size=2, local_rank=0))
    recipe = tiny_params("train.instruct.tiny.align_epochs=1").instruct_recipe
    with caplog.at_level("WARNING"):
        result = stage2.align_projector(torch.nn.Linear(1, 1), [], list, recipe, seed=0, device=torch.device("cpu"),
                                        checkpoint_dir=Path("unused"), checkpoint_every=1, strategy="fsdp")
    assert result is None and "skipped under fsdp" in caplog.text


#: stage 2 with the text warm-up: 2 warm-up epochs of 2 steps (12 records, batch 6), one epoch of projector
#: alignment and one visual epoch of 6 steps each (batch 2), a checkpoint every 2 steps: the visual phase has steps
#: between two checkpoints to be killed at
WARMUP = ("train.instruct.tiny.text_warmup_epochs=2", "train.instruct.tiny.text_warmup_batch_size=6",
          "train.instruct.tiny.align_epochs=1", "train.instruct.tiny.epochs=1", "train.instruct.tiny.batch_size=2",
          "train.instruct.checkpoint_every=2")


def _warmup_params(name: str):
    return tiny_params(*WARMUP, f"train.instruct.output_dir=models/{name}",
                       f"train.instruct.report=reports/{name}.json",
                       f"train.instruct.checkpoint_dir=checkpoints/{name}")


@pytest.fixture(scope="module")
def warm_run(trained_expert_workspace: Path) -> dict:
    """One uninterrupted stage-2 run with the text warm-up (outputs under models/warm): what the report test reads
    and the reference the SIGKILLed run must reproduce (read only)."""
    return stage2.run_train_instruct(_warmup_params("warm"), trained_expert_workspace)


def test_stage2_with_text_warmup_reports_both_phases_and_resumes(trained_expert_workspace: Path,
                                                                 warm_run: dict) -> None:
    ws, summary = trained_expert_workspace, warm_run
    assert summary["text_warmup"]["records"] == 12 and summary["text_warmup"]["steps"] == 2 * 2
    assert summary["steps"] == 6 and summary["align"]["steps"] == 6 and summary["align"]["epochs"] == 1
    report = json.loads((ws / "reports/warm.json").read_text())
    assert [s for s, _ in report["text_warmup_loss_curve"]] == [1, 2, 3, 4]
    assert [s for s, _ in report["align_loss_curve"]] == [1, 2, 3, 4, 5, 6]
    assert (ws / "reports/warm_text_warmup_curves.png").exists() and (ws / "reports/warm_align_curves.png").exists()
    # the outputs are the result now: no finished checkpoint is left for a later run to take as "done"
    assert not list((ws / "checkpoints/warm").rglob("last.pt"))


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {directory}"
    return out


@pytest.mark.integration
def test_stage2_sigkill_in_visual_phase_resumes_to_identical_weights(trained_expert_workspace: Path,
                                                                      warm_run: dict) -> None:
    """A real SIGKILL of `anomaly-ov stage train_instruct` at visual step 3 (checkpoints at 2 and 4), after the
    text warm-up and the projector alignment finished: the re-run takes their checkpoints, resumes the visual phase
    from step 2
    (mid-epoch) and saves the uninterrupted run's model (the module's ``warm_run``), bit for bit (vision tower and
    expert included)."""
    ws = trained_expert_workspace
    killed_params = _warmup_params("killed")
    assert warm_run["steps"] == 6 and warm_run["text_warmup"]["steps"] == 4
    torch.manual_seed(123)  # the re-run must not depend on this process's RNG state

    sigkill_stage_at("train_instruct", ws, killed_params, "train", 3)
    ckpt = torch.load(ws / "checkpoints/killed/last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["next_batch"]) == (2, 0, 2)
    assert not (ws / "models/killed").exists(), "no output before the stage completes"
    summary = stage2.run_train_instruct(killed_params, ws)
    assert summary["text_warmup"]["resumed_from_step"] == 4 and summary["align"]["resumed_from_step"] == 6
    assert summary["resumed_from_step"] == 2
    a, b = _safetensors(ws / "models/warm"), _safetensors(ws / "models/killed")
    assert a.keys() == b.keys()
    assert any("vision_tower" in k for k in a) and any("anomaly_expert" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage2_with_text_warmup_runs_in_two_processes(trained_expert_workspace: Path) -> None:
    """torchrun, 2 CPU processes (gloo): both loops (text warm-up, then visual) run under DDP; rank 0 saves."""
    from anomaly_ov.model.presets import load_pretrained

    ws = trained_expert_workspace
    params = tiny_params("train.instruct.num_processes=2", "train.instruct.tiny.epochs=1",
                         "train.instruct.output_dir=models/ddp", "train.instruct.report=reports/ddp.json",
                         "train.instruct.checkpoint_dir=checkpoints/ddp")
    summary = stage2.run_train_instruct(params, ws)
    assert summary["num_processes"] == 2
    assert summary["steps"] == 2  # 12 records, 6 per rank, batch 4
    assert summary["text_warmup"]["steps"] == 3  # 6 per rank make 1 batch of 16 per epoch, 3 epochs
    load_pretrained(ws / "models/ddp")
    assert json.loads((ws / "reports/ddp.json").read_text())["num_processes"] == 2
    # each rank scored half of the images for the expert's words; together they hold every image's word
    model, processor = _stage1_model(ws)
    records = json.loads((ws / "data/instruct/train.json").read_text())
    single = stage2.expert_adverbs(model, processor, records, ws, torch.device("cpu"))
    expected = Counter(w for v in single.values() for w in v)
    assert sum(expected.values()) == len(records)  # one image per record in the tiny workspace
    assert summary["text_warmup"]["expert_words"] == dict(sorted(expected.items()))


def _stage1_model(ws: Path):
    """A tiny model with the workspace's stage-1 tower and expert (the parts that score images)."""
    from anomaly_ov.model.presets import build_model, load_expert_stage, processor_for
    from anomaly_ov.model.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(())
    model = build_model(tiny_params(), tokenizer=tokenizer)
    load_expert_stage(model, ws / "models/expert")
    return model, processor_for(model, tokenizer)


def test_record_cap_is_a_seeded_draw_in_file_order() -> None:
    records = [{"id": f"{cat}/{i}"} for cat in ("fabric", "wood", "metal") for i in range(20)]
    sample = stage2.sample_records(records, 12, seed=0)
    assert len(sample) == 12 and sample == stage2.sample_records(records, 12, seed=0)
    assert sample != stage2.sample_records(records, 12, seed=1)
    assert [records.index(r) for r in sample] == sorted(records.index(r) for r in sample)
    assert {r["id"].split("/")[0] for r in sample} == {"fabric", "wood", "metal"}  # not just the file's head
    assert stage2.sample_records(records, None, 0) == records and stage2.sample_records(records, 99, 0) == records


def test_multi_image_first_draws_every_multi_image_record_and_fills_with_single_ones() -> None:
    records = [{"id": f"single/{i}", "image": f"s{i}.png"} for i in range(40)]
    views = [{"id": f"object/{i}", "image": [f"o{i}_{v}.png" for v in range(4)]} for i in range(3)]
    records[5:5] = views[:1]
    records[30:30] = views[1:]
    sample = stage2.sample_records(records, 10, seed=0, multi_image_first=True)
    assert len(sample) == 10 and all(v in sample for v in views)
    assert [records.index(r) for r in sample] == sorted(records.index(r) for r in sample)
    assert sample == stage2.sample_records(records, 10, seed=0, multi_image_first=True)
    # without the option the draw is the uniform one it always was
    uniform = np.random.default_rng(0).choice(len(records), size=10, replace=False)
    assert stage2.sample_records(records, 10, seed=0) == [records[int(i)] for i in sorted(uniform)]
    # more multi-image records than the cap: a seeded draw of them alone
    only = stage2.sample_records(records, 2, seed=0, multi_image_first=True)
    assert len(only) == 2 and all(r in views for r in only)


def test_the_tiny_recipe_keeps_a_3d_objects_four_views_and_counts_answerless_cuts(tmp_path: Path) -> None:
    """The default 3D record: four 128 px views in the first question (the synthesizer's wording). At the tiny
    recipe's max_length it is whole; at 1,024 (an earlier recipe) the cut falls in the fourth view and takes the
    question and the answer with it, which ``count_truncated`` reports as a record that trains nothing."""
    params = tiny_params()
    views = []
    for v in range(params.extensions.threed.views):
        path = tmp_path / f"view_{v}.png"
        Image.new("RGB", (params.extensions.threed.image_size,) * 2, (90 + 10 * v, 80, 70)).save(path)
        views.append(path.name)
    record = {"id": "sphere/001", "image": views, "conversations": [
        {"from": "human", "value": "<image>\n" * len(views) + "These are 4 views of the same object. Is there any "
         "anomaly in this image? Please reply with 'Yes' or 'No'."},
        {"from": "gpt", "value": "Yes"},
        {"from": "human", "value": "Where is the defect?"},
        {"from": "gpt", "value": "The sphere has a bump in the center of the image (seen best in view 1)."}]}
    _, processor = _tiny_model([record])

    whole = stage2.count_truncated([record], processor, tmp_path, params.train.instruct.tiny.max_length)
    assert whole["truncated_records"] == 0 and whole["answerless_records"] == 0
    assert 1024 < whole["longest_record_tokens"] <= params.train.instruct.tiny.max_length
    # the length that groups the visual phases' batches is the encoded one, its four views' tokens included
    encoded = stage2.make_encoder(processor, params.train.instruct.tiny.max_length)(
        [Image.open(tmp_path / v).convert("RGB") for v in views], record["conversations"])
    assert stage2.record_lengths([record], processor, tmp_path) == [len(encoded["input_ids"])]
    assert whole["longest_record_tokens"] == len(encoded["input_ids"])

    cut = stage2.count_truncated([record], processor, tmp_path, 1024)
    assert cut["truncated_records"] == 1 and cut["answerless_records"] == 1
    # a cut after the first answer keeps it: the record is cut but still trains
    tail = stage2.count_truncated([record], processor, tmp_path, whole["longest_record_tokens"] - 5)
    assert tail["truncated_records"] == 1 and tail["answerless_records"] == 0


def test_the_tiny_recipe_draws_multi_image_records_first_and_the_release_does_not() -> None:
    params = tiny_params()
    assert params.train.instruct.tiny.multi_image_first is True
    assert params.train.instruct.pretrained.multi_image_first is False


class _Killed(Exception):
    pass


def test_stage2_image_fixed_in_place_is_not_trained_on_stale_checkpoint(trained_expert_workspace: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An image of the instruction records replaced in place (mtime kept) after a crash: the re-run starts
    afresh instead of resuming weights trained on the old image."""
    import os

    import numpy as np

    from anomaly_ov.train import common

    ws = trained_expert_workspace
    params = tiny_params("train.instruct.tiny.text_warmup_epochs=0", "train.instruct.tiny.epochs=1",
                         "train.instruct.checkpoint_every=1", "train.instruct.output_dir=models/fix",
                         "train.instruct.report=reports/fix.json", "train.instruct.checkpoint_dir=checkpoints/fix")
    real_loop = common.run_loop

    def loop_killed_at_2(*args, **kwargs):
        def hook(step, record):
            if step == 2:
                raise _Killed()
        kwargs["on_step_end"] = hook
        return real_loop(*args, **kwargs)

    monkeypatch.setattr(common, "run_loop", loop_killed_at_2)
    with pytest.raises(_Killed):
        stage2.run_train_instruct(params, ws)
    monkeypatch.undo()
    record = json.loads((ws / "data/instruct/train.json").read_text())[0]
    image = ws / record["image"]
    stat = image.stat()
    pixels = np.asarray(Image.open(image)).copy()
    Image.fromarray(255 - pixels).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    summary = stage2.run_train_instruct(params, ws)
    assert summary["resumed_from_step"] is None, "resumed a checkpoint trained on the old image"
