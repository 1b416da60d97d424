"""transformers backend: batched `model.generate` with left padding and the KV cache (the CPU default).

Prompts are sorted by length (longest first, so an out-of-memory shows in the first batch) and cut into
batches of about `batch_size` sequences, so little compute goes to padding; results come back in input order.
Each row samples from its own RNG, seeded by its conversation's seed and its sample index (`_RowSampler`), so a
completion depends on its conversation and seed only, not on the batch it landed in: an item re-run in another
shard or after a crash gets the same text (up to float rounding of a differently padded batch). Log-probs of the generated tokens are log_softmax(logits / temperature) of the raw logits, the
distribution the tokens were sampled from (before top-p truncation), as PPO needs them.

    python -c "from rlaif.generation.hf import HFGenerator; from rlaif.config import SamplingConfig; \
print(HFGenerator('tiny-random-llama').generate([[{'role': 'user', 'content': 'Hi'}]], 2, SamplingConfig(), 0))"
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rlaif.config import SamplingConfig
from rlaif.generation import Completion, Conversation
from rlaif.generation.common import (
    context_length,
    copy_greedy,
    derive_seed,
    mark_truncated,
    prepare_prompts,
    row_seeds,
    stop_token_ids,
    to_completion,
)
from rlaif.modeling import load_causal_lm, load_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class HFGenerator:
    """Generator over a transformers causal LM (loaded here, or handed in with `from_loaded`)."""

    def __init__(
        self,
        model_name: str,
        dtype: str = "auto",
        batch_size: int = 16,
        device: str | None = None,
        *,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.batch_size = batch_size
        self.model = model if model is not None else load_causal_lm(model_name, dtype=dtype, device=device)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name)
        self.context = context_length(self.model.config, self.tokenizer)
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    @classmethod
    def from_loaded(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str | None = None,
        batch_size: int = 16,
    ) -> HFGenerator:
        """Wrap an already-loaded model and tokenizer (a stage that also trains or scores with them)."""
        name = model_name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        return cls(name, batch_size=batch_size, model=model, tokenizer=tokenizer)

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
        prompts, per_prompt, truncated = prepare_prompts(
            self.tokenizer, conversations, n, sampling, self.context, fit_context
        )
        greedy = sampling.temperature == 0.0
        seeds = row_seeds(seed, len(prompts))
        prompts_per_batch = max(1, self.batch_size // per_prompt)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        results: list[list[Completion]] = [[] for _ in prompts]
        with tqdm(total=len(prompts) * n, desc=f"generate {self.model_name}", unit="seq", disable=not progress) as bar:
            for start in range(0, len(order), prompts_per_batch):
                rows = order[start : start + prompts_per_batch]
                batch = self._generate_batch(
                    [prompts[i] for i in rows], per_prompt, sampling, [seeds[i] for i in rows], return_logprobs
                )
                for row, completions in zip(rows, batch, strict=True):
                    results[row] = copy_greedy(completions, n, greedy)
                bar.update(len(rows) * n)
        log.debug("generated %d x %d completions with %s", len(prompts), n, self.model_name)
        return mark_truncated(results, truncated)

    def _generate_batch(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seeds: list[int], return_logprobs: bool
    ) -> list[list[Completion]]:
        """One `generate` call: n completions for each of the (left-padded) prompts, row b*n+j sampled with the RNG
        of (seeds[b], j)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        input_ids, attention_mask = self._left_pad(prompts)
        # Each prompt n times in a row (b*n .. b*n+n-1): one row per completion, each with its own RNG.
        input_ids, attention_mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
        greedy = sampling.temperature == 0.0
        # Sampling is our logits processor's (per-row RNGs; transformers draws the whole batch from one RNG), so
        # transformers itself decodes greedily over the one-hot scores it returns.
        processors = LogitsProcessorList() if greedy else LogitsProcessorList([_RowSampler(seeds, n, sampling)])
        config = GenerationConfig(
            do_sample=False,
            repetition_penalty=1.0,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=return_logprobs,
        )
        # A model handed in by a training stage may be in train mode: generate in eval mode, then put it back.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=processors,
                )
        finally:
            self.model.train(was_training)
        new_tokens = out.sequences[:, input_ids.shape[1] :].cpu()  # (B * n, T_new), rows b*n .. b*n+n-1 for prompt b
        logprobs = self._token_logprobs(out.logits, new_tokens, sampling.temperature) if return_logprobs else None
        completions = [
            to_completion(
                self.tokenizer, new_tokens[row].tolist(), self.stop_ids, None if logprobs is None else logprobs[row]
            )
            for row in range(new_tokens.shape[0])
        ]
        return [completions[b * n : (b + 1) * n] for b in range(len(prompts))]

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each (B, T_max), padded on the left so every row ends at the same column."""
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        return input_ids.to(self.model.device), attention_mask.to(self.model.device)

    @staticmethod
    def _token_logprobs(
        step_logits: tuple[torch.Tensor, ...], tokens: torch.Tensor, temperature: float
    ) -> list[list[float]]:
        """log_softmax(logits / T) of each generated token; T = 1 for greedy. One step at a time: (B, V) each."""
        import torch

        scale = temperature if temperature > 0 else 1.0
        columns = []
        for step, logits in enumerate(step_logits):
            logp = torch.log_softmax(logits.float().cpu() / scale, dim=-1)  # (B * n, V)
            columns.append(logp.gather(-1, tokens[:, step : step + 1]).squeeze(-1))
        return torch.stack(columns, dim=1).tolist()  # (B * n, T_new)


class _RowSampler:
    """A transformers logits processor that samples every row with its own torch.Generator (seeded by the row's
    conversation seed and sample index) from softmax(logits / T) cut to the top-p nucleus, and returns scores that
    are 0 at the drawn token and -inf elsewhere, so greedy decoding emits it. The draw of a row depends only on its
    own logits and RNG: the same text whichever batch or shard the row is in."""

    def __init__(self, seeds: list[int], n: int, sampling: SamplingConfig) -> None:
        self.row_seeds = [derive_seed(seed, j) for seed in seeds for j in range(n)]  # row b*n+j
        self.temperature = sampling.temperature
        self.top_p = sampling.top_p
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self.generators is None:  # (made lazily: the device is the scores')
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.row_seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (B*n, V)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # Drop a token when the mass before it already reaches top_p (the first token is always kept).
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        chosen = torch.cat(
            [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, self.generators, strict=True)]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen.unsqueeze(-1), 0.0)
