"""A whole `policy_optimization: dpo` run through the service at toy size: REST API (in-process) -> a Celery worker
subprocess on real Redis -> critique, SFT, then two iterations of pairs, judge and DPO, and the evaluation, on
tiny-random-llama -> the last DPO policy downloads as the `policy` checkpoint with its lineage. Style guide 14.

    python -m pytest tests/test_end_to_end_dpo.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, check_run_integrity, wait_for

from rlaif.client import Client

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300
DPO_RUN = {
    **TINY_RUN,
    "policy_optimization": "dpo",
    "dpo": {"batch_size": 2, "micro_batch_size": 2, "max_length": 128, "checkpoint_every": 1},
}


def test_a_dpo_run_trains_no_reward_model_and_ships_the_dpo_policy(
    make_service, service_tiny_model: str, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from api.main import create_app
    from rlaif.cli.service import pull_checkpoint

    service: Service = make_service("sqlite")
    service.start_worker("w1")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]) + "\n")
    with TestClient(create_app(service.settings())) as api:
        client = Client("http://testserver", None)
        client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]  # httpx's API, in-process
        con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompt_set = client.upload_prompts(prompts)
        request = {"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": DPO_RUN, "iterations": 2}
        run = client.create_run(request)
        names = [s["name"] for s in run["stages"]]
        assert names == ["critique", "sft", "pairs", "judge", "dpo", "pairs-2", "judge-2", "dpo-2", "evaluate"]
        assert run["policy_optimization"] == "dpo" and run["config"]["policy_optimization"] == "dpo"
        assert "dpo" in run["budget"]["stages"] and "reward_model" not in run["budget"]["stages"]
        run = wait_for(
            lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, RUN_TIMEOUT, "the run"
        )
        assert run["status"] == "succeeded", (run["error"], service.log("w1")[-5000:])
        check_run_integrity(service, run["id"])
        # Each generating stage's event says which engine its `auto` backend chose, and why (without vllm installed:
        # transformers, as before auto was the default; with it, this toy size is below the CPU break-even).
        events = client.events(run["id"], after=0, kind="message")["data"]
        backends = {e["stage"]: e["data"] for e in events if (e["data"] or {}).keys() == {"backend", "reason"}}
        assert set(backends) == {"critique", "pairs", "pairs-2"}
        assert all(
            b["backend"] == "transformers" and b["reason"].startswith("auto: transformers") for b in backends.values()
        )
        stages = {s["name"]: s for s in run["stages"]}
        assert stages["dpo-2"]["done"] == stages["dpo-2"]["total"] == stages["dpo-2"]["counts"]["steps"]
        history = client.json("GET", f"/v1/runs/{run['id']}/metrics")["stages"]["dpo-2"]["history"]
        assert {"loss/dpo", "rewards/accuracy", "rewards/margins"} <= set(history[0])
        # No reward model, no PPO.
        assert {c["stage"] for c in client.checkpoints(run["id"])} == {"sft", "dpo", "dpo-2"}

        folder = pull_checkpoint(client, run["id"], "policy", tmp_path / "pulled")  # every SHA-256 checked
        assert folder.name == f"dpo-2-{stages['dpo-2']['counts']['steps']}"
        assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
        meta = json.loads((folder / "meta.json").read_text())
        run_dir = service.artifacts / "runs" / run["id"]
        sft, first = str(run_dir / "sft" / "model"), str(run_dir / "dpo" / "model")
        # Iteration 2 starts from iteration 1's DPO policy; the SFT model stays the reference.
        assert (meta["stage"], meta["base_model"], meta["reference_model"]) == ("dpo", first, sft)
        assert meta["run_config"]["policy_optimization"] == "dpo" and meta["run_id"] == run["id"]
        first_meta = json.loads((run_dir / "dpo" / "model" / "meta.json").read_text())
        assert (first_meta["base_model"], first_meta["reference_model"]) == (sft, sft)

        # The evaluation compared the last DPO policy, without a reward model, and put its figures on its card only.
        report = client.report(run["id"])
        assert report["models"] == {
            "base": "tiny-random-llama",
            "sft": sft,
            "aligned": str(run_dir / "dpo-2" / "model"),
        }
        assert report["reward_model"] is None and report["reward"] is None
        assert report["labels"]["labels"] == check_run_integrity(service, run["id"])["judge-2"]
        assert "## Evaluation" in (folder / "README.md").read_text()
        assert "## Evaluation" not in (run_dir / "dpo" / "model" / "README.md").read_text()
        assert meta["evaluation"]["report"] == "evaluate/report.json"
