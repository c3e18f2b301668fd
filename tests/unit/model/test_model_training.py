"""Tiny Anomaly-OV: labels, a training step, generate, save/load, stage-1 artifacts, predict."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anomaly_ov.model.predict import Prediction, Predictor
from anomaly_ov.model.presets import (
    build_model,
    load_expert_stage,
    load_pretrained,
    save_expert_stage,
    save_pretrained,
)
from anomaly_ov.model.processing import IGNORE_INDEX, ConversationCollator, ImagePreprocessor, collate_crops

from .conftest import make_image, talkative

CONV = [
    {"from": "human", "value": "<image>\nAre there any defects?"},
    {"from": "gpt", "value": "Yes"},
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "On the left."},
]


def test_labels_keep_only_answers_and_their_end_token(tiny_parts):
    _, tok, _, proc = tiny_parts
    batch = proc([[make_image(256, 384)], [make_image(128, 128)]], [CONV, CONV[:2]])
    labels, ids = batch["labels"], batch["input_ids"]
    for row in range(2):
        kept = labels[row] != IGNORE_INDEX
        assert torch.equal(labels[row][kept], ids[row][kept])
        text = tok.decode(labels[row][kept])
        expected = "Yes<|im_end|>On the left.<|im_end|>" if row == 0 else "Yes<|im_end|>"
        assert text == expected
    # right padding for training batches: padded positions are masked everywhere
    assert batch["attention_mask"][1, -1] == 0 and batch["attention_mask"][1, 0] == 1
    assert (labels[1][batch["attention_mask"][1] == 0] == IGNORE_INDEX).all()


def image_spans(proc, ids):
    """[start, end) of each image's placeholders: from its first <image> through its last <anomaly>."""
    starts = [i for i, t in enumerate(ids) if t == proc.image_token_id and (i == 0 or ids[i - 1] != t)]
    ends = [i + 1 for i, t in enumerate(ids) if t == proc.anomaly_token_id and (i + 1 == len(ids) or ids[i + 1] != t)]
    return list(zip(starts, ends, strict=True))


def test_collator_builds_training_batches_and_cuts_long_ones_never_inside_an_image(tiny_parts):
    _, _, model, proc = tiny_parts
    items = [([make_image(128, 128)], CONV), ([make_image(128, 256)], CONV[:2])]
    batch = ConversationCollator(proc)(items)
    assert batch["labels"].shape == batch["input_ids"].shape and batch["pixel_values"].shape[0] == 2
    # a cut in the text after the images: LLaVA's truncation of input_ids / labels, every image kept
    short = ConversationCollator(proc, max_length=batch["input_ids"].shape[1] - 3)(items)
    assert short["input_ids"].shape[1] == batch["input_ids"].shape[1] - 3
    assert short["pixel_values"].shape[0] == 2
    # a cut that would split the second conversation's image: it stops where that image starts and its pixels go;
    # the first conversation keeps its image (the cut is per conversation)
    spans = [image_spans(proc, proc.encode_conversation(conv, [proc.layout(*size)])[0])
             for size, conv in (((128, 128), CONV), ((128, 256), CONV[:2]))]
    limit = spans[0][0][1] + 5
    assert spans[1][0][0] < limit < spans[1][0][1]
    cut = ConversationCollator(proc, max_length=limit)(items)
    assert cut["pixel_values"].shape[0] == 1 and cut["image_sizes"].tolist() == [[128, 128]]
    assert cut["batch_num_images"].tolist() == [1, 0]
    row = cut["input_ids"][1][cut["attention_mask"][1] == 1]
    assert len(row) == spans[1][0][0] and not bool((row == proc.image_token_id).any())
    with torch.no_grad():
        out = model(**{k: v for k, v in cut.items() if k != "labels"})  # the model fills what is left
    assert torch.isfinite(out.logits).all() and out.anomaly_scores.shape == (1, 1)
    # a multi-image sample left with one image drops it too (alone it would be cropped, laid out uncropped)
    views = [make_image(128, 128, seed=s) for s in range(2)]
    conv2 = [{"from": "human", "value": "<image>\n" + "look " * 40 + "<image>\nAny defect?"},
             {"from": "gpt", "value": "No."}]
    ids, _ = proc.encode_conversation(conv2, [proc.layout(128, 128, cropped=False)] * 2)
    (first, second) = image_spans(proc, ids)
    both = ConversationCollator(proc, max_length=second[0] + 3)([(views, conv2)])
    assert "pixel_values" not in both and both["input_ids"].shape[1] == first[0]
    assert proc.conversation_length(conv2, [(128, 128)] * 2) == len(ids)


def test_training_lowers_loss_then_generate_answers(tiny_parts):
    params, tok, _, proc = tiny_parts
    torch.manual_seed(1)
    model = build_model(params, tok).train()
    conv = [{"from": "human", "value": "<image>\nAre there any defects?"}, {"from": "gpt", "value": "Yes"}]
    batch = proc([[make_image(128, 128)], [make_image(128, 256, seed=3)]], [conv, conv])
    model.set_trainable(vision_tower=False, expert=False, projector=True, language_model=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):  # "Yes" is the greedy answer from about step 10 on
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.anomaly_expert.parameters())
    model.eval()
    prompt = proc([[make_image(128, 128)]], [conv[:1]])
    out = model.generate(**prompt, max_new_tokens=4)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert proc.decode_answers(out, prompt["input_ids"]) == ["Yes"]
    # the predictor generates from prompt embeddings built in the same pass as the scores
    preds = Predictor(model, proc).predict([make_image(128, 128), make_image(128, 256, seed=3)],
                                           question="Are there any defects?", generate=True, max_new_tokens=4)
    assert [p.answer for p in preds] == ["Yes", "Yes"]


