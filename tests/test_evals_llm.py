"""The LLM explain-then-score eval (``interp.evals.llm``) against a small OpenAI-compatible
server started in the test, whose answers are known:

- an *oracle* that reads Othello excerpts back into moves and recomputes the latent's
  activations with the real model and SAE: its explanation names the latent whose
  activations match the marked moves, and it answers detection and fuzzing exactly, so
  both scores must be 1.0 (and naming the right latent checks the marks);
- a server that always answers 0: balanced accuracy 0.5 on both tasks;
- answers wrapped in prose (parsed) and malformed ones (counted as failures, no crash);
- nothing listening, an unknown model (404), retries, the API key header.
"""
from __future__ import annotations

import http.server
import json
import re
import socket
import threading

import pytest
import torch

from interp.errors import DataError, InterpError, UnknownNameError, UsageError
from interp.evals import llm

SAE_NAME = "othello/blocks.3.hook_resid_post/topk"
SMALL = dict(n_contexts=32, n_explain_top=4, n_explain_sampled=2, n_score_top=2,
             n_score_sampled=2, n_score_negative=4, examples_per_prompt=4, batch_size=64)
N_LATENTS = 3


# ------------------------------------------------------------------ a fake LLM server
class FakeLLM:
    """An OpenAI-compatible ``/v1/chat/completions`` on a free loopback port. ``answer``
    maps a request body to the reply text, or to (HTTP status, JSON body)."""

    def __init__(self, answer):
        self.answer, self.requests = answer, []

    def __enter__(self) -> "FakeLLM":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": body})
                reply = fake.answer(body) if self.path == "/v1/chat/completions" else \
                    (404, {"error": {"message": f"no route {self.path}"}})
                status, payload = reply if isinstance(reply, tuple) else (200, {
                    "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}]})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def kind_of(body: dict) -> str:
    """Which request this is, from the prompt the eval wrote."""
    system = body["messages"][0]["content"]
    if body["messages"][0]["role"] != "system":
        return "check"
    if "Reply with one line" in system:
        return "explain"
    return "fuzzing" if "picked at random" in system else "detection"


def excerpts(body: dict) -> list[str]:
    return re.findall(r"^Excerpt \d+: (.*)$", body["messages"][-1]["content"], re.M)


def read_moves(text: str) -> tuple[list[str], list[bool]]:
    """The squares of an Othello excerpt and which are wrapped in << >>."""
    squares, marks, inside = [], [], False
    for word in text.split():
        if word.startswith(llm.MARK_OPEN):
            word, inside = word[2:], True
        closing = word.endswith(llm.MARK_CLOSE)
        squares.append(word[:-2] if closing else word)
        marks.append(inside)
        inside = inside and not closing
    return squares, marks


class OthelloOracle:
    """Answers as an LLM that knew the model: recomputes every latent on the excerpts."""

    def __init__(self, model, sae, fraction: float, wrap=None):
        from interp.data.othello import token_names

        self.model, self.sae, self.fraction = model, sae, fraction
        self.index = {name: i for i, name in enumerate(token_names())}
        self.lock = threading.Lock()
        self.wrap = wrap or (lambda kind, answers: json.dumps(answers))

    def acts(self, games: list[list[str]]) -> list[torch.Tensor]:
        """Each excerpt's (moves, m) activations: the excerpts start at the first move."""
        from interp.data.othello import BOS, PAD
        from interp.features.dashboard import dictionary_acts

        width = max(len(g) for g in games) + 1
        tokens = torch.tensor([[BOS] + [self.index[s] for s in g] + [PAD] * (width - 1 - len(g))
                               for g in games])
        with self.lock:
            acts = dictionary_acts(self.model, self.sae, tokens)
        return [acts[i, 1:1 + len(g)] for i, g in enumerate(games)]

    def marks(self, acts: torch.Tensor) -> torch.Tensor:
        return (acts > self.fraction * acts.amax(0)) & (acts > 0)

    def __call__(self, body: dict):
        kind = kind_of(body)
        if kind == "check":
            return "OK"
        parsed = [read_moves(t) for t in excerpts(body)]
        acts = self.acts([squares for squares, _ in parsed])
        if kind == "explain":
            matches = sum((self.marks(a) == torch.tensor(m)[:, None]).all(0).long()
                          for a, (_, m) in zip(acts, parsed))
            return f"Explanation: latent {int(matches.argmax())}"
        latent = int(re.search(r"Explanation: latent (\d+)", body["messages"][-1]["content"])[1])
        if kind == "detection":
            answers = [int(a[:, latent].max() > 0) for a in acts]
        else:
            answers = [int(torch.equal(self.marks(a)[:, latent], torch.tensor(m)))
                       for a, (_, m) in zip(acts, parsed)]
        return self.wrap(kind, answers)


def always_zero(body: dict) -> str:
    kind = kind_of(body)
    if kind in ("check", "explain"):
        return "Explanation: moves near the corners"
    return json.dumps([0] * len(excerpts(body)))


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch):
    """A key in the developer's environment must not reach the test servers."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def othello():
    from interp.models import load
    from interp.sae.release import load_pretrained

    return load("othello"), load_pretrained(SAE_NAME)


def evaluate(othello, fake: FakeLLM, **options) -> dict:
    model, sae = othello
    return llm.run(model, sae, "othello", llm_url=fake.url, llm_model="test-llm", seed=0,
                   **{"n_latents": N_LATENTS, **SMALL, **options})


# ------------------------------------------------------------------ end to end
def test_scores_follow_the_servers_policy(othello):
    """A server that knows the truth scores 1.0; one that always says 0 scores 0.5."""
    oracle = OthelloOracle(*othello, llm.LLMEvalConfig().mark_fraction)
    with FakeLLM(oracle) as fake:
        result = evaluate(othello, fake)
    summary, latents = result["summary"], result["details"]["latents"]
    assert set(result) == {"summary", "details", "config", "seconds"}
    json.dumps(result)  # JSON-serialisable
    assert len(latents) == N_LATENTS and summary["n_failures"] == 0
    for r in latents:
        assert r["explanation"] == f"latent {r['latent']}"  # the marks are the latent's
        assert r["detection"]["balanced_accuracy"] == 1.0
        assert r["fuzzing"]["balanced_accuracy"] == 1.0
        assert r["n_active_contexts"] >= llm.make_config(**SMALL).min_activating
        assert len(r["examples"]["detection"]) == SMALL["n_score_top"] + \
            SMALL["n_score_sampled"] + SMALL["n_score_negative"]
        fuzz = [e["correct"] for e in r["examples"]["fuzzing"]]
        assert fuzz.count(False) == len(fuzz) // 2  # half marked at random
    assert summary["detection"] == summary["fuzzing"] == summary["detection_f1"] == 1.0
    requests = [kind_of(q["body"]) for q in fake.requests]
    assert requests.count("check") == 1 and requests.count("explain") == N_LATENTS
    assert all(q["body"]["temperature"] == 0 and q["body"]["model"] == "test-llm"
               for q in fake.requests)
    assert "api_key" not in result["config"] and result["config"]["window_before"] >= 59

    with FakeLLM(always_zero) as fake:
        constant = evaluate(othello, fake)
    assert [r["latent"] for r in constant["details"]["latents"]] == \
        [r["latent"] for r in latents]  # the same seed picks the same latents
    for r in constant["details"]["latents"]:
        assert r["explanation"] == "moves near the corners"
        for task in ("detection", "fuzzing"):
            assert r[task]["balanced_accuracy"] == 0.5 and r[task]["recall"] == 0.0
            assert r[task]["n_answered"] == r[task]["n_examples"]
    assert constant["summary"]["detection"] == constant["summary"]["fuzzing"] == 0.5


class ProseOracle(OthelloOracle):
    """The oracle's detection answers inside prose and a reasoning block; fuzzing answers
    without a list; the first explanation a ramble with no ``Explanation:`` line."""

    rambled = False

    def __call__(self, body: dict):
        if kind_of(body) == "explain":
            with self.lock:
                first, self.rambled = not self.rambled, True
            if first:
                return "Well,\nit is hard to say.\nMaybe moves?"
        return super().__call__(body)


def test_prose_is_parsed_and_malformed_answers_are_failures(othello):
    def wrap(kind: str, answers: list[int]) -> str:
        if kind == "detection":
            return f"<think>hmm [1]</think>Looking at each excerpt.\n```json\n{answers}\n```"
        return "I cannot tell which markings are right."

    oracle = ProseOracle(*othello, llm.LLMEvalConfig().mark_fraction, wrap)
    with FakeLLM(oracle) as fake:
        result = evaluate(othello, fake)
    summary, latents = result["summary"], result["details"]["latents"]
    n_fuzz_prompts = sum(kind_of(q["body"]) == "fuzzing" for q in fake.requests)
    assert summary["detection"] == 1.0 and summary["n_scored_detection"] == N_LATENTS - 1
    assert summary["fuzzing"] is None and summary["n_scored_fuzzing"] == 0
    assert summary["n_explanation_failures"] == 1
    assert summary["n_failures"] == n_fuzz_prompts + 1 and n_fuzz_prompts > 0
    (unexplained,) = [r for r in latents if r["explanation"] is None]
    assert unexplained["detection"] is None and unexplained["fuzzing"] is None
    assert unexplained["failures"][0].startswith("no explanation in the answer")
    for r in latents:
        assert all("\n" not in f for f in r["failures"])
        if r is not unexplained:
            assert r["fuzzing"]["n_answered"] == 0 and r["fuzzing"]["balanced_accuracy"] is None
            assert all("fuzzing answer is not" in f for f in r["failures"])


# ------------------------------------------------------------------ refusals
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_one_line(othello):
    model, sae = othello
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(DataError) as e:
        llm.run(model, sae, "othello", llm_url=url, llm_model="m", **SMALL)
    message = str(e.value)
    assert "\n" not in message and f"no LLM answered at {url}" in message
    assert "connection refused" in message and "--llm-url" in message


def test_latents_asked_for(othello):
    """Given latents: one without enough examples is reported, not evaluated; one out of
    range is refused before any request."""
    model, sae = othello
    with pytest.raises(DataError, match=r"latents \[5000\] are out of range.*has 2048"):
        llm.run(model, sae, "othello", llm_url=f"http://127.0.0.1:{_free_port()}/v1",
                llm_model="m", latents=[5000], **SMALL)
    with FakeLLM(always_zero) as fake:
        result = evaluate(othello, fake, latents=[0, 4])
    assert [r["latent"] for r in result["details"]["latents"]] == [4]
    assert result["details"]["refused_latents"] == {"0": "active in 7 contexts, needs 10"}


def test_unknown_model_is_one_line_with_the_servers_message(othello, monkeypatch):
    model, sae = othello
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with FakeLLM(lambda body: (404, {"error": {"message": "model 'nope' not found,\n"
                                                          "try pulling it first"}})) as fake:
        with pytest.raises(UnknownNameError) as e:
            llm.run(model, sae, "othello", llm_url=fake.url + "/", llm_model="nope", **SMALL)
    message = str(e.value)
    assert "\n" not in message and "model 'nope' not found, try pulling it first" in message
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-from-env"


def test_bad_options_are_refused():
    with pytest.raises(UsageError, match="unknown option.*n_latent.*valid: n_latents"):
        llm.make_config(n_latent=3)
    with pytest.raises(UsageError, match="mark_fraction"):
        llm.make_config(mark_fraction=1.5)
    with pytest.raises(UsageError, match="not an http"):
        llm.ChatClient("localhost:8000/v1", "m")


# ------------------------------------------------------------------ the client
def test_client_retries_overload_and_sends_the_key_only_when_given():
    replies = iter([(503, {"error": {"message": "busy"}}), "fine"])
    with FakeLLM(lambda body: next(replies)) as fake:
        client = llm.ChatClient(fake.url, "m", api_key="sk-test", backoff=0.01)
        assert client.complete([{"role": "user", "content": "hi"}], 5) == "fine"
        assert [q["headers"].get("Authorization") for q in fake.requests] == ["Bearer sk-test"] * 2
    with FakeLLM(lambda body: (503, {"message": "still busy"})) as fake:
        client = llm.ChatClient(fake.url, "m", retries=1, backoff=0.01)
        with pytest.raises(llm.RequestFailed, match="HTTP 503: still busy"):
            client.complete([{"role": "user", "content": "hi"}], 5)
        assert len(fake.requests) == 2 and "Authorization" not in fake.requests[0]["headers"]
    with FakeLLM(lambda body: (400, {"detail": "prompt too long"})) as fake:
        with pytest.raises(llm.RequestFailed, match="HTTP 400: prompt too long"):
            llm.ChatClient(fake.url, "m", backoff=0.01).complete([], 5)
        assert len(fake.requests) == 1  # a bad request is not retried
        with pytest.raises(InterpError, match="did not answer a test request"):
            llm.ChatClient(fake.url, "m").check()


# ------------------------------------------------------------------ parsing and scores
@pytest.mark.parametrize("answer,expected", [
    ("[1, 0, 1]", [1, 0, 1]),
    ("Sure. Here you go: [1,0,1]. Hope that helps!", [1, 0, 1]),
    ('{"answers": ["1", "0", "1"]}', [1, 0, 1]),
    ("[true, false, true]", [1, 0, 1]),
    ("First I list them [1, 2, 3], then: [0, 0, 1]", [0, 0, 1]),
    ("<think>maybe [1, 1, 1]</think>\n[0, 1, 0]", [0, 1, 0]),
    ("Excerpt 1: 1\nExcerpt 2: no\nExcerpt 3: 0", [1, 0, 0]),
    ("1, 0, 1", [1, 0, 1]),
    ("1 0", None),            # too few
    ("[1, 0, 1, 1]", None),   # too many
    ("[1, 2, 3]", None),      # indices, not flags
    ("I think the first and the last.", None),
    ("", None),
])
def test_parse_binary_list(answer, expected):
    assert llm.parse_binary_list(answer, 3) == expected


@pytest.mark.parametrize("answer,expected", [
    ("Explanation: moves on the a-file", "moves on the a-file"),
    ("**Explanation:** the keyword `def`.", "the keyword `def`"),
    ("[EXPLANATION]: opening parentheses", "opening parentheses"),
    ("Let me think.\nThe marks are corners.\nExplanation: corner squares", "corner squares"),
    ("<think>long\nreasoning</think>Explanation: closing brackets", "closing brackets"),
    ("the word 'return'", "the word 'return'"),
    ('"closing brackets."', "closing brackets"),
    ("Many things.\nSome are corners.\nOthers are edges.", None),
    ("Explanation:   ", None),
    ("", None),
])
def test_parse_explanation(answer, expected):
    assert llm.parse_explanation(answer) == expected


def test_binary_scores_by_hand():
    truth = [True, True, True, False, False, None]
    scores = llm.binary_scores([1, 1, 0, 1, 0, None], truth[:5] + [True])
    # answered 5: TP 2, FN 1, FP 1, TN 1; the unanswered one is left out
    assert scores["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(3 / 5)
    assert (scores["n_examples"], scores["n_answered"]) == (6, 5)
    only_positives = llm.binary_scores([1, 1], [True, True])
    assert only_positives["balanced_accuracy"] is None and only_positives["recall"] == 1.0


def test_render_marks_runs_of_tokens():
    assert llm.render_excerpt(["d3", "c5", "f6", "e3"], [False, True, True, False], " ") == \
        "d3 <<c5 f6>> e3"
    assert llm.render_excerpt(["def", " f", "(x"], [True, False, True], "") == "<<def>> f<<(x>>"
