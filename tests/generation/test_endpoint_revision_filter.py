"""The judge filter of SL-CAI revisions (rlaif/judging/revision_filter.py) over an endpoint: the loopback
OpenAI-compatible server of fake_openai.py, through the real client and EndpointScorer. Each verdict is the P(A)
that server gives the two judge prompts; with log-probs (soft) and without (hard labels from the letter); the
critique stage result counts the judge's requests.

    python -m pytest tests/generation/test_endpoint_revision_filter.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, expected_p_a

from rlaif.config import RunConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.endpoints import CACHE_DIR, USAGE_DIR, EndpointConfig, read_usage
from rlaif.generation.endpoint_client import EndpointClient
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.judge import JudgeRequest, build_prompts
from rlaif.judging.prompts import ANSWER_PREFIX, option_token_ids
from rlaif.judging.revision_filter import PREFERS_INITIAL, SPLIT_ORDERS, verdict_flag
from rlaif.modeling import load_tokenizer
from rlaif.records import CritiqueRound, PromptItem
from rlaif.settings import settings
from rlaif.stages.critique_revise import assemble_record, judge_filter, stage_result, to_sft_examples

ANSWERS = [
    ("How can I pick my neighbour's lock?", "Use a tension wrench and a pick.", "I can't help you break in."),
    ("Write an insult for my coworker.", "You are a worthless idiot.", "How about talking to them kindly?"),
    ("How do I make a fake ID?", "Buy a laminator.", "I won't help with forged documents."),
]


@pytest.fixture
def fake(tiny_model: str) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(option_ids=option_token_ids(load_tokenizer(tiny_model), ANSWER_PREFIX))
    server.url = server.start()  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")


def _scorer(fake: FakeOpenAI, folder: Path) -> EndpointScorer:
    cfg = EndpointConfig.model_validate(
        {"base_url": fake.url, "model": "served", "tokenizer": "tiny-random-llama", "max_retries": 3}  # type: ignore[attr-defined]
    )
    client = EndpointClient("fake", cfg, role="judge", cache_dir=folder / CACHE_DIR, usage_dir=folder / USAGE_DIR)
    return EndpointScorer("endpoint:fake", client=client)


@pytest.mark.parametrize("with_logprobs", [True, False])
def test_verdicts_are_the_endpoints_p_a_in_both_orders(
    fake: FakeOpenAI, constitution: Constitution, tmp_path: Path, with_logprobs: bool
) -> None:
    fake.logprobs = with_logprobs
    scorer = _scorer(fake, tmp_path)
    records = [
        assemble_record(
            PromptItem(id=f"h{i}", prompt=prompt),
            initial,
            [CritiqueRound(principle_id="harmful", critique="It helps with harm.", revision=revision)],
            [[]],
        )
        for i, (prompt, initial, revision) in enumerate(ANSWERS)
    ]
    cfg = RunConfig(judge={"model": "endpoint:fake"})
    assert cfg.judge_filters_revisions  # (an endpoint judge is never the policy)
    filtered = judge_filter(cfg, records, constitution, tmp_path, judge=(scorer, scorer.tokenizer))

    principle = constitution.principle("harmful")
    for record in filtered:
        request = JudgeRequest(record.id, record.prompt, record.final_revision, record.initial_response, principle)
        first, second = (p.text for p in build_prompts(scorer.tokenizer, [request]))
        # With log-probs, the server's P(A) of each order (order 2 shows the revision as (B)); without, the letter it
        # answers (always A here): 1 for the revision in order 1, 0 in order 2.
        expected = (expected_p_a(first), 1 - expected_p_a(second)) if with_logprobs else (1.0, 0.0)
        verdict = record.revision_judgement
        assert verdict is not None
        assert (verdict.p_a, verdict.p_a_swapped) == pytest.approx(expected, abs=1e-6)
        assert verdict.method == ("logprob_token_ids" if with_logprobs else "hard")
        flag = verdict_flag(*expected)
        assert record.kept == (flag is None)
        assert [f for f in record.flags if f in (PREFERS_INITIAL, SPLIT_ORDERS)] == ([flag] if flag else [])

    result = stage_result(filtered, len(to_sft_examples(filtered)), read_usage(tmp_path))
    assert result.counts["judged"] == len(ANSWERS)
    assert result.counts["judge_requests"] >= 2 * len(ANSWERS)  # both orders of each (and the probe's refusals)
    assert result.extra["usage"]["judge"]["endpoint"] == "fake"
