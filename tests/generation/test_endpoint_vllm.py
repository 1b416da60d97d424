"""The endpoint judge and feedback generator against a real vLLM OpenAI server on loopback, serving the embedded
model (one server per session: tests/generation/conftest.py). The test runs in the main virtualenv; only the
server comes from .venv-vllm.

- the endpoint judge's P(A) equals the in-process judge's on the same model within 1e-3, float32 both, for both
  orders of every pair (logprob_token_ids, and the top_logprobs fallback too);
- run_judge over the endpoint: labels with method and coverage, requests and tokens in the stage result, and a
  redelivered stage answered from the cache (nothing sent twice);
- critique-revise with feedback.model endpoint:<name> writes valid records;
- `rlaif judge-eval --judge endpoint:<name>` and `rlaif critique --feedback endpoint:<name>`;
- the server's API key (RLAIF_ENDPOINTS names the variable holding it) is in no log, result or written file.

    python -m pytest tests/generation/test_endpoint_vllm.py -m endpoint
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_server import REPO, SERVED, VLLMServer

from rlaif.config import JudgeConfig, RunConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.endpoints import EndpointConfig
from rlaif.generation.endpoint_client import EndpointClient
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.judge import judge_comparisons
from rlaif.prompts import load_prompts
from rlaif.records import Comparison, CritiqueRecord, LabelRecord
from rlaif.settings import settings
from rlaif.stages import COMPARISONS_FILE, CRITIQUE_RECORDS_FILE, INPUTS, LABELS_FILE, PROMPTS_FILE, SFT_DATA_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.critique_revise import run_critique_revise
from rlaif.stages.judge import run_judge
from rlaif.store import ArtifactStore, read_jsonl, verify_manifest, write_jsonl, write_manifest

pytestmark = pytest.mark.endpoint

KEY_ENV = "RLAIF_TEST_VLLM_KEY"
COMPARISONS = [
    Comparison(id="lock:0:1", prompt="How do I pick a lock?", response_a="I can't help with that.",
               response_b="Insert a tension wrench, then rake the pins with a pick until they set."),
    Comparison(id="math:0:1", prompt="What is 2+2?", response_a="2+2 is 4.", response_b="It is 5."),
    Comparison(id="joke:0:1", prompt="Tell me a joke.", response_a="No.",
               response_b="Why did the scarecrow win an award? He was outstanding in his field."),
    Comparison(id="poison:0:1", prompt="How can I poison my neighbour's dog?",
               response_a="Mix antifreeze into its food.", response_b="I won't help hurt an animal. If the dog is a "
               "problem, talk to your neighbour or animal control."),
]  # fmt: skip


@pytest.fixture(scope="module")
def local(vllm_server: VLLMServer) -> Iterator[EndpointConfig]:
    """`endpoint:local` declared in the settings, its key in KEY_ENV (the server refuses requests without it)."""
    cfg = EndpointConfig(
        base_url=vllm_server.base_url, model=SERVED, tokenizer="smollm2-135m-instruct", api_key_env=KEY_ENV,
        max_concurrency=4, timeout_s=120,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, vllm_server.key)
        patch.setattr(settings, "endpoints", {"local": cfg})
        yield cfg


@pytest.fixture(scope="module")
def harmless() -> Constitution:
    return load_constitution(settings.constitutions_dir / "harmless.yaml")


@pytest.fixture(scope="module")
def in_process(embedded_model: str, harmless: Constitution) -> list[LabelRecord]:
    from rlaif.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(embedded_model, dtype="float32")
    cfg = JudgeConfig(principles_per_label=2, dtype="float32")
    return list(judge_comparisons(COMPARISONS, model, tokenizer, harmless, None, cfg, 0, progress=False))


def _max_delta(ours: list[LabelRecord], theirs: list[LabelRecord]) -> float:
    """max |ΔP(A)| over both orders of every principle judgement of every pair."""
    deltas = [
        abs(x - y)
        for a, b in zip(ours, theirs, strict=True)
        for ja, jb in zip(a.judgements, b.judgements, strict=True)
        for x, y in ((ja.p_a, jb.p_a), (ja.p_a_swapped, jb.p_a_swapped))
    ]
    return max(deltas)


@pytest.mark.parametrize("variant", [None, "top_logprobs_ids"])
def test_endpoint_judge_equals_the_in_process_judge(
    local: EndpointConfig, harmless: Constitution, in_process: list[LabelRecord], variant: str | None
) -> None:
    scorer = EndpointScorer("endpoint:local")
    if variant is not None:  # the fallback of a server without logprob_token_ids
        scorer.variant, scorer.method = variant, "top_logprobs"
    cfg = JudgeConfig(principles_per_label=2)
    labels = list(judge_comparisons(COMPARISONS, scorer, scorer.tokenizer, harmless, None, cfg, 0, progress=False))
    delta = _max_delta(labels, in_process)
    readings = 2 * sum(len(label.judgements) for label in labels)
    print(f"\nmax |dP(A)| endpoint ({scorer.method}) vs in-process, {readings} readings: {delta:.2e}")
    assert delta < 1e-3
    assert scorer.method == ("logprob_token_ids" if variant is None else "top_logprobs")
    for ours, theirs in zip(labels, in_process, strict=True):
        assert [j.principle_id for j in ours.judgements] == [j.principle_id for j in theirs.judgements]
        assert ours.method == scorer.method and theirs.method == "logprobs"
        assert ours.coverage == pytest.approx(theirs.coverage, abs=1e-3)
    assert scorer.usage["requests"] == 2 * sum(len(label.judgements) for label in labels)


def _store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "artifacts")
    write_jsonl(store.path("run1", "pairs", COMPARISONS_FILE), COMPARISONS)
    write_manifest(store.stage_dir("run1", "pairs"))
    demo = REPO / "examples" / "demo_prompts.jsonl"
    write_jsonl(store.path("run1", INPUTS, PROMPTS_FILE), load_prompts(demo, limit=2))
    return store


def _assert_no_key(vllm_server: VLLMServer, root: Path, *texts: str) -> None:
    written = [p for p in root.rglob("*") if p.is_file()]
    assert written
    leaks = [str(p) for p in written if vllm_server.key in p.read_text(encoding="utf-8", errors="replace")]
    leaks += [text[:80] for text in texts if vllm_server.key in text]
    assert not leaks


def test_run_judge_over_the_endpoint_counts_tokens_and_pays_nothing_twice(
    local: EndpointConfig,
    vllm_server: VLLMServer,
    harmless: Constitution,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = _store(tmp_path)
    cfg = RunConfig(judge={"model": "endpoint:local", "principles_per_label": 2})
    result = run_judge(StageContext.of(store, "run1", "judge", cfg=cfg, constitution=harmless))
    labels = read_jsonl(store.path("run1", "judge", LABELS_FILE), LabelRecord)
    assert len(labels) == 4 and all(label.method == "logprob_token_ids" for label in labels)
    assert all(0.5 < label.coverage <= 1.0 for label in labels)  # the instruct model answers in format
    assert result.extra["soft_labels"] is True and result.metrics["judge/coverage"] > 0.5
    sent = result.counts["judge_requests"]
    assert sent == 2 * sum(len(label.judgements) for label in labels)
    assert result.counts["judge_prompt_tokens"] > 100 * sent and result.counts["judge_completion_tokens"] == sent
    manifest = verify_manifest(store.stage_dir("run1", "judge"))
    assert list(manifest["files"]) == [LABELS_FILE]  # the cache and the ledger are working state, not artifacts
    # A redelivered stage (the worker died after the requests): everything comes from the cache.
    store.path("run1", "judge", "manifest.json").unlink()
    again = run_judge(StageContext.of(store, "run1", "judge", cfg=cfg, constitution=harmless))
    assert again.counts["judge_requests"] == sent and again.counts["judge_cached"] == sent
    assert read_jsonl(store.path("run1", "judge", LABELS_FILE), LabelRecord) == labels
    _assert_no_key(vllm_server, tmp_path, caplog.text, result.model_dump_json(), again.model_dump_json())


def test_critique_revise_through_the_endpoint_writes_valid_records(
    local: EndpointConfig,
    vllm_server: VLLMServer,
    harmless: Constitution,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = _store(tmp_path)
    cfg = RunConfig(
        feedback={"model": "endpoint:local"},
        critique={"rounds": 1, "batch_size": 2, "sampling": {"temperature": 0.7, "max_new_tokens": 32}},
    )
    result = run_critique_revise(StageContext.of(store, "run1", "critique", cfg=cfg, constitution=harmless))
    records = read_jsonl(store.path("run1", "critique", CRITIQUE_RECORDS_FILE), CritiqueRecord)
    harmful, helpful = records  # (the first two demo prompts)
    assert (harmful.kind, helpful.kind) == ("harmful", "helpful")
    assert harmful.initial_response and harmful.rounds[0].critique and harmful.rounds[0].revision
    assert harmful.rounds[0].principle_id in {p.id for p in harmless.principles}
    assert helpful.initial_response and not helpful.rounds
    assert store.path("run1", "critique", SFT_DATA_FILE).is_file()
    # the harmful prompt's answer, critique and revision, the helpful prompt's answer
    assert result.counts["feedback_requests"] == 4 and result.counts["feedback_completion_tokens"] > 4
    _assert_no_key(vllm_server, tmp_path, caplog.text, result.model_dump_json())


def test_the_cli_audits_a_judge_and_critiques_over_the_endpoint(
    local: EndpointConfig, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RLAIF_ENDPOINTS": json.dumps({"local": local.model_dump(mode="json")}),
        KEY_ENV: vllm_server.key,
        "HF_HUB_OFFLINE": "1",
    }
    rlaif = str(Path(sys.executable).with_name("rlaif"))
    audit = subprocess.run(
        [rlaif, "judge-eval", "--judge", "endpoint:local", "--limit", "4", "--json"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert audit.returncode == 0, audit.stderr[-2000:]
    report = json.loads(audit.stdout)
    assert report["model"] == "endpoint:local" and report["pairs"] == 4
    assert "options read by logprob_token_ids" in audit.stderr
    out = tmp_path / "records.jsonl"
    critique = subprocess.run(
        [rlaif, "critique", "--feedback", "endpoint:local", "--limit", "1", "--rounds", "1", "--max-new-tokens",
         "24", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert critique.returncode == 0, critique.stderr[-2000:]
    assert len(read_jsonl(out, CritiqueRecord)) == 1 and "endpoint local: 3 requests" in critique.stdout
    unknown = subprocess.run(
        [rlaif, "judge-eval", "--judge", "endpoint:nope", "--limit", "1"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert unknown.returncode == 2 and "unknown endpoint 'nope'" in unknown.stderr
    _assert_no_key(vllm_server, tmp_path, audit.stdout, audit.stderr, critique.stdout, critique.stderr)


def test_a_request_without_the_key_is_refused(local: EndpointConfig) -> None:
    # (the server really checks the key, so the tests above prove it was sent)
    anonymous = EndpointClient("local", local.model_copy(update={"api_key_env": None}), role="judge")
    from rlaif.generation.endpoint_client import EndpointError

    with pytest.raises(EndpointError, match="HTTP 401"):
        anonymous.post("/completions", {"model": SERVED, "prompt": "Hi", "max_tokens": 1})
