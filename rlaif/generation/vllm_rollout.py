"""vLLM rollouts for PPO (`ppo.rollout_backend = "vllm"`): one in-process vLLM engine samples the responses, and the
policy's weights are copied into it after every update.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: vLLM's engine core and its single worker live in
the trainer's process, behind UniProcExecutor), so a weight sync is `LLM.collective_rpc("reload_weights", ...)`
handing the worker an iterator over the trainer's own tensors: nothing is pickled or copied through ZMQ, and the
only copy is into the engine's parameters (with a cast to its dtype). vLLM's native weight-transfer engines (NCCL,
CUDA IPC) need a GPU; this path works on both. `reload_weights` (vllm.model_executor.model_loader.reload) loads in
checkpoint format through the model's own `load_weights` (which fuses q/k/v and gate/up) and then re-runs each
layer's post-load processing: on CPU that rebuilds the oneDNN-packed copies of the linear weights, which a bare
`model.load_weights` would leave stale (the engine would keep sampling from the old policy).

With LoRA (`ppo.lora_rank > 0`) the engine gets the merged weights W + (alpha / r) B A, computed out of place: peft's
`merge_adapter()` / `unmerge_adapter()` would add and subtract the delta in the base weights, and the round trip is
not exact in floating point, so the KL reference (the base with the adapter off) would drift. vLLM's own LoRA path
would move only the adapter, but needs an adapter folder on disk per update and `enable_lora` kernels; for the
model sizes PPO runs on CPU the merged copy costs well under a second.

The PPO loss never sees the sampler's numbers: `rollout()` recomputes every log-prob with the training model, and
the sampler's log-probs only feed `val/sampler_logprob_gap` (mean |sampler - trainer| over response tokens), which
shows whether the engine still samples from the policy being trained.

    python -m pytest tests/stages/test_ppo_vllm.py -m vllm      # in the vLLM virtualenv
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from rlaif.config import PPOConfig
from rlaif.generation.vllm import VLLMGenerator
from rlaif.modeling import resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

# Headroom over the KV cache one rollout needs (every row at full length); vLLM also wants room to schedule ahead.
KV_CACHE_HEADROOM = 2.0
KV_CACHE_MIN_GIB = 0.25


class VLLMRolloutSampler:
    """The rollout sampler of PPO over an in-process vLLM engine: `sample()` a batch, `load_policy()` after an update."""

    def __init__(self, model_name: str, cfg: PPOConfig, stop_token_id: int, pad_token_id: int) -> None:
        """Start the engine on `model_name` (the policy's starting folder) at the trainer's matmul precision.

        The engine's context is cut to the longest rollout (`max_prompt_tokens + response_length`) and its KV cache
        sized to one rollout batch, instead of vLLM's generic 2 GiB: it sits beside a trainer that holds the policy,
        the reference, the value model and AdamW state in the same memory.
        """
        # Must be set before the engine is built: vLLM reads it when it picks the engine client and executor.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.cfg = cfg
        self.stop_token_id = stop_token_id
        self.pad_token_id = pad_token_id
        max_model_len = cfg.max_prompt_tokens + cfg.response_length
        kv_gib = max(KV_CACHE_MIN_GIB, KV_CACHE_HEADROOM * kv_cache_bytes(model_name, cfg, max_model_len) / 2**30)
        # In process, vLLM seeds Python's, NumPy's and torch's global generators with its own seed when it starts;
        # keep the trainer's (seed_everything(run seed)) as they were.
        started = time.perf_counter()
        with preserved_global_rng():
            self.generator = VLLMGenerator(
                model_name,
                dtype=cfg.dtype,
                max_model_len=max_model_len,
                kv_cache_gib=kv_gib,
                gpu_memory_utilization=0.3,
            )
        self.llm = self.generator.llm
        # What `auto` has to win back: the import of vllm (first engine in the process) plus the engine's start-up.
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM rollout engine ready in %.1f s (import and start-up)", self.startup_seconds)
        self.sync_seconds = 0.0  # time spent in load_policy, for the benchmark

    @torch.no_grad()
    def sample(
        self,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        generator: torch.Generator | Sequence[torch.Generator],
        temperature: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One response per left-padded query row from softmax(logits / ppo.temperature): (B, Q), (B, Q) -> responses
        (B, R) and their sampler log-probs (B, R), R = the longest response, rows padded after their stop token.

        Pure ancestral sampling (top-p 1, no top-k), like `sample_responses`, stopping at `stop_token_id` only. Each
        row gets its own seed drawn from `generator` (the update's rollout generator, or the row's own), so a rollout does not depend
        on how vLLM batches the rows, and a resumed run samples what an uninterrupted one did.
        `temperature` overrides ppo.temperature; 0 = greedy, with log-probs at temperature 1 (the tests compare those).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if isinstance(generator, torch.Generator):
            seeds = torch.randint(0, 2**31 - 1, (queries.shape[0],), generator=generator, device=generator.device)
        else:  # one generator per row (PPO seeds every episode by its row in the update's batch)
            seeds = torch.tensor(
                [int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device)) for g in generator]
            )
        prompts = [
            TokensPrompt(prompt_token_ids=q[m.bool()].tolist()) for q, m in zip(queries, query_mask, strict=True)
        ]
        params = [
            SamplingParams(
                n=1,
                temperature=self.cfg.temperature if temperature is None else temperature,
                top_p=1.0,
                max_tokens=self.cfg.response_length,
                seed=int(seed),
                logprobs=0,  # the sampled token's log_softmax(logits / T) (the engine's logprobs_mode)
                stop_token_ids=[self.stop_token_id],
                detokenize=False,
            )
            for seed in seeds.tolist()
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = [output.outputs[0] for output in outputs]
        width = max(len(sample.token_ids) for sample in samples)
        responses = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)  # (B, R)
        logprobs = torch.zeros((len(samples), width))  # (B, R)
        for row, sample in enumerate(samples):
            tokens = list(sample.token_ids)
            responses[row, : len(tokens)] = torch.tensor(tokens)
            # With logprobs=0 each step's dict holds exactly the sampled token.
            steps = zip(tokens, sample.logprobs, strict=True)
            logprobs[row, : len(tokens)] = torch.tensor([step[token].logprob for token, step in steps])
        return responses.to(queries.device), logprobs.to(queries.device)

    @torch.no_grad()
    def load_policy(self, policy: PreTrainedModel) -> None:
        """Copy the policy's current weights (LoRA: merged) into the engine, then drop its prefix cache, whose KV
        blocks were computed with the old weights and would otherwise be reused for the next rollout's prompts."""
        started = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy_weights(policy)})
        self.llm.reset_prefix_cache()
        seconds = time.perf_counter() - started
        self.sync_seconds += seconds
        log.debug("weights synced into the vLLM engine in %.2f s", seconds)

    def close(self) -> None:
        self.generator.close()


