"""dpo/evaluate/judge.py against a stub OpenAI-compatible server on 127.0.0.1: A/B order seeded and recorded,
strict parsing, retries on 429/5xx, a cache that makes a rerun free, malformed answers counted."""
import http.server
import json
import threading
import time

import pytest
import torch

from dpo.evaluate import judge as J
from dpo.evaluate.tables import summarize_verdicts


class StubHandler(http.server.BaseHTTPRequestHandler):
    """Answers chat completions like a judge that prefers the response containing "GOOD".

    server.script: a list of ("status", code) / ("answer", text) / ("raw", bytes) consumed one per request
    before the default behaviour; server.requests counts POSTs; server.max_in_flight the concurrency seen."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv.bodies.append(body)
            srv.auth.append(self.headers.get("Authorization"))
            action = srv.script.pop(0) if srv.script else None
        try:
            time.sleep(srv.delay)
            if action and action[0] == "status":
                self._send(action[1], b'{"error": {"message": "slow down"}}', retry_after=action[2] if len(action) > 2 else None)
                return
            if action and action[0] == "raw":
                self._send(200, action[1])
                return
            text = action[1] if action else self._verdict(body)
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _verdict(self, body) -> str:
        prompt = body["messages"][0]["content"]
        label = "More helpful" if "More helpful:" in prompt else "Preferred"
        a = prompt.split("A:\n", 1)[1].split("\n\n", 1)[0]
        return f"Comparison: one is better.\n{label}: {'A' if 'GOOD' in a else 'B'}"

    def _send(self, code, payload: bytes, retry_after=None):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.lock, server.requests, server.in_flight, server.max_in_flight = threading.Lock(), 0, 0, 0
    server.script, server.bodies, server.auth, server.delay = [], [], [], 0.0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def config(stub, tmp_path, **kw):
    return J.JudgeConfig(**{"url": stub.url, "model": "stub-judge", "api_key": "sk-test", "backoff": 0.01,
                            "cache_dir": tmp_path / "cache", "workers": 4, **kw})


def comparisons(n: int, good_candidate=lambda i: i % 3 != 0):
    post = "SUBREDDIT: r/test\nTITLE: a title\nPOST: My long post {i} about things.\nTL;DR:"
    return [{"id": i, "prompt": post.format(i=i),
             "candidate": f"GOOD summary {i}" if good_candidate(i) else f"poor summary {i}",
             "baseline": f"poor reference {i}" if good_candidate(i) else f"GOOD reference {i}"} for i in range(n)]


def test_order_is_seeded_recorded_and_undone(stub, tmp_path):
    judge = J.llm_judge(config(stub, tmp_path), task="summary", seed=7)
    items = comparisons(40)
    verdicts = judge(items)
    positions = [v["candidate_position"] for v in verdicts]
    assert positions == [J.candidate_position(7, i) for i in range(40)]
    assert 10 < positions.count("A") < 30  # both orders occur
    assert [v["winner"] for v in verdicts] == ["candidate" if i % 3 else "baseline" for i in range(40)]
    # what the judge read: the post alone, the candidate in the recorded slot
    body = next(b for b in stub.bodies if "post 0 about" in b["messages"][0]["content"])
    text = body["messages"][0]["content"]
    assert "POST:" not in text and "TL;DR" not in text and text.rstrip().endswith("Preferred: <A or B>")
    slot = "Summary A:\n" if positions[0] == "A" else "Summary B:\n"
    assert text.split(slot, 1)[1].startswith("poor summary 0")
    assert body["model"] == "stub-judge" and body["temperature"] == 0 and stub.auth[0] == "Bearer sk-test"
    other = J.llm_judge(config(stub, tmp_path), seed=8)(items)
    assert [v["candidate_position"] for v in other] != positions
    assert summarize_verdicts(verdicts)["wins"] == 26


def test_parse_verdict_is_strict():
    assert J.parse_verdict("Comparison: A is clearer.\nPreferred: A", "Preferred") == "A"
    assert J.parse_verdict("Comparison: x\n\nPreferred:B  \n", "Preferred") == "B"
    for bad in ["Preferred: A or B", "Preferred: a", "I prefer A", "Preferred: A\nThanks!", "**Preferred: A**",
                "Preferred: C", "", "More helpful: A"]:
        assert J.parse_verdict(bad, "Preferred") is None, bad
    assert J.parse_verdict("Comparison: x\nMore helpful: B", "More helpful") == "B"


def test_retries_on_429_and_5xx_then_succeeds(stub, tmp_path):
    stub.script = [("status", 429, 0), ("status", 503), ("status", 500)]
    verdicts = J.llm_judge(config(stub, tmp_path, workers=1))(comparisons(2))
    assert [v["status"] for v in verdicts] == ["ok", "ok"] and stub.requests == 5


def test_gives_up_after_max_retries_and_counts_an_error(stub, tmp_path):
    stub.script = [("status", 502)] * 3
    verdicts = J.llm_judge(config(stub, tmp_path, workers=1, max_retries=2))(comparisons(2))
    assert verdicts[0]["status"] == "error" and verdicts[0]["winner"] is None and "HTTP 502" in verdicts[0]["error"]
    assert verdicts[1]["status"] == "ok" and stub.requests == 4
    summary = summarize_verdicts(verdicts)
    assert summary["errors"] == 1 and summary["n"] == 1


def test_refusal_stops_at_once(stub, tmp_path):
    stub.script = [("status", 401)]
    with pytest.raises(J.JudgeRefused, match="HTTP 401"):
        J.llm_judge(config(stub, tmp_path, workers=1))(comparisons(3))
    assert stub.requests == 1


def test_cache_makes_a_rerun_free(stub, tmp_path):
    items = comparisons(12)
    first = J.llm_judge(config(stub, tmp_path))(items)
    assert stub.requests == 12 and stub.max_in_flight >= 1
    judge = J.llm_judge(config(stub, tmp_path))
    second = judge(items)
    assert stub.requests == 12 and judge.client.cache_hits == 12 and judge.client.requests == 0
    assert [(v["winner"], v["answer"]) for v in second] == [(v["winner"], v["answer"]) for v in first]
    assert all(v["cached"] for v in second)
    # another judge model is another question
    J.llm_judge(config(stub, tmp_path, model="other"))(items[:2])
    assert stub.requests == 14


def test_requests_in_flight(stub, tmp_path):
    stub.delay = 0.2
    J.llm_judge(config(stub, tmp_path, workers=4))(comparisons(8))
    assert stub.max_in_flight >= 2


def test_malformed_answers_are_counted_never_guessed(stub, tmp_path):
    stub.script = [("answer", "Both are fine, but I lean towards A."), ("raw", b"<html>oops</html>")]
    verdicts = J.llm_judge(config(stub, tmp_path, workers=1))(comparisons(3))
    assert [v["status"] for v in verdicts] == ["unparseable", "error", "ok"]
    assert verdicts[0]["winner"] is None and verdicts[0]["answer"].startswith("Both are fine")
    summary = summarize_verdicts(verdicts)
    assert (summary["unparseable"], summary["errors"], summary["n"]) == (1, 1, 1)


def test_dialogue_prompt(stub, tmp_path):
    items = [{"id": "d1", "prompt": "\n\nHuman: How do I boil an egg?\n\nAssistant:", "candidate": " GOOD: boil it",
              "baseline": " no idea"}]
    verdict = J.llm_judge(config(stub, tmp_path), task="dialogue")(items)[0]
    assert verdict["winner"] == "candidate" and verdict["answer"].endswith(f"More helpful: {verdict['candidate_position']}")
    text = stub.bodies[0]["messages"][0]["content"]
    assert "Human: How do I boil an egg?" in text and "Reply A:" in text
    with pytest.raises(J.JudgeError, match="judge task"):
        J.llm_judge(config(stub, tmp_path), task="poetry")


def test_config_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_JUDGE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("DPO_JUDGE_MODEL", "gpt-4-0314")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.delenv("DPO_JUDGE_API_KEY", raising=False)
    c = J.JudgeConfig.from_env(workers=2)
    assert (c.url, c.model, c.api_key, c.workers) == ("http://127.0.0.1:9/v1/chat/completions", "gpt-4-0314", "sk-env", 2)
    assert c.cache_dir == tmp_path / "cache" / "judge"  # DPO_CACHE_DIR (set by conftest)


def test_offline_judges():
    items = comparisons(6)
    scorer = lambda prompts, completions: torch.tensor([float("GOOD" in c) for c in completions])  # noqa: E731
    verdicts = J.score_judge(scorer)(items)
    assert [v["winner"] for v in verdicts] == ["candidate" if i % 3 else "baseline" for i in range(6)]
    tie = J.score_judge(lambda p, c: torch.zeros(len(c)))(items[:1])
    assert tie[0]["winner"] == "tie"
    rouge = J.rouge_judge()([{"id": 0, "prompt": "p", "candidate": "the cat sat", "baseline": "a dog ran",
                              "reference": "the cat sat down"},
                             {"id": 1, "prompt": "p", "candidate": "x", "baseline": "y"}])
    assert rouge[0]["winner"] == "candidate" and rouge[0]["candidate_score"] == pytest.approx(6 / 7)
    assert rouge[1]["status"] == "error"
