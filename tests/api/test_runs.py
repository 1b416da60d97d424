"""/v1/runs: create (config validated at the edge, inputs pinned, advance enqueued), read, events, metrics, cancel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of

from rlaif.config import CONFIG_VERSION, RunConfig
from rlaif.constitution import load_constitution
from rlaif.pipeline import plan
from rlaif.prompts import load_prompts, split_holdout
from rlaif.records import PromptItem
from rlaif.service.db import EventRow, RunRow, get_engine, session_factory
from rlaif.store import read_jsonl, verify_manifest

PROMPTS = REPO / "examples" / "demo_prompts.jsonl"


@pytest.fixture(scope="module")
def inputs(api: TestClient) -> dict[str, str]:
    """A constitution and a prompt set of alice's, and a prompt set of bob's."""
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    files = {"file": ("demo.jsonl", PROMPTS.read_bytes(), "application/x-ndjson")}
    prompts = api.post("/v1/prompt-sets", files=files, headers=auth())
    bobs = api.post("/v1/prompt-sets", json=["bob's question?"], headers=auth("bob"))
    return {"constitution": con.json()["id"], "prompts": prompts.json()["id"], "bobs_prompts": bobs.json()["id"]}


def body(inputs: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"constitution_id": inputs["constitution"], "prompt_set_id": inputs["prompts"], "config": TINY_RUN, **extra}


def test_create_pins_inputs_and_enqueues_the_run(api: TestClient, api_service: Service, inputs: dict[str, str]) -> None:
    queue = redis.Redis.from_url(api_service.broker_url)
    queued_before = queue.llen("control")
    response = api.post(
        "/v1/runs", json=body(inputs, principles={"critique": ["tag:harmless"], "judge": ["honest"]}), headers=auth()
    )
    assert response.status_code == 201, response.text
    run = response.json()
    cfg = (
        RunConfig()
        .with_overrides(TINY_RUN)
        .with_overrides({"critique": {"principles": ["tag:harmless"]}, "judge": {"principles": ["honest"]}})
    )
    assert run["config"] == cfg.model_dump(mode="json")
    assert (run["status"], run["policy_model"], run["judge_model"]) == (
        "queued",
        "tiny-random-llama",
        "tiny-random-llama",
    )
    assert [s["name"] for s in run["stages"]] == [s.name for s in plan(cfg)]
    assert all(s["status"] == "pending" for s in run["stages"])
    assert [s["queue"] for s in run["stages"]] == [
        "generate",
        "train",
        "generate",
        "judge",
        "train",
        "train",
        "generate",
    ]
    # The prompt set is split into train and held-out prompts exactly as rlaif.prompts.split_holdout does.
    train, held_out = split_holdout(load_prompts(PROMPTS), cfg.eval.holdout_fraction, cfg.seed)
    assert (run["train_prompts"], run["eval_prompts"]) == (len(train), len(held_out))
    folder = api_service.artifacts / "runs" / run["id"] / "inputs"
    verify_manifest(folder)
    assert read_jsonl(folder / "prompts.jsonl", PromptItem) == train
    assert read_jsonl(folder / "eval_prompts.jsonl", PromptItem) == held_out
    pinned = json.loads((folder / "constitution.json").read_text())
    assert pinned == load_constitution(REPO / "constitutions" / "minimal.yaml").model_dump(mode="json")
    assert RunConfig.model_validate(json.loads((folder / "config.json").read_text())) == cfg
    assert queue.llen("control") == queued_before + 1  # control.advance waits for a worker


def test_iterations_add_suffixed_stages(api: TestClient, inputs: dict[str, str]) -> None:
    run = api.post("/v1/runs", json=body(inputs, iterations=2), headers=auth()).json()
    names = [s["name"] for s in run["stages"]]
    assert names == [
        "critique",
        "sft",
        "pairs",
        "judge",
        "reward_model",
        "ppo",
        "pairs-2",
        "judge-2",
        "reward_model-2",
        "ppo-2",
        "evaluate",  # once, after the last iteration
    ]
    assert run["stages"][-1]["iteration"] == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"config": {"ppo": {"not_a_field": 1}}}, ["config.ppo.not_a_field: Extra inputs are not permitted"]),
        ({"config": {"ppo": 5}}, ["config.ppo: Input should be a valid dictionary or instance of PPOConfig"]),
        ({"config": {"seed": -1, "shard_size": "many"}}, ["config.seed: Input should be greater", "config.shard_size"]),
        # Sizes that were accepted and then never finished, or crashed a stage (issue 16).
        ({"config": {"seed": 2**64}}, ["config.seed: Input should be less than or equal to 4294967295"]),
        ({"config": {"ppo": {"total_episodes": 10**12}}}, ["config.ppo.total_episodes: Input should be less than"]),
        ({"config": {"sft": {"micro_batch_size": 10**9}}}, ["config.sft.micro_batch_size: Input should be less than"]),
        # Derived sizes are properties, not fields: a request that sets one is refused like any unknown field.
        ({"config": {"ppo": {"batch_size": 4}}}, ["config.ppo.batch_size: Extra inputs are not permitted"]),
        (
            {"principles": {"critique": ["tag:kindness"]}},
            ["principles.critique: unknown principle selector(s) ['tag:kindness']"],
        ),
        ({"principles": {"judge": ["nope"]}}, ["principles.judge: unknown principle selector(s) ['nope']"]),
        (
            {"config": {"eval": {"helpful_principles": ["nope"]}}},
            ["config.eval.helpful_principles: unknown principle selector(s) ['nope']"],
        ),
        ({"policy_model": "no-such-model"}, ["policy_model: unknown model 'no-such-model'"]),
        ({"judge_model": "/nonexistent/folder"}, ["judge_model: unknown model '/nonexistent/folder'"]),
        ({"config": {"feedback": {"model": "/etc"}}}, ["feedback.model: unknown model '/etc'"]),
    ],
)
def test_invalid_runs_are_422_with_every_reason(
    api: TestClient, inputs: dict[str, str], extra: dict[str, Any], expected: list[str]
) -> None:
    request = {**body(inputs), **extra}
    request["config"] = {**TINY_RUN, **extra.get("config", {})}
    status, detail, errors = error_of(api.post("/v1/runs", json=request, headers=auth()))
    assert status == 422 and detail in ("invalid run config", "invalid run")
    assert len(errors) == len(expected)
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), error


def test_indivisible_ppo_sizes_name_the_fields(api: TestClient, inputs: dict[str, str]) -> None:
    request = body(inputs)
    request["config"] = {**TINY_RUN, "ppo": {**TINY_RUN["ppo"], "num_minibatches": 3}}
    status, detail, errors = error_of(api.post("/v1/runs", json=request, headers=auth()))
    assert (status, detail) == (422, "invalid run config")
    assert "ppo.num_minibatches" in errors[0] and "not divisible" in errors[0]


def test_unknown_fields_and_missing_ids(api: TestClient, inputs: dict[str, str]) -> None:
    status, detail, errors = error_of(api.post("/v1/runs", json={**body(inputs), "colour": "red"}, headers=auth()))
    assert (status, detail, errors) == (
        422,
        "invalid request: 1 problem(s)",
        ["body.colour: Extra inputs are not permitted"],
    )
    status, _, errors = error_of(api.post("/v1/runs", json={"prompt_set_id": inputs["prompts"]}, headers=auth()))
    assert status == 422 and errors == ["body.constitution_id: Field required"]
    missing = body(inputs, constitution_id="con-0000000000000000")
    assert error_of(api.post("/v1/runs", json=missing, headers=auth()))[:2] == (
        404,
        "constitution 'con-0000000000000000' not found",
    )
    foreign = body(inputs, prompt_set_id=inputs["bobs_prompts"])
    assert error_of(api.post("/v1/runs", json=foreign, headers=auth()))[:2] == (
        404,
        f"prompt set {inputs['bobs_prompts']!r} not found",
    )


def test_runs_are_private_to_their_key(api: TestClient, inputs: dict[str, str]) -> None:
    run = api.post("/v1/runs", json=body(inputs), headers=auth()).json()
    assert run["id"] in [r["id"] for r in api.get("/v1/runs", headers=auth()).json()["data"]]
    assert run["id"] not in [r["id"] for r in api.get("/v1/runs", headers=auth("bob")).json()["data"]]
    for path in ("", "/events", "/metrics", "/checkpoints"):
        assert error_of(api.get(f"/v1/runs/{run['id']}{path}", headers=auth("bob")))[:2] == (
            404,
            f"run {run['id']!r} not found",
        )
    assert error_of(api.post(f"/v1/runs/{run['id']}/cancel", headers=auth("bob")))[0] == 404
    assert error_of(api.get("/v1/runs/run-0000000000000000", headers=auth()))[:2] == (
        404,
        "run 'run-0000000000000000' not found",
    )


def test_events_are_paginated_and_typed(api: TestClient, api_service: Service, inputs: dict[str, str]) -> None:
    run = api.post("/v1/runs", json=body(inputs), headers=auth()).json()
    with session_factory(get_engine(api_service.db_url)).begin() as session:  # what a worker would record
        for step in range(1, 4):
            session.add(
                EventRow(run_id=run["id"], stage="sft", kind="metrics", step=step, data={"loss/train": 1.0 / step})
            )
        session.add(EventRow(run_id=run["id"], stage="sft", kind="message", level="warning", message="resumed"))
    first = api.get(f"/v1/runs/{run['id']}/events", params={"limit": 2}, headers=auth()).json()
    assert [e["kind"] for e in first["data"]] == ["message", "metrics"]  # "run created", then the first metrics
    rest = api.get(f"/v1/runs/{run['id']}/events", params={"after": first["next_after"]}, headers=auth()).json()
    assert [(e["kind"], e["step"]) for e in rest["data"]] == [("metrics", 2), ("metrics", 3), ("message", None)]
    only = api.get(f"/v1/runs/{run['id']}/events", params={"kind": "message", "stage": "sft"}, headers=auth()).json()
    assert [e["message"] for e in only["data"]] == ["resumed"]
    metrics = api.get(f"/v1/runs/{run['id']}/metrics", headers=auth()).json()["stages"]
    assert metrics["sft"]["history"] == [{"loss/train": 1.0 / s, "step": s} for s in (1, 2, 3)]
    assert metrics["ppo"] == {"final": {}, "history": []}
    assert error_of(api.get(f"/v1/runs/{run['id']}/events", params={"kind": "logs"}, headers=auth()))[0] == 422


def test_cancel_then_cancel_again_is_409(api: TestClient, inputs: dict[str, str]) -> None:
    run = api.post("/v1/runs", json=body(inputs), headers=auth()).json()
    cancelled = api.post(f"/v1/runs/{run['id']}/cancel", headers=auth())
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert {s["status"] for s in cancelled.json()["stages"]} == {"cancelled"}
    status, detail, _ = error_of(api.post(f"/v1/runs/{run['id']}/cancel", headers=auth()))
    assert (status, detail) == (409, f"run {run['id']} already finished (cancelled); nothing to cancel")
    assert api.get(f"/v1/runs/{run['id']}/checkpoints", headers=auth()).json() == {"data": [], "count": 0}


def test_a_request_cannot_name_or_probe_files_on_the_server(
    api: TestClient, api_service: Service, inputs: dict[str, str], tmp_path: Path
) -> None:
    """Model folders are accepted only under the server's RLAIF_MODEL_ROOTS (here: the tests' temp folder);
    anywhere else, an existing folder and a missing one get the same answer."""
    outside = ["/etc", "/nonexistent", "/", str(REPO), "../../etc", "etc/passwd", "~root", f"{tmp_path}/../../../etc"]
    answers = set()
    for name in outside:
        status, _, errors = error_of(api.post("/v1/runs", json=body(inputs, policy_model=name), headers=auth()))
        assert status == 422 and errors[0].startswith(f"policy_model: unknown model {name!r}"), errors
        answers.add(errors[0].replace(repr(name), "NAME"))
    assert len(answers) == 1  # nothing tells an existing folder from a missing one
    link = tmp_path / "escape"
    link.symlink_to("/etc")  # inside a root, pointing outside it
    assert error_of(api.post("/v1/runs", json=body(inputs, judge_model=str(link)), headers=auth()))[2][0].startswith(
        "judge_model: unknown model"
    )
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    errors = error_of(api.post("/v1/runs", json=body(inputs, policy_model=str(empty)), headers=auth()))[2]
    assert errors == [f"policy_model: no model folder {str(empty)!r} (with a config.json) under RLAIF_MODEL_ROOTS"]
    (empty / "config.json").write_text('{"model_type": "llama"}')
    assert api.post("/v1/runs", json=body(inputs, policy_model=str(empty)), headers=auth()).status_code == 201


@pytest.mark.parametrize(
    ("field", "token"),
    [("kl_coef", "1e999"), ("kl_coef", "Infinity"), ("cliprange", "-Infinity"), ("vf_coef", "NaN"),
     ("cliprange", '"Infinity"')],
)  # fmt: skip
def test_a_non_finite_number_is_422_and_nothing_is_stored(
    api: TestClient, api_service: Service, inputs: dict[str, str], field: str, token: str
) -> None:
    """Issue 16: {"ppo": {"kl_coef": 1e999}} was stored (as null) and queued, and the run could never be read,
    cancelled or listed again. Now it is refused before any row, file or task exists."""
    queue = redis.Redis.from_url(api_service.broker_url)
    runs_folder = api_service.artifacts / "runs"
    before = (api.get("/v1/runs", headers=auth()).json()["count"], set(runs_folder.glob("*")), queue.llen("control"))
    request = json.dumps(body(inputs, config={**TINY_RUN, "ppo": {**TINY_RUN["ppo"], field: "VALUE"}}))
    response = api.post(
        "/v1/runs", content=request.replace('"VALUE"', token), headers={**auth(), "Content-Type": "application/json"}
    )
    assert error_of(response) == (422, "invalid run config", [f"config.ppo.{field}: Input should be a finite number"])
    after = (api.get("/v1/runs", headers=auth()).json()["count"], set(runs_folder.glob("*")), queue.llen("control"))
    assert after == before


def test_a_config_stored_before_versions_reads_as_the_current_version(
    api: TestClient, api_service: Service, inputs: dict[str, str]
) -> None:
    """Every config stored before config_version existed has none (version 0): it reads, upgraded. One stored by
    a newer rlaif (a version this code does not know) lists with a config_error instead of a guess."""
    old, newer = (api.post("/v1/runs", json=body(inputs), headers=auth()).json()["id"] for _ in range(2))
    with session_factory(get_engine(api_service.db_url)).begin() as session:
        for run_id, version in ((old, None), (newer, CONFIG_VERSION + 1)):
            row = session.get(RunRow, run_id)
            assert row is not None and json.loads(row.config_json)["config_version"] == CONFIG_VERSION
            stored = {k: v for k, v in json.loads(row.config_json).items() if k != "config_version"}
            row.config_json = json.dumps(stored if version is None else {**stored, "config_version": version})
    read = api.get(f"/v1/runs/{old}", headers=auth()).json()
    assert (read["config_error"], read["config"]["config_version"], read["policy_model"]) == (
        None,
        CONFIG_VERSION,
        "tiny-random-llama",
    )
    listed = {run["id"]: run for run in api.get("/v1/runs", headers=auth()).json()["data"]}
    assert listed[old]["config_error"] is None
    assert f"config_version {CONFIG_VERSION + 1} is newer" in listed[newer]["config_error"]
    assert api.get(f"/v1/runs/{newer}", headers=auth()).json()["config"]["config_version"] == CONFIG_VERSION + 1


def test_a_stored_config_that_no_longer_validates_still_lists(
    api: TestClient, api_service: Service, inputs: dict[str, str]
) -> None:
    """A run stored before the fix (kl_coef: null) made GET /v1/runs answer 500 for its owner for good. It now
    lists, reads and cancels with its config as stored and the reason; only its own workers fail on it."""
    run_id = api.post("/v1/runs", json=body(inputs), headers=auth()).json()["id"]
    with session_factory(get_engine(api_service.db_url)).begin() as session:  # as the old version stored it
        row = session.get(RunRow, run_id)
        assert row is not None
        row.config_json = row.config_json.replace('"kl_coef":0.05', '"kl_coef":null')
    reason = "stored config does not validate: config.ppo.kl_coef: Input should be a valid number"
    listed = api.get("/v1/runs", headers=auth())
    assert listed.status_code == 200, listed.text
    (summary,) = [run for run in listed.json()["data"] if run["id"] == run_id]
    assert (summary["config_error"], summary["policy_model"], summary["iterations"]) == (reason, None, None)
    read = api.get(f"/v1/runs/{run_id}", headers=auth())
    assert read.status_code == 200, read.text
    assert (read.json()["config"]["ppo"]["kl_coef"], read.json()["budget"], read.json()["judge_model"]) == (
        None,
        None,
        None,
    )
    cancelled = api.post(f"/v1/runs/{run_id}/cancel", headers=auth())
    assert (cancelled.status_code, cancelled.json()["status"], cancelled.json()["config_error"]) == (
        200,
        "cancelled",
        reason,
    )
    assert api.get("/v1/usage", headers=auth()).status_code == 200
    # A run whose config validates has no config_error, and its budget.
    good = api.post("/v1/runs", json=body(inputs), headers=auth()).json()
    assert (good["config_error"], good["policy_model"], good["budget"]["stages"]["critique"]["items"]) == (
        None,
        "tiny-random-llama",
        good["train_prompts"],
    )
