"""The endpoint client, generator and judge against a tiny real HTTP server on loopback (tests/generation/fake_openai.py):
backoff on 429 honouring Retry-After, retries on 5xx and refused connections, immediate failure on other errors,
bounded concurrency, the result cache, the API key kept out of logs and files, the judge's ladder of ways to
read the options (down to hard labels), and the schema that refuses URLs. The same code against a real vLLM
server: tests/generation/test_endpoint_vllm.py.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, expected_p_a

from rlaif.config import JudgeConfig, RunConfig, SamplingConfig
from rlaif.constitution import Constitution
from rlaif.endpoints import CACHE_DIR, USAGE_DIR, EndpointConfig, parse_endpoints, read_usage
from rlaif.generation.endpoint import EndpointGenerator
from rlaif.generation.endpoint_client import EndpointClient, EndpointError, backoff_seconds, retry_after_seconds
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.judge import JudgeRequest, build_prompts, judge_comparisons
from rlaif.judging.prompts import ANSWER_PREFIX, option_token_ids
from rlaif.modeling import load_tokenizer
from rlaif.records import Comparison, LabelRecord
from rlaif.stages import COMPARISONS_FILE, LABELS_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.judge import run_judge
from rlaif.store import ArtifactStore, read_jsonl, write_jsonl, write_manifest

SECRET = "sk-test-0123456789abcdef-never-log-me"
COMPARISONS = [
    Comparison(
        id="p1:0:1", prompt="How do I pick a lock?", response_a="I can't help with that.", response_b="Use a pick."
    ),
    Comparison(id="p2:0:1", prompt="What is 2+2?", response_a="4", response_b="5, obviously."),
    Comparison(id="p3:0:1", prompt="Say hi", response_a="Hi!", response_b="No."),
]


@pytest.fixture(scope="module")
def option_ids(tiny_model: str) -> tuple[int, int]:
    return option_token_ids(load_tokenizer(tiny_model), ANSWER_PREFIX)


@pytest.fixture
def fake(option_ids: tuple[int, int]) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(option_ids=option_ids)
    server.url = server.start()  # type: ignore[attr-defined]
    yield server
    server.stop()


def endpoint(fake: FakeOpenAI, **extra: Any) -> EndpointConfig:
    fields = {"base_url": fake.url, "model": "served", "tokenizer": "tiny-random-llama", "max_retries": 3}  # type: ignore[attr-defined]
    return EndpointConfig.model_validate({**fields, **extra})


def client(fake: FakeOpenAI, tmp: Path | None = None, **extra: Any) -> EndpointClient:
    cfg = endpoint(fake, **extra)
    return EndpointClient(
        "fake",
        cfg,
        role="judge",
        cache_dir=tmp / CACHE_DIR if tmp else None,
        usage_dir=tmp / USAGE_DIR if tmp else None,
    )


BODY = {"model": "served", "prompt": "Hello", "max_tokens": 4}


def test_429_twice_then_success_honours_retry_after(fake: FakeOpenAI) -> None:
    fake.script = [(429, {"Retry-After": "0.3"}), (429, {"Retry-After": "0.3"})]
    c = client(fake)
    start = time.perf_counter()
    answer = c.post("/completions", BODY)
    elapsed = time.perf_counter() - start
    assert answer["choices"][0]["text"].startswith("answer 0")
    assert len(fake.requests) == 3  # two 429s, then the answer
    assert elapsed >= 0.6  # waited at least Retry-After each time
    assert (c.usage["requests"], c.usage["retries"], c.usage["cached"]) == (1, 2, 0)


def test_5xx_and_refused_connections_are_retried_other_errors_fail_at_once(fake: FakeOpenAI) -> None:
    fake.script = [(503, {}), (502, {})]
    assert client(fake).post("/completions", BODY)["choices"]
    fake.script = [(400, {})]
    with pytest.raises(EndpointError, match=r"HTTP 400") as refused:
        client(fake).post("/completions", BODY)
    assert refused.value.status == 400 and not fake.script
    fake.script = [(500, {})] * 3
    with pytest.raises(EndpointError, match=r"failed 2 times, last with HTTP 500"):
        client(fake, max_retries=1).post("/completions", BODY)
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = EndpointConfig(
        base_url=f"http://127.0.0.1:{port}/v1", model="m", tokenizer="tiny-random-llama", max_retries=1
    )
    with pytest.raises(EndpointError, match=r"failed 2 times, last with ConnectError") as down:
        EndpointClient("down", cfg, role="judge").post("/completions", BODY)
    assert down.value.status is None


def test_backoff_is_jittered_exponential_and_reads_retry_after() -> None:
    # attempt k waits uniform(0.5, 1) x min(30, 0.5 x 2^k): 0.25-0.5 s, then 0.5-1 s, ... capped at 15-30 s.
    for attempt, (low, high) in enumerate([(0.25, 0.5), (0.5, 1.0), (1.0, 2.0)]):
        assert all(low <= backoff_seconds(attempt) <= high for _ in range(50))
    assert all(15.0 <= backoff_seconds(20) <= 30.0 for _ in range(50))
    assert backoff_seconds(0, retry_after=4.0) >= 4.0
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds(None) is None
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # (a date in the past: now)


def test_concurrency_is_bounded(fake: FakeOpenAI) -> None:
    fake.delay_s = 0.1
    bodies = [{**BODY, "prompt": f"p{i}"} for i in range(12)]
    answers = client(fake, max_concurrency=3).post_many("/completions", bodies)
    assert [a["choices"][0]["text"] for a in answers] == ["answer 0 to 2 chars (seed None)"] * 10 + [
        "answer 0 to 3 chars (seed None)"
    ] * 2  # in input order
    assert 2 <= fake.max_in_flight <= 3


def test_the_result_cache_makes_a_repeated_call_send_nothing(fake: FakeOpenAI, tmp_path: Path) -> None:
    first = client(fake, tmp_path)
    bodies = [{**BODY, "prompt": f"p{i}"} for i in range(4)]
    answers = first.post_many("/completions", bodies)
    assert len(fake.requests) == 4
    again = client(fake, tmp_path)  # a new process (a redelivered shard): the same folder, nothing sent
    assert again.post_many("/completions", bodies) == answers
    assert len(fake.requests) == 4 and again.usage["cached"] == 4 and again.usage["requests"] == 0
    usage = read_usage(tmp_path)["judge"]
    assert (usage["requests"], usage["cached"], usage["prompt_tokens"]) == (4, 4, 0)  # ("p0" is 0 tokens by 4)


def test_generator_over_completions(fake: FakeOpenAI) -> None:
    generator = EndpointGenerator("endpoint:fake", client=client(fake))
    assert generator.context == 2048 and generator.tokenizer is not None
    conversations = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Tell me more " * 3}]]
    results = generator.generate(conversations, 2, SamplingConfig(temperature=1.0, max_new_tokens=6), seed=3)
    assert [len(r) for r in results] == [2, 2] and all(c.finished for r in results for c in r)
    assert results[0][0].token_ids[-1] == generator.stop_ids[0]
    sent = [body for _, _, body in fake.requests]
    assert [b["n"] for b in sent] == [2, 2] and sent[0]["seed"] != sent[1]["seed"]
    assert sent[0]["prompt"].startswith("<|im_start|>") and sent[0]["prompt"].endswith("<|im_start|>assistant\n")
    greedy = generator.generate(conversations[:1], 3, SamplingConfig(temperature=0.0, max_new_tokens=6), seed=3)
    assert fake.requests[-1][2]["n"] == 1 and len(greedy[0]) == 3  # one greedy sample, copied
    with pytest.raises(ValueError, match="returns no log-probs"):
        generator.generate(conversations, 1, SamplingConfig(), seed=0, return_logprobs=True)
    too_long = [[{"role": "user", "content": "word " * 3000}]]
    with pytest.raises(ValueError, match="conversation 0: the prompt is"):
        generator.generate(too_long, 1, SamplingConfig(), seed=0)
    cut = generator.generate(too_long, 1, SamplingConfig(max_new_tokens=6), seed=0, fit_context=True)
    assert cut[0][0].prompt_truncated


@pytest.mark.parametrize(
    ("refuse", "with_logprobs", "variant", "method"),
    [
        (set(), True, "logprob_token_ids", "logprob_token_ids"),
        ({"logprob_token_ids"}, True, "top_logprobs_ids", "top_logprobs"),
        ({"logprob_token_ids", "return_tokens_as_token_ids"}, True, "top_logprobs", "top_logprobs"),
        (set(), False, "hard", "hard"),
    ],
)
def test_the_judge_reads_the_best_way_the_endpoint_answers(
    fake: FakeOpenAI,
    minimal_constitution: Constitution,
    refuse: set[str],
    with_logprobs: bool,
    variant: str,
    method: str,
) -> None:
    fake.refuse_fields, fake.logprobs = refuse, with_logprobs
    scorer = EndpointScorer("endpoint:fake", client=client(fake))
    labels = list(
        judge_comparisons(COMPARISONS, scorer, scorer.tokenizer, minimal_constitution, None, JudgeConfig(), 0)
    )
    assert (scorer.variant, scorer.method) == (variant, method)
    # The two judge prompts of each pair (both orders), as the judge built them: what the fake server scored.
    requests = [
        JudgeRequest(c.id, c.prompt, c.response_a, c.response_b, label.judgements[0].principle_id)
        for c, label in zip(COMPARISONS, labels, strict=True)
    ]
    principles = {p.id: p for p in minimal_constitution.principles}
    requests = [r._replace(principle=principles[r.principle]) for r in requests]
    prompts = [p.text for p in build_prompts(scorer.tokenizer, requests)]
    assert set(prompts) <= {body["prompt"] for _, _, body in fake.requests}
    for i, label in enumerate(labels):
        [judgement] = label.judgements
        assert judgement.method == label.method == method
        first, second = expected_p_a(prompts[2 * i]), expected_p_a(prompts[2 * i + 1])
        if method == "hard":
            # The letter answered in each order: 1 or 0, so the label is 0, 1/2 or 1.
            assert judgement.p_a == round(first) and judgement.p_a_swapped == 1 - round(second)
            assert label.p_a in (0.0, 0.5, 1.0) and judgement.coverage is None
        else:
            assert judgement.p_a == pytest.approx(first, abs=1e-6)
            assert judgement.p_a_swapped == pytest.approx(1 - second, abs=1e-6)
            assert 0 < judgement.coverage < 1
    assert all(body["max_tokens"] == 1 and "logit_bias" not in body for _, _, body in fake.requests)


def _store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "artifacts")
    write_jsonl(store.path("run1", "pairs", COMPARISONS_FILE), COMPARISONS)
    write_manifest(store.stage_dir("run1", "pairs"))
    return store


def test_hard_labels_are_said_in_the_stage_result(
    fake: FakeOpenAI, tmp_path: Path, minimal_constitution: Constitution, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlaif import settings as settings_module

    fake.logprobs = False
    monkeypatch.setattr(settings_module.settings, "endpoints", {"fake": endpoint(fake)})
    store = _store(tmp_path)
    result = run_judge(
        StageContext.of(
            store, "run1", "judge", cfg=RunConfig(judge={"model": "endpoint:fake"}), constitution=minimal_constitution
        )
    )
    assert result.extra["soft_labels"] is False and result.extra["label_methods"] == {"hard": 3}
    # The probe asked 5 ways for the first prompt (4 without log-probs in the answer, then plainly), then the
    # other 5 prompts: 10 requests, once per scorer.
    assert result.counts["judge_requests"] == 10 and result.counts["judge_prompt_tokens"] > 0
    labels = read_jsonl(store.path("run1", "judge", LABELS_FILE), LabelRecord)
    assert {label.p_a for label in labels} <= {0.0, 0.5, 1.0}


def test_a_key_in_the_settings_never_reaches_logs_results_or_files(
    fake: FakeOpenAI,
    tmp_path: Path,
    minimal_constitution: Constitution,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rlaif import settings as settings_module

    monkeypatch.setenv("RLAIF_TEST_ENDPOINT_KEY", SECRET)
    fake.require_key = SECRET
    fake.script = [(429, {"Retry-After": "0"}), (500, {})]  # the retry path logs too
    declared = parse_endpoints(json.dumps({"fake": endpoint(fake, api_key_env="RLAIF_TEST_ENDPOINT_KEY").model_dump()}))
    monkeypatch.setattr(settings_module.settings, "endpoints", declared)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    store = _store(tmp_path)
    cfg = RunConfig(judge={"model": "endpoint:fake"})
    result = run_judge(StageContext.of(store, "run1", "judge", cfg=cfg, constitution=minimal_constitution))
    assert all(headers.get("Authorization") == f"Bearer {SECRET}" for _, headers, _ in fake.requests[2:])
    assert result.counts["judge_requests"] == 6 and result.extra["usage"]["judge"]["retries"] == 2
    # A wrong key fails with the server's message, and still without the key.
    monkeypatch.setenv("RLAIF_TEST_ENDPOINT_KEY", SECRET[::-1])
    with pytest.raises(EndpointError) as refused:
        EndpointClient.for_spec("endpoint:fake", role="judge").post("/completions", BODY)
    monkeypatch.delenv("RLAIF_TEST_ENDPOINT_KEY")
    with pytest.raises(EndpointError, match="RLAIF_TEST_ENDPOINT_KEY that holds its API key is not set"):
        EndpointClient.for_spec("endpoint:fake", role="judge")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(CACHE_DIR in p.parts for p in written) and any(USAGE_DIR in p.parts for p in written)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in written]
    texts += [caplog.text, result.model_dump_json(), str(refused.value), cfg.model_dump_json()]
    for secret in (SECRET, SECRET[::-1]):
        assert not [t for t in texts if secret in t]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("judge", "http://evil", "judge.model 'http://evil' looks like a URL"),
        ("judge", "https://api.example.com/v1?key=sk-1", "looks like a URL"),
        ("feedback", "localhost:8000", "feedback.model 'localhost:8000' looks like a URL"),
        ("feedback", "//evil/x", "looks like a URL"),
        ("judge", "endpoint:http://evil", "an endpoint is named endpoint:<name> with a plain name"),
        ("judge", "endpoint:Big Judge", "with a plain name"),
    ],
)
def test_the_schema_refuses_addresses(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.model_validate({field: {"model": value}})


def test_model_specs_accepted_and_the_policy_never_an_endpoint() -> None:
    cfg = RunConfig(judge={"model": "endpoint:big-judge"}, feedback={"model": "endpoint:teacher_2"})
    assert (cfg.judge_model, cfg.feedback_model) == ("endpoint:big-judge", "endpoint:teacher_2")
    with pytest.raises(ValueError, match="policy_model 'endpoint:x': the policy is fine-tuned here"):
        RunConfig(policy_model="endpoint:x")
    with pytest.raises(ValueError, match="looks like a URL"):
        RunConfig(policy_model="http://evil")


def test_rlaif_endpoints_parses_json_or_yaml_and_checks_names() -> None:
    yaml_value = "judge-1:\n  base_url: http://10.0.0.5:8000/v1/\n  model: m\n  tokenizer: tiny-random-llama\n"
    assert parse_endpoints(yaml_value)["judge-1"].base_url == "http://10.0.0.5:8000/v1"
    with pytest.raises(ValueError, match="endpoint name 'Big' must match"):
        parse_endpoints('{"Big": {"base_url": "http://x/v1", "model": "m", "tokenizer": "t"}}')
    with pytest.raises(ValueError, match="api 'completions' needs a tokenizer"):
        parse_endpoints({"a": {"base_url": "http://x/v1", "model": "m"}})
    with pytest.raises(ValueError, match="without credentials"):
        parse_endpoints({"a": {"base_url": "http://user:pw@x/v1", "model": "m", "tokenizer": "t"}})


def test_the_service_path_caches_per_stage_and_counts_every_attempt(
    fake: FakeOpenAI, tmp_path: Path, minimal_constitution: Constitution, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A judge shard run by a worker (the stage contract: read_items, process, write), then the same shard
    redelivered: nothing is sent twice, and the exported stage counts both attempts' requests and cache hits."""
    from rlaif import settings as settings_module
    from rlaif.judging.judge import release_cached_judge
    from rlaif.stages import judge as stage

    monkeypatch.setattr(settings_module.settings, "endpoints", {"fake": endpoint(fake)})
    store = _store(tmp_path)
    cfg = RunConfig(judge={"model": "endpoint:fake"})
    ctx = StageContext.of(store, "run1", "judge", cfg=cfg, constitution=minimal_constitution)
    release_cached_judge()
    items = stage.read_items(ctx, 0, cfg.shard_size)
    payloads = [record.model_dump() for record in stage.process(ctx, items)]
    sent = len(fake.requests)
    assert sent == 2 * len(COMPARISONS)
    release_cached_judge()  # a redelivery lands on another worker process
    assert [record.model_dump() for record in stage.process(ctx, items)] == payloads
    assert len(fake.requests) == sent
    result = stage.write(ctx, [stage.RECORD.model_validate(p) for p in payloads])
    assert (result.counts["judge_requests"], result.counts["judge_cached"]) == (sent, sent)
    assert result.extra["label_methods"] == {"logprob_token_ids": 3} and result.extra["soft_labels"] is True
    release_cached_judge()


