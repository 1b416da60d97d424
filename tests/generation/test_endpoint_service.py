"""Whole runs through the REST API with real Celery workers whose judge (and feedback) model is an endpoint:
issue 12, item 7 at the service level, and item 4's token counts per role and stage in the events and report.

- `judge.model` and `feedback.model` `endpoint:local`, served by a real vLLM OpenAI server on loopback (the embedded
  model: the one server of the session, tests/generation/conftest.py, shared with test_endpoint_vllm.py). The
  worker gets RLAIF_ENDPOINTS, which names the variable holding the key, and the key in that variable. The run
  succeeds with every item once; the stage results, events and report carry per-role token counts; the key is in
  no artifact, event, stored config, downloaded checkpoint, database or log.
- The judge endpoint dies in the middle of a judge shard and comes back on the same port answering 429 twice: the
  shard task retries (an endpoint down through all of the client's retries is transient, workers/policy.py), the
  client backs off through the 429s inside the shard without another task retry, and the run succeeds with every
  item once. This part runs against tests/generation/fake_openai.py (a real HTTP server in this process), which
  can die on exactly the request chosen and answer 429 on cue.
- The real vLLM server (the session's) SIGKILLed with the judge shard's requests in flight, restarted on the same
  port after a pause: the shard task retries, every comparison is labelled once, and the labels are those of an
  uninterrupted pass. One restart (a minute or two on CPU) is the price; the session's server is the one killed,
  so no second engine is started, and it serves at the same URL with the same key afterwards.

    python -m pytest tests/generation/test_endpoint_service.py
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, check_run_integrity, free_port, wait_for
from sqlalchemy import select
from vllm_server import SERVED, VLLMServer

from rlaif.client import Client
from rlaif.endpoints import EndpointConfig
from rlaif.generation.endpoint_client import EndpointClient, EndpointError, EndpointUnavailable
from rlaif.service import state
from rlaif.service.db import ShardRow, StageRunRow

RUN_TIMEOUT = 600
KEY_ENV = "ENDPOINT_TEST_KEY"  # (not RLAIF_*: the test service hands its processes no RLAIF_ variable of ours)
FAKE_KEY = "sk-fake-judge-5b1d0c9e-never-log-me"
TRANSIENT_RETRY = "judge.label_shard"  # ... "(run, stage, shard): transient error, retry in N s" (workers/policy.py)


def _api_client(api: TestClient) -> Client:
    client = Client("http://testserver", None)
    client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]  # httpx's API, in process
    return client


def _submit(client: Client, config: dict[str, Any], tmp_path: Path) -> str:
    """A run of the minimal constitution on the first 8 demo prompts (6 train, 2 held out); its id."""
    con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]) + "\n")
    prompt_set = client.upload_prompts(prompts)
    request = {"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": config}
    return client.create_run(request)["id"]


def _finished(client: Client, run_id: str, service: Service) -> dict[str, Any]:
    run = wait_for(
        lambda: (r := client.run(run_id))["status"] in ("succeeded", "failed", "cancelled") and r, RUN_TIMEOUT, "run"
    )
    assert run["status"] == "succeeded", (run["error"], service.log("w1")[-5000:])
    return run


def _until(condition: Any, client: Client, run_id: str, timeout: float, what: str) -> Any:
    """wait_for, but an AssertionError with the run's error at once when the run ends first."""

    def check() -> Any:
        value = condition()
        if not value and (run := client.run(run_id))["status"] in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"the run ended ({run['status']}: {run['error']}) before {what}")
        return value

    return wait_for(check, timeout, what, interval=0.05)


def _all_events(client: Client, run_id: str) -> list[dict[str, Any]]:
    events, after = [], 0
    while page := client.events(run_id, after=after, limit=1000)["data"]:
        events += page
        after = page[-1]["id"]
    return events