def test_save_load_round_trip_gives_identical_logits(tiny_parts, tmp_path):
    _, _, model, proc = tiny_parts
    inputs = proc([[make_image(128, 128)]], [CONV])
    save_pretrained(model, proc, tmp_path / "model")
    loaded, loaded_proc = load_pretrained(tmp_path / "model")
    again = loaded_proc([[make_image(128, 128)]], [CONV])
    for key in inputs:
        assert torch.equal(inputs[key], again[key]), key
    assert loaded.config.expert_config == model.config.expert_config
    assert loaded.config.expert_layers == model.config.expert_layers
    with torch.no_grad():
        a = model(**inputs)
        b = loaded(**again)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.anomaly_scores, b.anomaly_scores, atol=1e-6, rtol=0)


def test_expert_forward_trains_the_tower_and_stage_artifact_round_trips(tiny_parts, tmp_path):
    params, tok, base, _ = tiny_parts
    model = copy.deepcopy(base).train()
    model.set_trainable(vision_tower=True, expert=True, projector=False, language_model=False)
    pre = ImagePreprocessor(build_processor_image(tiny_parts))
    batch = collate_crops([pre(make_image(128, 128)), pre(make_image(256, 384, seed=2))])
    assert batch["pixel_values"].shape == (2, 7, 3, 128, 128)
    out = model.expert_forward(batch["pixel_values"], batch["image_sizes"])
    assert out.maps.shape == (2 + 7, 1, 16, 16) and out.base_maps.shape == (2, 1, 16, 16)
    (out.base_maps.mean() + out.score_logits.sum()).backward()
    assert model.model.vision_tower.embeddings.patch_embedding.weight.grad is not None
    assert model.anomaly_expert.positive_embedding.grad is not None
    with torch.no_grad():
        for p in model.anomaly_expert.parameters():
            p.add_(0.01)
        for p in model.model.vision_tower.parameters():
            p.add_(0.01)
    save_expert_stage(model, tmp_path / "expert")
    assert (tmp_path / "expert" / "pretrained_expert.pth").is_file()
    fresh = build_model(params, tok).eval()
    load_expert_stage(fresh, tmp_path / "expert")
    model.eval()
    with torch.no_grad():
        x = model.expert_forward(batch["pixel_values"], batch["image_sizes"])
        y = fresh.expert_forward(batch["pixel_values"], batch["image_sizes"])
    torch.testing.assert_close(x.scores, y.scores)
    torch.testing.assert_close(x.maps, y.maps)


def build_processor_image(tiny_parts):
    return tiny_parts[3].image_processor


def test_predict_returns_maps_of_the_image_size(tiny_parts, tmp_path):
    _, _, model, proc = tiny_parts
    path = tmp_path / "part.png"
    make_image(100, 150, seed=5).save(path)
    predictor = Predictor.from_pretrained(model, processor=proc)
    preds = predictor.predict([path, make_image(128, 256)], generate=True, threshold=0.5, max_new_tokens=3)
    assert [p.anomaly_map.shape for p in preds] == [(100, 150), (128, 256)]
    for p in preds:
        assert isinstance(p, Prediction) and p.anomaly_map.dtype == np.float32
        assert p.anomaly_map.min() >= 0.0 and p.anomaly_map.max() <= 1.0
        assert p.label == ("anomaly" if p.score >= 0.5 else "normal")
        assert isinstance(p.answer, str)
    # scores match one image at a time (batching changes nothing)
    single = predictor.predict([path])[0]
    assert single.score == pytest.approx(preds[0].score, abs=1e-5)
    assert isinstance(predictor.chat([path, path], [("Is it broken?", "Yes")], "Where?", max_new_tokens=2), str)


def test_chat_batch_answers_as_one_conversation_at_a_time(tiny_parts):
    """Left-padded batches of conversations with other image counts and history lengths give each conversation the
    answer it gets alone."""
    import copy

    _, _, model, proc = tiny_parts
    predictor = Predictor.from_pretrained(talkative(copy.deepcopy(model)), processor=proc)
    conversations = [
        ([make_image(100, 150, seed=5)], [], "Is there a defect?"),
        ([make_image(128, 128, seed=6), make_image(128, 128, seed=7)], [("Is it broken?", "Yes")], "Where?"),
        ([make_image(90, 200, seed=8)], [("Any defect?", "No"), ("Are you sure?", "Yes, quite")], "Describe it."),
    ]
    alone = [predictor.chat(images, history, question, max_new_tokens=6) for images, history, question in conversations]
    assert len(set(alone)) == 3 and all(alone)  # three different, non-empty answers
    assert predictor.chat_batch(conversations, max_new_tokens=6, batch_size=3) == alone
    assert predictor.chat_batch(conversations, max_new_tokens=6, batch_size=2) == alone