@contextlib.contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore the global random states of Python, NumPy and torch (CPU and CUDA) after the block."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def policy_weights(policy: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the Hugging Face checkpoint's names, as vLLM's `load_weights` reads them.

    A peft-wrapped policy yields its base model's weights with each LoRA layer's weight replaced by W + delta (the
    adapter that is active), out of place; the adapter's own tensors are left out. Tied weights (lm_head =
    embed_tokens) come once, as `state_dict` names them; vLLM skips the tied name it does not hold.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(policy, PeftModel):
        yield from policy.state_dict().items()
        return
    base = policy.get_base_model()
    lora_layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        module_name, _, leaf = name.rpartition(".base_layer.")
        if module_name and leaf == "weight" and module_name in lora_layers:
            layer = lora_layers[module_name]
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            yield f"{module_name}.weight", tensor + delta
        else:
            yield name.replace(".base_layer.", "."), tensor


def kv_cache_bytes(model_name: str, cfg: PPOConfig, max_model_len: int) -> int:
    """KV-cache bytes of one rollout batch at full length: 2 (K, V) x layers x KV heads x head dim x dtype bytes per
    token, times batch_size x max_model_len tokens."""
    from transformers import AutoConfig

    from rlaif.modeling import pick_dtype

    config = AutoConfig.from_pretrained(resolve_model(model_name))
    config = getattr(config, "text_config", config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dtype_bytes = torch.tensor([], dtype=pick_dtype(cfg.dtype)).element_size()
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    return per_token * cfg.batch_size * max_model_len


def rollout_sampler(
    model_name: str, policy: PreTrainedModel, stop_token_id: int, pad_token_id: int, cfg: PPOConfig, backend: str
) -> VLLMRolloutSampler | None:
    """The vLLM sampler when the rollout `backend` (ppo.rollout_backend, 'auto' resolved by
    rlaif/generation/backend_choice.py) is "vllm", holding the trainer's current weights (a resumed run's included);
    None for "transformers", where the training policy samples its own rollouts."""
    if backend != "vllm":
        return None
    sampler = VLLMRolloutSampler(model_name, cfg, stop_token_id, pad_token_id)
    sampler.load_policy(policy)
    return sampler
