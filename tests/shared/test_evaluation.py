"""Metrics on hand-made inputs, and the LLM judge against a fake OpenAI-compatible server
(a real HTTP server on loopback: the remote judge is what cannot exist here)."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from shared.evaluation.judge import JudgeConfig, LLMJudge
from shared.evaluation.medvqa import VQAResult, medvqa_scores
from shared.evaluation.scores import (
    accuracy,
    binary_auc,
    closed_match,
    macro_f1,
    normalize_answer,
    option_probabilities,
    token_recall,
)


def test_auc_counts_ties_half_and_is_undefined_for_one_class() -> None:
    assert binary_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert math.isnan(binary_auc([0.2, 0.9], [1, 1]))


def test_option_probabilities_and_accuracy() -> None:
    probabilities = option_probabilities(np.array([[-1.0, -3.0], [-2.0, -2.0], [0.0, 5.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[1, 0] == pytest.approx(0.5)
    assert accuracy(probabilities.argmax(axis=1).tolist(), [0, 0, 1]) == 1.0


def test_macro_f1_counts_every_class() -> None:
    # 8 classes, only two occur and both are predicted right: 2 of 8 classes have F1 1
    assert macro_f1([0, 1, 1], [0, 1, 1], classes=8) == pytest.approx(2 / 8)
    assert macro_f1([0, 0], [0, 1], classes=2) == pytest.approx((2 / 3 + 0) / 2)


def test_answer_matching() -> None:
    assert normalize_answer("The Left  Lung!") == "left lung"
    assert closed_match("Yes.", "yes") and not closed_match("no", "yes")
    assert token_recall("the left lung is enlarged", "left lung") == 1.0
    assert token_recall("right lung", "left lung") == 0.5


class _FakeJudge(BaseHTTPRequestHandler):
    mode = "grade"  # grade | junk | slow
    calls = 0

    def do_POST(self) -> None:
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        if self.mode == "slow":
            time.sleep(2)
        reference = prompt.split("Reference answer: ")[1].split("\n")[0]
        candidate = prompt.split("Candidate answer: ")[1].split("\n")[0]
        word = (
            "maybe?"
            if self.mode == "junk"
            else ("Yes" if reference.lower() in candidate.lower() else "no")
        )
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": word},
                }
            ],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the slow mode's client gave up first
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_judge() -> Iterator[str]:
    _FakeJudge.mode, _FakeJudge.calls = "grade", 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


RESULTS = [
    VQAResult("Which organ?", "lung", "the lung", "OPEN"),
    VQAResult("Which side?", "left", "right", "OPEN"),
    VQAResult("Is it normal?", "yes", "Yes", "CLOSED"),
    VQAResult("Is it big?", "no", "yes", "CLOSED"),
]


def test_offline_scores_use_token_recall() -> None:
    scores = medvqa_scores(RESULTS)
    assert scores["closed"] == 0.5 and scores["open"] == 0.5 and scores["overall"] == 0.5
    assert scores["unjudged"] == 0


def test_judge_grades_and_caches(
    fake_judge: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-never-logged")
    config = JudgeConfig(
        model="grader",
        base_url=fake_judge,
        cache_path=tmp_path / "v.jsonl",
        api_key_env="JUDGE_KEY",
    )
    scores = medvqa_scores(RESULTS, LLMJudge(config))
    assert scores["open"] == 0.5 and scores["overall"] == 0.5 and scores["unjudged"] == 0
    assert _FakeJudge.calls == 2
    again = LLMJudge(config)
    assert medvqa_scores(RESULTS, again) == scores
    assert _FakeJudge.calls == 2 and again.calls == 0  # the rerun cost nothing
    assert "sk-secret" not in (tmp_path / "v.jsonl").read_text()


def test_junk_verdicts_are_retried_then_counted_not_scored(fake_judge: str, tmp_path: Path) -> None:
    _FakeJudge.mode = "junk"
    judge = LLMJudge(
        JudgeConfig(
            model="grader", base_url=fake_judge, cache_path=tmp_path / "v.jsonl", attempts=3
        )
    )
    scores = medvqa_scores(RESULTS, judge)
    assert scores["unjudged"] == 2 and math.isnan(scores["open"])
    assert scores["overall"] == 0.5  # the closed questions alone
    assert _FakeJudge.calls == 6 and judge.failures == 2
    assert not (tmp_path / "v.jsonl").exists()  # nothing junk was cached


def test_judge_that_times_out(fake_judge: str, tmp_path: Path) -> None:
    _FakeJudge.mode = "slow"
    judge = LLMJudge(
        JudgeConfig(
            model="grader",
            base_url=fake_judge,
            cache_path=tmp_path / "v.jsonl",
            attempts=2,
            timeout_s=0.3,
        )
    )
    assert judge.verdict("q", "lung", "lung") is None
    assert judge.failures == 1 and judge.calls == 2
