"""Whole `policy_optimization: online_dpo` and `best_of_n` runs through the service at toy size, two iterations each:
REST API (in-process) -> a Celery worker subprocess on real Redis -> every stage of the plan on tiny-random-llama
-> the last iteration's policy downloads as the `policy` checkpoint with its lineage. Style guide 14.

    python -m pytest tests/test_end_to_end_methods.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, check_run_integrity, wait_for

from rlaif.client import Client

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 420
SAMPLING = {"sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}}
SFT = {"batch_size": 2, "micro_batch_size": 2, "max_length": 128, "checkpoint_every": 1}
METHODS = {
    "online_dpo": {
        "config": {
            "online_dpo": {
                "prompts_per_step": 2,
                "total_prompts": 4,
                "micro_batch_size": 2,
                "max_length": 128,
                "checkpoint_every": 1,
                **SAMPLING,
            }
        },
        "stages": ["critique", "sft", "online_dpo", "online_dpo-2", "evaluate"],
        "checkpoints": {"sft", "online_dpo", "online_dpo-2"},
        "metrics": {"loss/dpo", "rewards/accuracy", "online/judge_p_a_mean", "online/flip_rate"},
    },
    "best_of_n": {
        "config": {"best_of_n": {"n": 2, **SAMPLING, "sft": SFT}},
        "stages": [
            "critique",
            "sft",
            "pairs",
            "judge",
            "reward_model",
            "best_of_n",
            "pairs-2",
            "judge-2",
            "reward_model-2",
            "best_of_n-2",
            "evaluate",
        ],
        "checkpoints": {"sft", "reward_model", "best_of_n", "reward_model-2", "best_of_n-2"},
        "metrics": {"loss/train"},
    },
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_run_of_each_method_ships_its_last_policy(
    method: str, make_service, service_tiny_model: str, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from api.main import create_app
    from rlaif.cli.service import pull_checkpoint

    expected = METHODS[method]
    first, last = (name for name in expected["stages"] if name.startswith(method))  # iteration 1 and 2
    service: Service = make_service("sqlite")
    service.start_worker("w1")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]) + "\n")
    with TestClient(create_app(service.settings())) as api:
        client = Client("http://testserver", None)
        client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]  # httpx's API, in-process
        con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompt_set = client.upload_prompts(prompts)
        config = {**TINY_RUN, "policy_optimization": method, **expected["config"]}
        request = {"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": config, "iterations": 2}
        run = client.create_run(request)
        assert [s["name"] for s in run["stages"]] == expected["stages"]
        assert run["policy_optimization"] == method == run["config"]["policy_optimization"]
        assert first in run["budget"]["stages"] and "ppo" not in run["budget"]["stages"]
        run = wait_for(
            lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, RUN_TIMEOUT, "the run"
        )
        assert run["status"] == "succeeded", (run["error"], service.log("w1")[-5000:])
        check_run_integrity(service, run["id"])
        stages = {s["name"]: s for s in run["stages"]}
        assert stages[last]["done"] == stages[last]["total"] == stages[last]["counts"]["steps"]
        history = client.json("GET", f"/v1/runs/{run['id']}/metrics")["stages"][last]["history"]
        assert expected["metrics"] <= set(history[0])
        assert {c["stage"] for c in client.checkpoints(run["id"])} == expected["checkpoints"]

        folder = pull_checkpoint(client, run["id"], "policy", tmp_path / "pulled")  # every SHA-256 checked
        assert folder.name == f"{last}-{stages[last]['counts']['steps']}"
        assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
        meta = json.loads((folder / "meta.json").read_text())
        run_dir = service.artifacts / "runs" / run["id"]
        # Iteration 2 starts from iteration 1's policy.
        assert (meta["stage"], meta["base_model"]) == (method, str(run_dir / first / "model"))
        assert meta["policy_optimization"] == method == meta["run_config"]["policy_optimization"]
        assert f"- policy optimization: `{method}`" in (folder / "README.md").read_text()
        report = client.report(run["id"])
        assert report["models"]["aligned"] == str(run_dir / last / "model")
        assert "## Evaluation" in (folder / "README.md").read_text()

        train_prompts = stages["critique"]["total"]
        if method == "online_dpo":
            # The SFT model stays the reference; each step's judged pairs are in the stage folder.
            assert meta["reference_model"] == str(run_dir / "sft" / "model")
            for name in (first, last):
                labels = sorted((run_dir / name / "labels").iterdir())
                assert [p.name for p in labels] == ["step-000001.jsonl", "step-000002.jsonl"]
            assert report["reward_model"] is None and report["reward"] is None
            # The per-principle statistics are the last iteration's step labels, marked as such (no judge stage).
            stored = [line for p in (run_dir / last / "labels").iterdir() for line in p.read_text().splitlines()]
            online = report["online_labels"]
            assert report["labels"] is None and (online["source"], online["stage"]) == ("online_dpo", last)
            assert online["labels"] == len(stored) and sum(p["judgements"] for p in online["principles"]) > 0
        else:
            for name in (first, last):
                best = [json.loads(line) for line in (run_dir / name / "best.jsonl").read_text().splitlines()]
                assert len(best) == train_prompts and all(b["score"] == max(b["scores"]) for b in best)
            assert meta["reward_model"] == str(run_dir / "reward_model-2" / "model")
            assert report["reward_model"] == str(run_dir / "reward_model-2" / "model")
            assert report["online_labels"] is None and report["labels"]["stage"] == "judge-2"
            assert report["labels"]["source"] == "judge"
