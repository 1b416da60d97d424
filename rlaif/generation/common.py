"""What every generation backend shares: everything except the engine call.

Both backends (transformers in `hf.py`, vLLM in `vllm.py`) go through the same steps, so they see the same
prompt tokens and report results the same way:

1. `encode_conversations` checks each conversation and renders it with the tokenizer's chat template
   (`add_generation_prompt=True`), then tokenizes the text without adding special tokens again;
2. `check_context` refuses a prompt that, with `max_new_tokens`, does not fit the model context, naming the item
   (with `fit_context=True` such a prompt is first cut to fit, by the rule of rlaif/truncation.py);
3. the engine samples token ids, stopping at any of `stop_token_ids`;
4. `to_completion` cuts the ids after the first stop token and decodes the text without it.

Seeds are one per conversation (`row_seeds`), derived with `derive_seed`: a completion depends on its own
conversation and seed only, never on which other conversations shared the call, its batch or its shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rlaif.generation import Completion, Conversation
from rlaif.truncation import fit_conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


def derive_seed(seed: int, *parts: int | str) -> int:
    """A 32-bit seed from a base seed and labels (batch index, item id...): stable across processes and runs.

    Hashing instead of `seed + index` keeps run seed 1 from replaying run seed 0 shifted by one batch.
    """
    digest = hashlib.sha256(repr((int(seed), *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def row_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One seed per conversation: the given list (checked for length), or derive_seed(seed, i) for an int."""
    if isinstance(seed, int):
        return [derive_seed(seed, index) for index in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} conversations: give one seed per conversation")
    return seeds


@contextmanager
def seeded(seed: int, device: Any = None) -> Iterator[None]:
    """Seed torch's RNG (CPU and the given CUDA device) inside the block, restoring the caller's state after."""
    import torch

    devices = [device] if device is not None and getattr(device, "type", str(device)) == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_conversation(index: int, conversation: Conversation) -> None:
    """ValueError naming the item (and message) when a conversation is empty or malformed."""
    if not isinstance(conversation, list | tuple) or len(conversation) == 0:
        raise ValueError(f"conversation {index}: empty conversation (need at least one message)")
    for position, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"conversation {index}, message {position}: expected {{'role': ..., 'content': str}}")
        if message.get("role") not in ROLES:
            raise ValueError(
                f"conversation {index}, message {position}: role {message.get('role')!r} is not one of {ROLES}"
            )
    if conversation[-1]["role"] == "assistant":
        raise ValueError(
            f"conversation {index}: ends with an assistant message; the model would answer itself "
            "(end with a user message)"
        )


def render_conversation(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> str:
    """The chat-templated prompt text of one conversation, with an open assistant turn."""
    return tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)


def encode_conversations(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation]) -> list[list[int]]:
    """Prompt token ids of each conversation, rendered with the chat template and an open assistant turn."""
    if len(conversations) == 0:
        raise ValueError("no conversations to generate from")
    prompts: list[list[int]] = []
    for index, conversation in enumerate(conversations):
        check_conversation(index, conversation)
        # Render to text, then tokenize without special tokens: the template already has them, and the
        # tokenize=True return type differs between transformers 4.x (vLLM's pin) and 5.x.
        text = render_conversation(tokenizer, conversation)
        prompts.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return prompts


