"""The judge quality gate: bounds on a run's own labels before a policy trains on them (rlaif/evaluation/judge_gate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, wait_for

from rlaif.client import Client
from rlaif.config import JudgeGateConfig
from rlaif.evaluation.judge_gate import check_labels


def test_the_gate_reads_flip_rate_and_position_bias() -> None:
    bounds = JudgeGateConfig()  # flip rate <= 0.35, first-order (A) share within 0.5 +- 0.3
    good = check_labels({"judge/flip_rate": 0.13, "judge/order1_prefers_a": 0.55}, bounds)
    assert good.passed and good.findings == [] and not good.stops
    # The embedded 135M judge on the human pairs: flip rate 0.80, (A) preferred in 24 % of first readings.
    bad = check_labels({"judge/flip_rate": 0.80, "judge/order1_prefers_a": 0.15}, bounds)
    assert not bad.passed and len(bad.findings) == 2 and not bad.stops  # warn is the default
    assert "flip rate 0.80 > 0.35" in bad.findings[0] and "15%" in bad.findings[1]
    assert "stronger judge" in bad.message("judge")
    assert check_labels({"judge/flip_rate": 0.8}, bounds.model_copy(update={"action": "stop"})).stops
    assert check_labels({}, bounds).passed  # no labels, nothing to judge by


@pytest.mark.slow
def test_a_run_whose_judge_fails_a_stopping_gate_fails_before_training(
    make_service, service_tiny_model: str, tmp_path: Path
) -> None:
    from api.main import create_app

    service: Service = make_service("sqlite")
    service.start_worker("w1")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]) + "\n")
    # Bounds no judge meets (no flip at all, exactly half the first readings on (A)): the tiny random judge fails.
    judge = {**TINY_RUN["judge"], "gate": {"max_flip_rate": 0.0, "max_position_bias": 0.0, "action": "stop"}}
    with TestClient(create_app(service.settings())) as api:
        client = Client("http://testserver", None)
        client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]  # httpx's API, in-process
        con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompt_set = client.upload_prompts(prompts)
        run = client.create_run(
            {"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": {**TINY_RUN, "judge": judge}}
        )
        run = wait_for(lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, 300, "run")
        assert run["status"] == "failed", run
        assert "judge quality gate (judge)" in run["error"] and "stronger judge" in run["error"]
        stages = {s["name"]: s["status"] for s in run["stages"]}
        assert stages["judge"] == "succeeded" and stages["reward_model"] == "failed"  # no policy trained on noise
        assert stages["ppo"] in ("pending", "cancelled")
        events = client.events(run["id"], kind="message")["data"]
        assert any(e["level"] == "error" and "judge quality gate" in e["message"] for e in events)