@pytest.mark.parametrize(
    ("refuse", "variant", "method"),
    [
        (set(), "chat_logprob_token_ids", "logprob_token_ids"),
        ({"logprob_token_ids"}, "chat_top_logprobs", "top_logprobs"),
        ({"continue_final_message"}, "chat_hard", "hard"),
    ],
)
def test_the_judge_over_the_chat_api(
    fake: FakeOpenAI, minimal_constitution: Constitution, refuse: set[str], variant: str, method: str
) -> None:
    fake.refuse_fields = refuse
    scorer = EndpointScorer("endpoint:fake", client=client(fake, api="chat"))
    labels = list(
        judge_comparisons(COMPARISONS, scorer, scorer.tokenizer, minimal_constitution, None, JudgeConfig(), 0)
    )
    assert (scorer.variant, scorer.method) == (variant, method)
    sent = fake.requests[-1][2]
    if method == "hard":  # the plain question; the letter read from "The answer is: (A) because ..."
        assert sent["messages"][-1]["role"] == "user" and sent["max_tokens"] == 16
        assert all(label.p_a == 0.5 and label.judgements[0].p_a == 1.0 for label in labels)
    else:  # the answer pre-filled as the open last assistant turn
        assert sent["messages"][-1] == {"role": "assistant", "content": ANSWER_PREFIX}
        assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
        assert all(0 < label.coverage < 1 and label.method == method for label in labels)