def _usage_events(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(stage, role) -> the data of the stage's endpoint usage event (rlaif/service/state.py add_usage_event)."""
    return {(e["stage"], e["data"]["role"]): e["data"] for e in events if e["data"] and "role" in e["data"]}


def _check_usage(
    run: dict[str, Any], events: list[dict[str, Any]], report: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    """Per-role token counts in the stage results, the same figures in the usage events and in the report, for
    exactly the (stage, role) pairs that called an endpoint."""
    stages = {s["name"]: s for s in run["stages"]}
    by_event = _usage_events(events)
    by_report = {(e["stage"], e["role"]): e for e in report["usage"]}
    assert set(by_event) == set(by_report) == expected, (by_event, by_report)
    for stage, role in expected:
        counts = stages[stage]["counts"]
        assert counts[f"{role}_requests"] > 0 and counts[f"{role}_prompt_tokens"] > counts[f"{role}_requests"]
        assert counts[f"{role}_completion_tokens"] > 0
        for figures in (by_event[(stage, role)], by_report[(stage, role)]):
            assert figures["endpoint"] in ("local", "fake")
            for key in ("requests", "cached", "prompt_tokens", "completion_tokens"):
                assert figures[key] == counts[f"{role}_{key}"], (stage, role, key)
    for stage in set(stages) - {stage for stage, _ in expected}:  # in-process stages count no endpoint tokens
        assert not any(key.endswith("_prompt_tokens") for key in stages[stage]["counts"]), stage


def _files_holding(secret: str, folders: list[Path]) -> tuple[int, list[str]]:
    """(files read, the ones containing `secret`) under the folders, hidden ones (caches, ledgers) included."""
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    return len(files), [str(path) for path in files if secret.encode() in path.read_bytes()]


def _assert_secret_kept(secret: str, service: Service, client: Client, run_id: str, tmp_path: Path) -> None:
    """The API key is nowhere a run leaves anything: artifacts (inputs/config.json, stage folders with their
    response caches and usage ledgers, checkpoints with meta.json), the events and stored config as the API
    returns them, the checkpoints as downloaded, the database file and every process's log."""
    run_dir = service.artifacts / "runs" / run_id
    metas = list(run_dir.glob("*/model/meta.json"))
    assert metas and (run_dir / "inputs" / "config.json").is_file()
    pulled = tmp_path / "pulled"
    for checkpoint in client.checkpoints(run_id):
        client.download_checkpoint(checkpoint, pulled / checkpoint["id"])
    database = Path(service.db_url.removeprefix("sqlite:///"))
    read, leaks = _files_holding(secret, [run_dir, pulled, service.root])  # (root: the logs and the database)
    assert read > len(metas) and database.is_file() and (service.root / "w1.log").is_file()
    api_text = json.dumps([client.run(run_id), _all_events(client, run_id), client.report(run_id)])
    assert not leaks and secret not in api_text + client.report_html(run_id), leaks


def _headline(client: Client, run_id: str) -> str:
    """The report's headline, as the report page and `rlaif submit --watch` print it (rlaif/evaluation/report.py)."""
    from rlaif.evaluation.report import EvalReport, headline

    return headline(EvalReport.model_validate(client.report(run_id)))


# ---------------------------------------------------------------- a run over vLLM


@pytest.mark.slow
@pytest.mark.endpoint
def test_a_run_with_judge_and_feedback_over_vllm_succeeds_and_never_shows_the_key(
    make_service, service_tiny_model: str, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    from api.main import create_app

    local = EndpointConfig(
        base_url=vllm_server.base_url, model=SERVED, tokenizer="smollm2-135m-instruct", context_length=2048,
        api_key_env=KEY_ENV, max_concurrency=4, timeout_s=120,
    )  # fmt: skip
    service: Service = make_service("sqlite", endpoints=json.dumps({"local": local.model_dump(mode="json")}))
    service.start_worker("w1", env={KEY_ENV: vllm_server.key})
    config = {
        **TINY_RUN,
        "feedback": {"model": "endpoint:local"},
        "judge": {**TINY_RUN["judge"], "model": "endpoint:local"},
    }
    with TestClient(create_app(service.settings())) as api:
        client = _api_client(api)
        run = _finished(client, _submit(client, config, tmp_path), service)
        run_id = run["id"]
        counts = check_run_integrity(service, run_id)
        assert counts["critique"] == 6 and counts["judge"] >= 1
        events, report = _all_events(client, run_id), client.report(run_id)
        # critique: the feedback model's answers, critiques and revisions, and the judge's check of each revision
        # (critique.judge_filter is on when the judge is not the policy); judge and evaluate: the judge's readings
        expected = {("critique", "feedback"), ("critique", "judge"), ("judge", "judge"), ("evaluate", "judge")}
        _check_usage(run, events, report, expected)
        stages = {s["name"]: s for s in run["stages"]}
        judge = stages["judge"]["counts"]
        # One token read per request (max_tokens 1), both orders of each label's principle (1 per label).
        assert judge["judge_completion_tokens"] == judge["judge_requests"] == 2 * judge["judgements"]
        assert report["judge_model"] == "endpoint:local"
        assert "endpoint usage: judge endpoint:local:" in _headline(client, run_id)
        assert "Endpoint usage" in client.report_html(run_id)
        _assert_secret_kept(vllm_server.key, service, client, run_id, tmp_path)


# ---------------------------------------------------------------- a judge endpoint that dies and comes back


@pytest.fixture
def fake_judge(service_tiny_model: str) -> Iterator[FakeOpenAI]:
    """A judge endpoint answering the judge's log-prob requests for tiny-random-llama's option tokens, key required."""
    from rlaif.judging.prompts import ANSWER_PREFIX, option_token_ids
    from rlaif.modeling import load_tokenizer

    fake = FakeOpenAI(option_ids=option_token_ids(load_tokenizer(service_tiny_model), ANSWER_PREFIX))
    fake.require_key = FAKE_KEY
    fake.url = fake.start()  # type: ignore[attr-defined]
    yield fake
    fake.stop()


def _stage_row(rt: state.Runtime, run_id: str, stage: str) -> StageRunRow | None:
    with rt.sessions() as session:
        return session.scalars(
            select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == stage)
        ).one_or_none()


@pytest.mark.slow
def test_a_judge_endpoint_killed_mid_shard_then_rate_limiting_loses_and_repeats_nothing(
    make_service, fake_judge: FakeOpenAI, tmp_path: Path
) -> None:
    from api.main import create_app

    fake = fake_judge
    port = fake.server.server_address[1]  # type: ignore[attr-defined]
    # Two retries: the client gives up on a dead server within ~1.5 s, so the shard task's own retry is exercised.
    cfg = {"base_url": fake.url, "model": "served", "tokenizer": "tiny-random-llama", "api_key_env": KEY_ENV,  # type: ignore[attr-defined]
           "max_concurrency": 2, "max_retries": 2, "timeout_s": 10}  # fmt: skip
    service: Service = make_service("sqlite", endpoints=json.dumps({"fake": cfg}))
    rt = state.Runtime.from_settings(service.settings())
    service.start_worker("w1", env={KEY_ENV: FAKE_KEY})
    # The revision filter is off so that the judge stage's shards are the first to call the endpoint (with it on,
    # the critique stage would meet the dead server first; that path is the same shard retry).
    config = {
        **TINY_RUN,
        "critique": {**TINY_RUN["critique"], "judge_filter": False},
        "judge": {**TINY_RUN["judge"], "model": "endpoint:fake"},
    }
    with TestClient(create_app(service.settings())) as api:
        client = _api_client(api)
        run_id = _submit(client, config, tmp_path)

        # 1. The server dies on the judge's second request: the first (the probe) was answered, the second is
        # dropped in flight, and the port then refuses connections. A shard of 3 comparisons has at least 2
        # requests (both orders), so this is inside shard 0, which cannot finish without that answer.
        fake.die_after_answers = 1
        _until(lambda: fake.killed, client, run_id, RUN_TIMEOUT, "the judge stage reached the endpoint")
        judge = _stage_row(rt, run_id, "judge")
        assert judge is not None and judge.status == "running" and judge.shards_done < judge.shards_total
        shard_retry = f"{TRANSIENT_RETRY}({run_id}, judge, 0): transient error"
        _until(lambda: shard_retry in service.log("w1"), client, run_id, 120, "shard 0's task retried")

        # 2. Back on the same port, answering 429 twice first: the client backs off inside the shard.
        fake.script = [(429, {"Retry-After": "1"}), (429, {})]
        sent_while_dead = len(fake.requests)
        fake.start(port)
        # Any task retry for the outage was logged before the next attempt's first request reached this server.
        _until(lambda: len(fake.requests) > sent_while_dead, client, run_id, 120, "the retried shard called again")
        retries_for_the_outage = service.log("w1").count("transient error")
        run = _finished(client, run_id, service)

        counts = check_run_integrity(service, run_id)  # every comparison labelled exactly once
        assert counts["judge"] >= 1 and not fake.script  # both 429s were answered
        log = service.log("w1")
        assert log.count("got HTTP 429; retrying in") == 2
        assert log.count("transient error") == retries_for_the_outage  # the 429s cost no task retry
        with rt.sessions() as session:
            judge_id = session.scalars(
                select(StageRunRow.id).where(StageRunRow.run_id == run_id, StageRunRow.name == "judge")
            ).one()
            attempts = session.scalar(
                select(ShardRow.attempts).where(ShardRow.stage_run_id == judge_id, ShardRow.index == 0)
            )
        assert attempts is not None and attempts >= 2  # shard 0 was claimed again after the outage
        events, report = _all_events(client, run_id), client.report(run_id)
        _check_usage(run, events, report, {("judge", "judge"), ("evaluate", "judge")})
        usage = _usage_events(events)[("judge", "judge")]
        # The probe's answer came from the stage's cache on the retry; retried requests: 2 after the kill (a dropped
        # request, then refused twice) and at least 2 for the 429s.
        assert usage["cached"] >= 1 and usage["retries"] >= 4
        _assert_secret_kept(FAKE_KEY, service, client, run_id, tmp_path)


# ---------------------------------------------------------------- the real vLLM server killed and restarted


def _connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port` from a client, as the kernel lists them (a frozen server
    does not accept, but the kernel completes the handshake, so a sent request shows here)."""
    established = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, _, remote, st, *_ = line.split()
        established += st == "01" and int(remote.split(":")[1], 16) == port
    return established


@pytest.mark.slow
@pytest.mark.endpoint
def test_a_vllm_judge_killed_mid_shard_and_restarted_labels_every_pair_once_as_an_uninterrupted_pass(
    make_service, service_tiny_model: str, vllm_server: VLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's vLLM server is SIGKILLed with the judge shard's requests in flight and started again on the
    same port with the same key (so the fixture is as valid afterwards as before), while the shard task retries.

    To have requests in flight for certain, the server is frozen (SIGSTOP) before the run reaches the judge: the
    judge stage is the first to call the endpoint (the revision filter is off and the feedback model is in
    process), its requests connect and hang, and the kill drops them. The server stays down until the shard's
    task has failed with EndpointUnavailable and retried (workers/policy.py): the client's own retries
    (max_retries 6) take 16-32 s, and a restart can take less, which would leave the task retry untested. The 8
    attempts left, 16 s or more each plus the task's backoff, outlast a restart (30 s to 2-3 min on CPU)."""
    from api.main import create_app
    from rlaif.judging.endpoint import EndpointScorer
    from rlaif.judging.judge import judge_comparisons
    from rlaif.records import LabelRecord
    from rlaif.service import execute
    from rlaif.stages import LABELS_FILE
    from rlaif.stages import judge as judge_stage
    from rlaif.store import read_jsonl

    local = EndpointConfig(
        base_url=vllm_server.base_url, model=SERVED, tokenizer="smollm2-135m-instruct", context_length=2048,
        api_key_env=KEY_ENV, max_concurrency=4, max_retries=6, timeout_s=120,
    )  # fmt: skip
    service: Service = make_service("sqlite", endpoints=json.dumps({"local": local.model_dump(mode="json")}))
    rt = state.Runtime.from_settings(service.settings())
    service.start_worker("w1", env={KEY_ENV: vllm_server.key})
    config = {
        **TINY_RUN,
        "critique": {**TINY_RUN["critique"], "judge_filter": False},
        "judge": {**TINY_RUN["judge"], "model": "endpoint:local"},
    }
    with TestClient(create_app(service.settings())) as api:
        client = _api_client(api)
        run_id = _submit(client, config, tmp_path)
        vllm_server.freeze()
        try:
            _until(lambda: _connections_to(vllm_server.port), client, run_id, RUN_TIMEOUT, "the judge's requests")
            judge = _stage_row(rt, run_id, "judge")
            assert judge is not None and judge.status == "running" and judge.shards_done == 0
        finally:
            vllm_server.kill()  # (in the finally too: a frozen server would hang every later test of the session)
        shard_retry = rf"{TRANSIENT_RETRY}\({run_id}, judge, (\d+)\): transient error"
        _until(lambda: re.search(shard_retry, service.log("w1")), client, run_id, 120, "the shard task retried")
        seconds = vllm_server.restart()
        print(f"vLLM server restarted in {seconds:.0f} s", file=sys.stderr)
        _finished(client, run_id, service)

        counts = check_run_integrity(service, run_id)  # every comparison labelled exactly once, in input order
        assert counts["judge"] >= 1
        retried = re.findall(shard_retry, service.log("w1"))  # the shard in flight when the server died
        with rt.sessions() as session:
            judge_id = session.scalars(
                select(StageRunRow.id).where(StageRunRow.run_id == run_id, StageRunRow.name == "judge")
            ).one()
            attempts = session.scalar(
                select(ShardRow.attempts).where(ShardRow.stage_run_id == judge_id, ShardRow.index == int(retried[0]))
            )
        assert attempts is not None and attempts >= 2
        usage = _usage_events(_all_events(client, run_id))[("judge", "judge")]
        assert usage["retries"] >= 1  # the dropped requests and the refused connections, before the task retry

        # An uninterrupted pass over the same comparisons, by the restarted server with no cache: the same labels.
        ctx = execute.stage_context(rt, run_id, "judge")
        labels = read_jsonl(ctx.out_dir / LABELS_FILE, LabelRecord)
        monkeypatch.setenv(KEY_ENV, vllm_server.key)
        scorer = EndpointScorer("endpoint:local", client=EndpointClient("local", local, role="judge"))
        cfg = ctx.cfg
        assert ctx.constitution is not None
        again = list(
            judge_comparisons(
                judge_stage.read_items(ctx), scorer, scorer.tokenizer, ctx.constitution, cfg.judge.principles,
                cfg.judge, cfg.seed, progress=False,
            )
        )  # fmt: skip
        assert [label.id for label in again] == [label.id for label in labels]
        for ours, theirs in zip(labels, again, strict=True):
            assert [j.principle_id for j in ours.judgements] == [j.principle_id for j in theirs.judgements]
            # (float32 on both passes; requests batched differently by the server may differ in the last bits)
            assert ours.p_a == pytest.approx(theirs.p_a, abs=1e-4), ours.id
            for a, b in zip(ours.judgements, theirs.judgements, strict=True):
                assert (a.p_a, a.p_a_swapped) == pytest.approx((b.p_a, b.p_a_swapped), abs=1e-4), ours.id
    # The session's server answers again, at the same URL and with the same key, for the tests after this one.
    assert scorer.usage["requests"] == 2 * sum(len(label.judgements) for label in labels)


# ---------------------------------------------------------------- what the task policy counts as transient


def test_an_endpoint_down_through_its_retries_is_transient_and_a_refusal_is_not(fake_judge: FakeOpenAI) -> None:
    from workers.policy import TRANSIENT

    cfg = EndpointConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", tokenizer="tiny-random-llama",
                         max_retries=1)  # fmt: skip
    with pytest.raises(EndpointUnavailable, match="last with ConnectError") as down:
        EndpointClient("down", cfg, role="judge").post("/completions", {"model": "m", "prompt": "Hi"})
    assert isinstance(down.value, TRANSIENT)  # the shard task retries later
    fake_judge.script = [(503, {})] * 2
    busy = cfg.model_copy(update={"base_url": fake_judge.url})  # type: ignore[attr-defined]
    with pytest.raises(EndpointUnavailable, match="last with HTTP 503") as overloaded:
        EndpointClient("busy", busy, role="judge").post("/completions", {"model": "m", "prompt": "Hi"})
    assert isinstance(overloaded.value, TRANSIENT)
    with pytest.raises(EndpointError, match="HTTP 401") as refused:  # (no key sent: the fake wants one)
        EndpointClient("busy", busy, role="judge").post("/completions", {"model": "m", "prompt": "Hi"})
    assert not isinstance(refused.value, TRANSIENT)  # a wrong key stays wrong: the run fails with the reason
