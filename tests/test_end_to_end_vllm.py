"""A whole PPO run through the REST API with `ppo.rollout_backend: vllm`, at toy size: an API process and a Celery
worker process on real Redis, both on the vLLM venv's python -> critique, SFT, pairs, judge, reward model, PPO (an
in-process vLLM engine samples the rollouts) and the evaluation -> the PPO policy downloads, and the stage's
result and events say that vLLM sampled, with the sampler's log-prob gap among its metrics.

The model is a 2-layer random model of the embedded architecture with head_dim 64 (vLLM's CPU attention does not
take tiny-random-llama's 16). Runs in the vLLM venv (~3-5 minutes on 2 busy cores, most of it the engine's start):
    PYTHONPATH=. .venv-vllm/bin/python -m pytest tests/test_end_to_end_vllm.py -m vllm
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_fixtures import KEYS, REPO, TINY_RUN, Service, check_run_integrity, wait_for

from rlaif.client import Client
from rlaif.generation.vllm import INSTALL_HINT, vllm_available

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

RUN_TIMEOUT = 900


@pytest.fixture(scope="session")
def vllm_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 2-layer Llama with the embedded model's tokenizer and head_dim 64, as a folder under the session's
    temp folder (which the test services accept as a model root)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlaif.modeling import prepare_model

    out = tmp_path_factory.mktemp("models") / "tiny-llama-hd64"
    tokenizer = AutoTokenizer.from_pretrained(prepare_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def test_a_run_with_vllm_rollouts_through_the_api(make_service, vllm_tiny_model: str, tmp_path: Path) -> None:
    if not vllm_available():
        pytest.fail(f"the vllm package is missing: {INSTALL_HINT}; or deselect these tests with -m 'not vllm'")
    from transformers import AutoModelForCausalLM

    from rlaif.cli.service import pull_checkpoint

    service: Service = make_service("sqlite")
    url = service.start_api()
    service.start_worker("w1")  # (sys.executable: the vLLM venv's python, which this test runs in)
    # Two updates of 4 episodes, so the second rollout is sampled by an engine that got the updated weights.
    config = {
        **TINY_RUN,
        "policy_model": vllm_tiny_model,
        "ppo": {**TINY_RUN["ppo"], "rollout_backend": "vllm", "samples_per_prompt": 1},
    }
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join((REPO / "examples" / "demo_prompts.jsonl").read_text().splitlines()[:8]) + "\n")
    client = Client(url, KEYS["alice"])
    con = client.upload_constitution((REPO / "constitutions" / "minimal.yaml").read_bytes())
    prompt_set = client.upload_prompts(prompts)
    run = client.create_run({"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": config})
    assert run["config"]["ppo"]["rollout_backend"] == "vllm"
    run = wait_for(
        lambda: (r := client.run(run["id"]))["status"] in ("succeeded", "failed") and r, RUN_TIMEOUT, "the run"
    )
    assert run["status"] == "succeeded", (run["error"], service.log("w1")[-5000:])
    check_run_integrity(service, run["id"])
    stages = {s["name"]: s for s in run["stages"]}
    assert stages["ppo"]["counts"]["updates"] == 2
    assert "val/sampler_logprob_gap" in stages["ppo"]["metrics"]
    assert 0 <= stages["ppo"]["metrics"]["val/sampler_logprob_gap"] < 0.1

    # The PPO stage's event (from its result's backend / backend_reason) says vLLM sampled; the generating
    # stages say which engine they chose under `auto` (this toy size is far below the CPU break-even).
    events = client.events(run["id"], after=0, kind="message")["data"]
    backends = {e["stage"]: e["data"] for e in events if (e["data"] or {}).keys() == {"backend", "reason"}}
    assert backends["ppo"] == {"backend": "vllm", "reason": "configured: vllm"}
    for stage in ("critique", "pairs"):
        assert backends[stage]["backend"] == "transformers", backends
        assert "< 2,500 break-even" in backends[stage]["reason"], backends
    assert "PPO rollouts: configured: vllm" in service.log("w1")

    folder = pull_checkpoint(client, run["id"], "policy", tmp_path / "pulled")  # every SHA-256 checked
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["stage"] == "ppo" and meta["rollout"] == {"backend": "vllm", "backend_reason": "configured: vllm"}
    assert AutoModelForCausalLM.from_pretrained(folder).config.head_dim == 64