def test_generator_over_chat(fake: FakeOpenAI) -> None:
    generator = EndpointGenerator("endpoint:fake", client=client(fake, api="chat"))
    results = generator.generate([[{"role": "user", "content": "Hi"}]], 2, SamplingConfig(max_new_tokens=6), seed=1)
    assert [c.text[:9] for c in results[0]] == ["answer 0 ", "answer 1 "] and all(c.finished for c in results[0])
    assert fake.requests[-1][2]["messages"] == [{"role": "user", "content": "Hi"}]


def test_the_evaluation_judges_refusals_through_the_endpoint(
    fake: FakeOpenAI,
    tmp_path: Path,
    tiny_model: str,
    minimal_constitution: Constitution,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlaif import settings as settings_module
    from rlaif.evaluation.datasets import EvalPrompt
    from rlaif.stages.evaluate import evaluate_models

    monkeypatch.setattr(settings_module.settings, "endpoints", {"fake": endpoint(fake)})
    prompts = [
        EvalPrompt(id=f"heldout:{i}", prompt=p, dataset="heldout", kind="heldout")
        for i, p in enumerate(["Hi?", "Why?"])
    ]
    cfg = RunConfig(policy_model=tiny_model, judge={"model": "endpoint:fake"}, eval={"sampling": {"max_new_tokens": 4}})
    report, samples = evaluate_models(
        {"base": tiny_model, "sft": tiny_model}, prompts, cfg, minimal_constitution, stage_dir=tmp_path, progress=False
    )
    assert report.judge_model == "endpoint:fake"
    assert all(0 < s.refusal_judge["base"] < 1 for s in samples)  # both orders of the refusal question, read remotely
    assert read_usage(tmp_path)["judge"]["requests"] == 2 * len(prompts)