def context_length(model_config: Any, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """The model's context in tokens: `max_position_embeddings`, else a sane tokenizer `model_max_length`."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    raise ValueError(f"cannot tell the context length of {type(model_config).__name__}: no max_position_embeddings")


def check_context(prompts: Sequence[Sequence[int]], max_new_tokens: int, context: int) -> None:
    """ValueError naming the first item whose prompt plus `max_new_tokens` does not fit the context."""
    for index, prompt in enumerate(prompts):
        if len(prompt) >= context:
            raise ValueError(
                f"conversation {index}: the prompt is {len(prompt)} tokens, longer than the model context of "
                f"{context} tokens; shorten it"
            )
        if len(prompt) + max_new_tokens > context:
            raise ValueError(
                f"conversation {index}: the prompt is {len(prompt)} tokens; with max_new_tokens={max_new_tokens} it "
                f"exceeds the model context of {context} tokens; shorten it or lower max_new_tokens to "
                f"{context - len(prompt)}"
            )


def prepare_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    n: int,
    sampling: Any,
    context: int,
    fit_context: bool = False,
) -> tuple[list[Conversation], list[list[int]], int, set[int]]:
    """Steps 1-2 for a `generate` call: the conversations (cut to fit with `fit_context`), their checked prompt
    token ids, how many samples to draw per prompt, and the rows whose prompt was cut (only with `fit_context`).

    Greedy decoding (temperature 0) gives the same answer n times, so one sample is drawn and `copy_greedy`
    repeats it.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    truncated: set[int] = set()
    conversations = list(conversations)
    if fit_context:
        for index, conversation in enumerate(conversations):
            check_conversation(index, conversation)
        fitted = []
        for index, conversation in enumerate(conversations):
            messages, cut = fit_conversation(
                tokenizer, conversation, sampling.max_new_tokens, context, f"conversation {index}"
            )
            fitted.append(messages)
            if cut:
                truncated.add(index)
        conversations = fitted
    prompts = encode_conversations(tokenizer, conversations)
    check_context(prompts, sampling.max_new_tokens, context)
    return conversations, prompts, 1 if sampling.temperature == 0.0 else n, truncated


def prepare_prompts(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    n: int,
    sampling: Any,
    context: int,
    fit_context: bool = False,
) -> tuple[list[list[int]], int, set[int]]:
    """`prepare_conversations` without the conversations: the prompt token ids, samples per prompt, cut rows."""
    _, prompts, per_prompt, truncated = prepare_conversations(
        tokenizer, conversations, n, sampling, context, fit_context
    )
    return prompts, per_prompt, truncated


def mark_truncated(results: list[list[Completion]], truncated: set[int]) -> list[list[Completion]]:
    """Flag the completions of prompts that were cut to fit the context."""
    for row in truncated:
        for completion in results[row]:
            completion.prompt_truncated = True
    return results


def copy_greedy(completions: list[Completion], n: int, greedy: bool) -> list[Completion]:
    """The n completions of one prompt: the sampled ones, or n copies of the single greedy one."""
    return [completions[0].model_copy() for _ in range(n)] if greedy else completions


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None = None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS plus the model generation config's EOS id(s)."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id]
    candidates += generation_eos if isinstance(generation_eos, list) else [generation_eos]
    for token_id in candidates:
        if isinstance(token_id, int) and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model names none: cannot tell where answers end")
    return ids


def model_eos_ids(path: str) -> int | list[int] | None:
    """The EOS id(s) transformers' generate would stop at: generation_config.json, else config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json: transformers falls back to the model config too
        return AutoConfig.from_pretrained(path).eos_token_id


def to_completion(
    tokenizer: PreTrainedTokenizerBase,
    token_ids: Sequence[int],
    stop_ids: Sequence[int],
    logprobs: Sequence[float] | None = None,
) -> Completion:
    """A Completion from generated ids: cut after the first stop token (kept in token_ids, left out of the text).

    Anything after the first stop token is padding from a batch that ran on for its other rows.
    """
    ids = [int(t) for t in token_ids]
    stops = set(stop_ids)
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    finished = end is not None
    if end is not None:
        ids = ids[: end + 1]
    text_ids = ids[:-1] if finished else ids
    text = tokenizer.decode(text_ids, skip_special_tokens=True)
    kept_logprobs = None if logprobs is None else [float(x) for x in logprobs[: len(ids)]]
    if kept_logprobs is not None and len(kept_logprobs) != len(ids):
        raise ValueError(f"{len(kept_logprobs)} log-probs for {len(ids)} generated tokens")
    return Completion(text=text, token_ids=ids, logprobs=kept_logprobs, finished=finished)
